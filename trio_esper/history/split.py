"""A durable history for most topics, a memory one for the few that ask not
to be kept (topics created with ``persist: false`` while a durable backend is
configured)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..routing import Route
from ..sse import Event
from . import Deliver, History, HistoryStatistics, Record, Replay


class SplitHistory:
    """Sends each topic's calls to ``durable``, or to ``memory`` for the
    topics ``ephemeral`` names. Each backend keeps its own seq order; a
    topic's records all live in one of them, so each topic keeps one order."""

    def __init__(
        self, durable: History, memory: History, ephemeral: Callable[[str], bool]
    ) -> None:
        self.durable = durable
        self.memory = memory
        self._ephemeral = ephemeral

    def _backend(self, topic: str) -> History:
        return self.memory if self._ephemeral(topic) else self.durable

    async def append(
        self, topic: str, events: Sequence[Event], deliver: Deliver, route: Route | None = None
    ) -> list[Record]:
        return await self._backend(topic).append(topic, events, deliver, route)

    async def after(self, topic: str, last_id: str | None, limit: int) -> Replay:
        return await self._backend(topic).after(topic, last_id, limit)

    async def delete(self, topic: str) -> None:
        # Both: a topic deleted while ephemeral may have been durable before.
        await self.memory.delete(topic)
        await self.durable.delete(topic)

    async def watch(self, topic: str, deliver: Deliver) -> None:
        await self._backend(topic).watch(topic, deliver)

    def unwatch(self, topic: str) -> None:
        self._backend(topic).unwatch(topic)

    async def check(self) -> str | None:
        return await self.durable.check()

    @property
    def problem(self) -> str | None:
        return self.durable.problem

    def statistics(self) -> HistoryStatistics:
        durable, memory = self.durable.statistics(), self.memory.statistics()
        return HistoryStatistics(
            durable.backend,
            durable.topics + memory.topics,
            durable.events + memory.events,
            durable.bytes + memory.bytes,
            self.problem,
        )

    async def aclose(self) -> None:
        await self.memory.aclose()
