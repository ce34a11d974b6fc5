"""Topic-id validation and normalisation (pure: no I/O, no trio).

Rule (esper's): a topic id is 8 to 64 alphanumeric characters and is
case-insensitive. We accept ASCII letters and digits only: Unicode
"alphanumeric" (what esper's ``char::is_alphanumeric`` accepts) admits
look-alike and differently-normalised spellings of one id (fullwidth
U+FF41 vs ``"a"``),
and case folding outside ASCII is locale-sensitive. ASCII ids are also safe to
use unescaped in URLs, Redis keys and file names.
"""

from __future__ import annotations

import string

from .errors import InvalidTopic

MIN_TOPIC_CHARS = 8
MAX_TOPIC_CHARS = 64
_ALLOWED = frozenset(string.ascii_letters + string.digits)


def normalise_topic(topic: str) -> str:
    """Return the canonical (lower-case) form of ``topic``.

    Raises:
        InvalidTopic: if ``topic`` is not 8 to 64 ASCII letters or digits.
    """
    if not MIN_TOPIC_CHARS <= len(topic) <= MAX_TOPIC_CHARS:
        raise InvalidTopic(
            f"topic must be {MIN_TOPIC_CHARS} to {MAX_TOPIC_CHARS} characters, got {len(topic)}"
        )
    if not _ALLOWED.issuperset(topic):
        raise InvalidTopic("topic may contain only ASCII letters and digits")
    return topic.lower()
