"""Parsing the ``--history`` setting (pure)."""

from __future__ import annotations


def parse_history_spec(spec: str) -> tuple[str, str | None]:
    """``memory`` -> ("memory", None); ``sqlite:PATH`` -> ("sqlite", PATH).

    Raises:
        ValueError: anything else.
    """
    if spec == "memory":
        return "memory", None
    kind, colon, path = spec.partition(":")
    if kind == "sqlite" and colon and path:
        return "sqlite", path
    raise ValueError(f"{spec!r} is neither 'memory' nor 'sqlite:PATH'")
