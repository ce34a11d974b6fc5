"""The OpenAPI 3.1 description of every route, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from . import __version__


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "trio_esper", "version": __version__},
        "paths": {},
    }
