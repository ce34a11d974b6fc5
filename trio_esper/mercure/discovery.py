"""Mercure discovery for an application of your own: every HTTP answer it
gives names the hub in a ``Link: <hub>; rel="mercure"`` header
(draft-dunglas-mercure, "Discovery"), so Mercure clients find it.

    from trio_esper.mercure.discovery import with_mercure_link
    app = with_mercure_link(app, "https://example.com/.well-known/mercure")

Any ASGI 3 application (Quart, Quart-Trio, Starlette...); the header is added
to the answer's start, beside those the application sets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def link_value(hub_url: str) -> str:
    """The ``Link`` field value naming ``hub_url`` as the Mercure hub.

    Raises:
        ValueError: the URL holds a character a ``Link`` target cannot
            (``<``, ``>``, CR, LF: RFC 8288, section 3).
    """
    if any(c in hub_url for c in "<>\r\n") or not hub_url:
        raise ValueError(f"not a hub URL for a Link header: {hub_url!r}")
    return f'<{hub_url}>; rel="mercure"'


def with_mercure_link(app: ASGIApp, hub_url: str) -> ASGIApp:
    """``app``, with ``Link: <hub_url>; rel="mercure"`` on every HTTP answer."""
    header = (b"link", link_value(hub_url).encode("latin-1"))

    async def linked(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_linked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await app(scope, receive, send_linked)

    return linked
