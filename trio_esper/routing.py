"""Routed updates: one ordered log of updates, each for one or more topics,
and the subscriptions that select some of them.

An update published to the routed log carries a :class:`Route`: its topics
(the first canonical, the rest alternates) and whether it is private. A
subscription to the log carries a :class:`Selection`: topic selectors (an
exact topic, ``*``, or a URI template; :mod:`.selectors`), and the
selectors that let it receive private updates. :class:`Router` finds an
update's recipients: an index by exact topic, so an update for one topic
with exact subscribers costs a dictionary look-up, plus the subscriptions
that hold a pattern, matched through one bounded cache of (selector, topic)
results. Each recipient gets an update once, however many of its selectors
match however many of the update's topics.

Pure: no trio, no transport. The hub (:mod:`.hub`) keeps one router per
routed log and asks it at each fan-out; the Mercure front end
(:mod:`.mercure`) builds routes and selections from its requests.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .selectors import SelectorMatcher

S = TypeVar("S", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Route:
    """Where an update goes."""

    topics: tuple[str, ...]
    """Its topics: the first canonical, the rest alternates (at least one)."""
    private: bool = False
    """Only for subscriptions whose :attr:`Selection.private` selects one of its topics."""


@dataclass(frozen=True, slots=True)
class Selection:
    """What a subscription to a routed log receives."""

    selectors: tuple[str, ...]
    """Topic selectors: an update is received if one selects one of its topics."""
    private: tuple[str, ...] = ()
    """Selectors that also admit private updates (a subscriber's claims);
    empty: public updates only."""


def is_exact(selector: str) -> bool:
    """Whether ``selector`` can match only the topic equal to it (no ``*``,
    no template): such selectors are looked up, not matched."""
    return selector != "*" and "{" not in selector


def encode_route(route: Route) -> str:
    """``route`` as stored beside its record (SQLite, Redis): JSON."""
    return json.dumps({"topics": route.topics, "private": route.private}, ensure_ascii=False)


def decode_route(stored: str) -> Route:
    """The route :func:`encode_route` stored.

    Raises:
        ValueError: ``stored`` is not one.
    """
    document = json.loads(stored)
    topics = document["topics"]
    if not (isinstance(topics, list) and topics and all(isinstance(t, str) for t in topics)):
        raise ValueError(f"not a stored route: {stored!r}")
    return Route(tuple(topics), document.get("private") is True)


def selects(matcher: SelectorMatcher, selection: Selection, route: Route) -> bool:
    """Whether a subscription with ``selection`` receives an update with
    ``route``: one of its selectors matches one of the update's topics, and
    for a private update one of its private selectors matches one of them
    too (perhaps another: draft-dunglas-mercure, "Subscribers")."""
    if not matcher.matches_any(selection.selectors, route.topics):
        return False
    return not route.private or matcher.matches_any(selection.private, route.topics)


#: Topics whose matching pattern subscriptions a router remembers: forgotten
#: oldest first, and all of them when a pattern subscription comes or goes.
PATTERN_TOPICS_REMEMBERED = 4096
#: What the remembered matches may hold, in bytes as :func:`_remembered_bytes`
#: counts them (the topic string, and the set of subscriptions): a topic whose
#: entry alone would take more than a sixteenth is not remembered.
PATTERN_MATCHES_MAX_BYTES = 8 << 20
#: An entry's bytes beside its set and topic: its dict slot and hash.
_ENTRY_BYTES = 64


def _remembered_bytes(topic: str, found: set[Any]) -> int:
    return _ENTRY_BYTES + sys.getsizeof(topic) + sys.getsizeof(found)


class Router(Generic[S]):
    """The subscriptions of one routed log, indexed for fan-out.

    ``matcher``: shared by every router of a hub, so that a (selector,
    topic) pair is matched once, within the matcher's bound.
    """

    def __init__(self, matcher: SelectorMatcher) -> None:
        self._matcher = matcher
        #: Subscriptions by each exact topic they select.
        self._exact: dict[str, set[S]] = {}
        #: Subscriptions holding at least one pattern (``*`` or a template).
        self._patterns: set[S] = set()
        self._selections: dict[S, Selection] = {}
        #: For a topic published to lately, the pattern subscriptions that
        #: select it: a publish to it visits those, not every pattern holder.
        self._pattern_matches: dict[str, set[S]] = {}
        #: Their bytes (:func:`_remembered_bytes`), within PATTERN_MATCHES_MAX_BYTES.
        self._pattern_bytes = 0

    def __len__(self) -> int:
        return len(self._selections)

    def add(self, subscription: S, selection: Selection) -> None:
        self._selections[subscription] = selection
        for selector in selection.selectors:
            if is_exact(selector):
                self._exact.setdefault(selector, set()).add(subscription)
            elif subscription not in self._patterns:
                self._patterns.add(subscription)
                self._forget_matches()

    def discard(self, subscription: S) -> None:
        selection = self._selections.pop(subscription, None)
        if selection is None:
            return
        if subscription in self._patterns:
            self._patterns.discard(subscription)
            self._forget_matches()
        for selector in selection.selectors:
            exact = self._exact.get(selector)
            if exact is not None:
                exact.discard(subscription)
                if not exact:
                    del self._exact[selector]

    def _selecting(self, topic: str) -> set[S]:
        """The pattern subscriptions that select ``topic`` (remembered,
        within :data:`PATTERN_TOPICS_REMEMBERED` topics and
        :data:`PATTERN_MATCHES_MAX_BYTES`, oldest forgotten first)."""
        remembered = self._pattern_matches
        found = remembered.get(topic)
        if found is not None:
            return found
        matches, selections = self._matcher.matches_any, self._selections
        found = {s for s in self._patterns if matches(selections[s].selectors, (topic,))}
        cost = _remembered_bytes(topic, found)
        if cost > PATTERN_MATCHES_MAX_BYTES // 16:
            return found
        while remembered and (
            len(remembered) >= PATTERN_TOPICS_REMEMBERED
            or self._pattern_bytes + cost > PATTERN_MATCHES_MAX_BYTES
        ):
            oldest = next(iter(remembered))
            self._pattern_bytes -= _remembered_bytes(oldest, remembered.pop(oldest))
        remembered[topic] = found
        self._pattern_bytes += cost
        return found

    def _forget_matches(self) -> None:
        self._pattern_matches.clear()
        self._pattern_bytes = 0

    def remembered_bytes(self) -> int:
        """What the remembered matches hold (as estimated; for tests and figures)."""
        return self._pattern_bytes

    def selects(self, selection: Selection, route: Route) -> bool:
        """Whether a subscription with ``selection`` receives an update with ``route``."""
        return selects(self._matcher, selection, route)

    def recipients(self, route: Route) -> Iterable[S]:
        """The subscriptions that receive an update with ``route``, each once."""
        topics = route.topics
        if len(topics) == 1 and not self._patterns:
            chosen: Iterable[S] = self._exact.get(topics[0], ())
        else:
            found: set[S] = set()
            for topic in topics:
                found.update(self._exact.get(topic, ()))
                if self._patterns:
                    found.update(self._selecting(topic))
            chosen = found
        if not route.private:
            return chosen
        matches = self._matcher.matches_any
        return [s for s in chosen if matches(self._selections[s].private, topics)]
