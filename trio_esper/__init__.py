"""trio_esper: a Server-Sent Events pub/sub broker on Trio, Quart-Trio and Hypercorn.

The public names, importable from ``trio_esper``:

- :class:`Config`: every setting (``Config.from_env(os.environ)`` reads ``ESPER_*``).
- :func:`serve`: run the broker (its own HTTP edge) until a ``shutdown`` event;
  ``await nursery.start(serve, config)`` reports :class:`Listening` (host,
  port, and the :class:`Hub` to publish to in-process).
- :func:`open_broker`: the history, hub and Quart-Trio app without a server
  (what :mod:`trio_esper.asgi` runs in an ASGI lifespan); :class:`Broker`.
- :class:`EsperApp`: the broker as an ASGI application (``trio_esper.asgi:app``).
- :class:`Hub`, :func:`open_hub`, :class:`Event`: publish and subscribe in-process.
- :func:`encode`, :func:`parse_body`: the SSE wire format.
- :class:`EsperError` and its subclasses (:mod:`trio_esper.errors`).

The server-side names load Quart and Hypercorn on first use, so importing the
package (or ``trio-esper --help``) stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Config as Config
from .errors import EsperError as EsperError
from .hub import Hub as Hub
from .hub import HubStatistics as HubStatistics
from .hub import open_hub as open_hub
from .sse import Event as Event
from .sse import encode as encode
from .sse import parse_body as parse_body
from .version import __version__ as __version__

if TYPE_CHECKING:
    from .asgi import EsperApp as EsperApp
    from .server import Broker as Broker
    from .server import Listening as Listening
    from .server import open_broker as open_broker
    from .server import serve as serve

#: Names loaded on first use, and the module each comes from.
_LAZY = {
    "EsperApp": "asgi",
    "Broker": "server",
    "Listening": "server",
    "open_broker": "server",
    "serve": "server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trio_esper' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "Broker",
    "Config",
    "EsperApp",
    "EsperError",
    "Event",
    "Hub",
    "HubStatistics",
    "Listening",
    "__version__",
    "encode",
    "open_broker",
    "open_hub",
    "parse_body",
    "serve",
]
