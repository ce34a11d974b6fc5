"""The lanes a test runs on (tests/conftest.py): the ``fast_lane`` fixture is
the broker's ``Config.fast_lane``, and ``TRIO_ESPER_LANES`` with the two marks
decide which lanes run."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from .conftest import LANES_VARIABLE, Broker, lanes_for


async def test_the_broker_serves_on_the_lane_of_its_id(
    broker: Broker, fast_lane: bool, request: pytest.FixtureRequest
) -> None:
    assert broker.config.fast_lane is fast_lane
    assert request.node.callspec.id == ("fast" if fast_lane else "quart")


@dataclass
class Item:
    """What :func:`lanes_for` reads of a test: its marks."""

    marks: dict[str, pytest.Mark] = field(default_factory=dict)
    nodeid: str = "tests/test_x.py::test_y"

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return self.marks.get(name)


FAST_ONLY = {"fast_lane_only": pytest.mark.fast_lane_only("about the fast forms").mark}
SLOW = {"both_lanes_in_full": pytest.mark.both_lanes_in_full.mark}


@pytest.mark.parametrize(
    ("chosen", "marks", "lanes"),
    [
        pytest.param(None, {}, ["fast", "quart"], id="unset"),
        pytest.param("", {}, ["fast", "quart"], id="empty"),
        pytest.param("default", {}, ["fast", "quart"], id="default"),
        pytest.param(None, SLOW, ["fast"], id="slow-by-default"),
        pytest.param("both", SLOW, ["fast", "quart"], id="slow-in-full"),
        pytest.param("both", FAST_ONLY, ["fast"], id="fast-only-in-full"),
        pytest.param("quart", FAST_ONLY, ["fast"], id="fast-only-when-quart-chosen"),
        pytest.param("quart", SLOW, ["quart"], id="quart-chosen"),
        pytest.param("fast", {}, ["fast"], id="fast-chosen"),
    ],
)
def test_which_lanes_run(
    monkeypatch: pytest.MonkeyPatch,
    chosen: str | None,
    marks: dict[str, pytest.Mark],
    lanes: list[str],
) -> None:
    if chosen is None:
        monkeypatch.delenv(LANES_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(LANES_VARIABLE, chosen)
    assert lanes_for(Item(marks)) == lanes  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("chosen", "marks"),
    [
        pytest.param("all", {}, id="unknown-choice"),
        pytest.param("default", {"fast_lane_only": pytest.mark.fast_lane_only.mark}, id="no-why"),
    ],
)
def test_a_choice_or_mark_that_cannot_work_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, chosen: str, marks: dict[str, pytest.Mark]
) -> None:
    monkeypatch.setenv(LANES_VARIABLE, chosen)
    with pytest.raises(pytest.UsageError):
        lanes_for(Item(marks))  # type: ignore[arg-type]
