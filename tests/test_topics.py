"""trio_esper.topics: 8 to 64 ASCII letters or digits, case-insensitive."""

from __future__ import annotations

import pytest

from trio_esper.errors import BadRequest, InvalidTopic
from trio_esper.topics import normalise_topic

VALID = [
    pytest.param("abcdefgh", "abcdefgh", id="8-chars"),
    pytest.param("a" * 64, "a" * 64, id="64-chars"),
    pytest.param("12345678", "12345678", id="digits"),
    pytest.param("AbCdEfGh12", "abcdefgh12", id="mixed-case-lowered"),
    pytest.param("ABCDEFGHIJ", "abcdefghij", id="upper-lowered"),
]


@pytest.mark.parametrize(("topic", "canonical"), VALID)
def test_valid(topic: str, canonical: str) -> None:
    assert normalise_topic(topic) == canonical


INVALID = [
    pytest.param("", "characters, got 0", id="empty"),
    pytest.param("abcdefg", "characters, got 7", id="7-chars"),
    pytest.param("a" * 65, "characters, got 65", id="65-chars"),
    pytest.param("abcd-efgh", "ASCII", id="hyphen"),
    pytest.param("abcd.efgh", "ASCII", id="dot"),
    pytest.param("abcd/efgh", "ASCII", id="slash"),
    pytest.param("abcd efgh", "ASCII", id="space"),
    pytest.param("abcdefgh\n", "ASCII", id="trailing-newline"),
    pytest.param("abcd\u00e9fgh", "ASCII", id="e-acute"),
    pytest.param("abcd\uff45fgh", "ASCII", id="fullwidth-e"),
    pytest.param("\uff41" * 8, "ASCII", id="all-fullwidth"),
    pytest.param("\u0661" * 8, "ASCII", id="arabic-indic-digits"),
    pytest.param("abcdefg\u212a", "ASCII", id="kelvin-sign-lowers-to-k"),
]


@pytest.mark.parametrize(("topic", "reason"), INVALID)
def test_invalid(topic: str, reason: str) -> None:
    with pytest.raises(InvalidTopic) as excinfo:
        normalise_topic(topic)
    assert reason in str(excinfo.value)
    assert isinstance(excinfo.value, BadRequest)
    assert excinfo.value.status == 400
