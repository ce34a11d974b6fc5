"""Names a route does not have answer 404, whatever their length or bytes
(issue 22, point 5): through a real broker on both lanes, no request reaches
a 500 or a logged traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from trio_esper.errors import NotFound
from trio_esper.ops import _dashboard_file

from .conftest import Broker

#: Linux refuses a path component over 255 bytes (ENAMETOOLONG): names on both
#: sides of it, and far beyond, with each suffix the dashboard serves.
LENGTHS = (200, 251, 253, 255, 256, 300, 4000)
SUFFIXES = (".js", ".css", ".html", ".svg", "")
#: Names that are not plain file names: a NUL, a dot file, a parent, a path.
ODD_NAMES = ("x%00.js", ".hidden.js", "..", "..%2fconfig.py", "%2e%2e%2findex.html", "INDEX.HTML")


def _names() -> list[str]:
    return [
        *(("n" * (length - len(suffix))) + suffix for length in LENGTHS for suffix in SUFFIXES),
        *ODD_NAMES,
    ]


async def test_the_dashboard_answers_404_for_any_name_it_does_not_have(
    broker: Broker, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    answers = {name: await client.get(f"{broker.url}/dashboard/{name}") for name in _names()}
    statuses = {
        name[:24] + f"..({len(name)})": reply.status_code for name, reply in answers.items()
    }
    assert set(statuses.values()) == {404}, statuses
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    # The files it has are still served.
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        reply = await client.get(f"{broker.url}/dashboard/{name}")
        assert reply.status_code == 200, name
        assert reply.content


@pytest.mark.parametrize("length", [253, 300, 4000])
async def test_no_route_answers_500_for_a_long_name(
    broker: Broker, client: httpx.AsyncClient, length: int
) -> None:
    name = "n" * (length - 3) + ".js"
    paths = [
        f"/{name}",
        f"/dashboard{name}",
        f"/stats/{name}",
        f"/history/{name}",
        f"/subscribe/{name}",
        f"/api/v1/pubsubs/{name}",
        f"/.well-known/mercure/subscriptions/{name}",
    ]
    statuses = {path[:28]: (await client.get(f"{broker.url}{path}")).status_code for path in paths}
    assert all(400 <= status < 500 for status in statuses.values()), statuses


def test_a_dashboard_file_that_cannot_be_read_is_not_found(tmp_path: Path) -> None:
    # A file listed at start-up and gone or unreadable since: a directory in
    # its place makes read_bytes raise IsADirectoryError, an OSError.
    with pytest.raises(NotFound):
        _dashboard_file({"dashboard.js": tmp_path}, "dashboard.js")
    (tmp_path / "dashboard.js").write_text("ok")
    assert _dashboard_file({"dashboard.js": tmp_path / "dashboard.js"}, "dashboard.js")
