"""trio_esper.endpoints: the pure pieces both front ends answer with."""

from __future__ import annotations

import json

import pytest

from trio_esper.endpoints import publish_answer
from trio_esper.history import Record
from trio_esper.hub import Published
from trio_esper.sse import Event


@pytest.mark.parametrize(
    "id", ["1796000000000001", "i1", "ABCdef09", 'a"b', "a\\b", "a b", "événement-1", "事件"]
)
def test_publish_answer_is_the_json_of_its_fields(id: str) -> None:
    record = Record.create(1796000000000001, "topic0001", Event("x", id=id), 0.0)
    answer = publish_answer(Published([record], 3))
    assert answer == (json.dumps({"id": id, "events": 1, "subscribers": 3}) + "\n").encode()
