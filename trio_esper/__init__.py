"""trio_esper: a Server-Sent Events pub/sub broker on Trio, Quart-Trio and Hypercorn."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config as Config
from .errors import EsperError as EsperError
from .hub import Hub as Hub
from .hub import HubStatistics as HubStatistics
from .hub import open_hub as open_hub
from .sse import Event as Event
from .sse import encode as encode
from .sse import parse_body as parse_body

__all__ = [
    "Config",
    "EsperError",
    "Event",
    "Hub",
    "HubStatistics",
    "__version__",
    "encode",
    "open_hub",
    "parse_body",
]
