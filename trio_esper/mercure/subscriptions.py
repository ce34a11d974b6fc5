"""Mercure's subscriptions (draft-dunglas-mercure, "Active Subscriptions"):
the documents that describe who subscribes to what, and the registry of the
node's open subscriptions they are read from (pure).

Each open subscription is one document per topic selector, whose id (and
the topic of its ``Subscription`` updates) is
``/.well-known/mercure/subscriptions/{selector}/{subscriber}``, both
escaped as Go's ``url.QueryEscape`` escapes them (dunglas/mercure
subscriber.go:111-136).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

#: Where the documents live; the topics of their updates.
PREFIX = "/.well-known/mercure/subscriptions"
CONTEXT = "https://mercure.rocks/"


def escape(part: str) -> str:
    """``part`` as a path segment, as Go's ``url.QueryEscape`` writes it."""
    return quote_plus(part, safe="")


def subscription_id(selector: str, subscriber: str) -> str:
    """The document id (and update topic) of ``subscriber``'s ``selector``."""
    return f"{PREFIX}/{escape(selector)}/{escape(subscriber)}"


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One open subscription: who, its selectors, its token's ``mercure.payload``."""

    id: str
    selectors: tuple[str, ...]
    payload: object = None

    def documents(self, active: bool = True) -> list[dict[str, Any]]:
        """A ``Subscription`` document per selector (without ``@context``)."""
        documents = []
        for selector in self.selectors:
            document: dict[str, Any] = {
                "id": subscription_id(selector, self.id),
                "type": "Subscription",
                "subscriber": self.id,
                "topic": selector,
                "active": active,
            }
            if self.payload is not None:
                document["payload"] = self.payload
            documents.append(document)
        return documents


def update_data(document: dict[str, Any]) -> str:
    """The data of the update that announces ``document`` (indented JSON, as Mercure's)."""
    return json.dumps({"@context": CONTEXT, **document}, indent=2, ensure_ascii=False)


class Registry:
    """The node's open subscriptions, in the order they opened."""

    def __init__(self) -> None:
        self._open: dict[str, Subscriber] = {}

    def add(self, subscriber: Subscriber) -> None:
        self._open[subscriber.id] = subscriber

    def discard(self, subscriber: Subscriber) -> None:
        self._open.pop(subscriber.id, None)

    def collection(self, uri: str, last_event_id: str, selector: str | None) -> dict[str, Any]:
        """The ``Subscriptions`` document at ``uri``: every open subscription's
        documents, or those of ``selector`` only."""
        documents = [
            document
            for subscriber in self._open.values()
            for document in subscriber.documents()
            if selector is None or document["topic"] == selector
        ]
        return {
            "@context": CONTEXT,
            "id": uri,
            "type": "Subscriptions",
            "lastEventID": last_event_id,
            "subscriptions": documents,
        }

    def one(self, selector: str, subscriber: str, last_event_id: str) -> dict[str, Any] | None:
        """The document of ``subscriber``'s ``selector``, or ``None``."""
        found = self._open.get(subscriber)
        if found is None or selector not in found.selectors:
            return None
        document = found.documents()[found.selectors.index(selector)]
        return {"@context": CONTEXT, **document, "lastEventID": last_event_id}
