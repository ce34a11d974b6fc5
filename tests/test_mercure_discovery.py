"""Mercure discovery: an application of your own, wrapped, names the hub in a
``Link`` header on every answer; served by Hypercorn on loopback and read by
a real client."""

from __future__ import annotations

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart_trio import QuartTrio

from trio_esper.mercure.discovery import link_value, with_mercure_link

from .conftest import STEP_SECONDS

HUB = "https://example.com/.well-known/mercure"


async def test_every_answer_names_the_hub(nursery: trio.Nursery) -> None:
    inner = QuartTrio("discovered")

    @inner.route("/books/1")
    async def book() -> tuple[dict[str, str], int, dict[str, str]]:
        return {"title": "Dune"}, 200, {"Link": '</books>; rel="collection"'}

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    stopped = trio.Event()
    binds = await nursery.start(
        lambda task_status: serve(
            with_mercure_link(inner, HUB),  # type: ignore[arg-type]
            config,
            shutdown_trigger=stopped.wait,
            task_status=task_status,
        )
    )
    async with httpx.AsyncClient(base_url=binds[0], timeout=STEP_SECONDS) as client:
        found = await client.get("/books/1")
        missing = await client.get("/nothing")
    stopped.set()
    assert found.json() == {"title": "Dune"}
    assert found.headers.get_list("link") == ['</books>; rel="collection"', link_value(HUB)]
    assert missing.status_code == 404
    assert missing.headers["link"] == f'<{HUB}>; rel="mercure"'


@pytest.mark.parametrize("url", ["", "https://x/<y>", "https://x/\r\nSet-Cookie: a=b"])
def test_a_url_a_link_cannot_carry_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not a hub URL"):
        link_value(url)
