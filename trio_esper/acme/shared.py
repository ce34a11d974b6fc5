"""Who orders, and how the others get the certificate and the challenges.

Every process serving the same names must serve the same certificate and
answer a validation that reaches it, and only one may order (else N
processes make N orders, and Let's Encrypt's limits lock the name out).

- :class:`LocalShare`, without a backplane (one process, or ``--threads``
  on one machine, or nodes sharing the storage directory): the order lock is
  an ``flock`` on ``order.lock`` in the storage directory, and the files
  there are the certificate and the challenges for every process.
- :class:`RedisShare`, with ``--backplane``: the lock is a Redis key with a
  time to live that its holder keeps extending; the holder puts the
  certificate, the account key and the pending challenges in Redis, and every
  process copies them into its own storage directory (every
  :data:`MIRROR_SECONDS`), so nodes need no shared file system. The holder
  answers a challenge only once every process has had the time to copy it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from contextlib import AsyncExitStack
from typing import Protocol

import coredis
import trio

from .storage import Storage, http_token_name, tls_alpn_name

log = logging.getLogger("trio_esper")

#: How often a process copies what the lock holder put in Redis.
MIRROR_SECONDS = 0.5
#: The lock's time to live: a holder that stops (crash, network) is replaced
#: after this long; the holder extends it every third of it.
LOCK_SECONDS = 30.0
#: One Redis command, at most.
COMMAND_SECONDS = 2.0
#: Extend the lock only if this process still holds it (its token).
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
#: Let the lock go only if this process holds it.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
SHARE_ERRORS: tuple[type[BaseException], ...] = (
    coredis.exceptions.RedisError,
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)
#: A challenge as Redis keeps it: its file's name under ``challenges/``.
_CHALLENGE = re.compile(r"(http-01/[A-Za-z0-9_-]+|tls-alpn-01/[a-z0-9.-]+\.pem)")


class Share(Protocol):
    """How the processes serving the same names agree (see the module)."""

    #: How long a process following takes to see a change, at most.
    follow_seconds: float

    async def try_lead(self) -> bool:
        """Whether this process holds the order lock now (taking it if free)."""

    async def keep_leading(self) -> None:
        """Return once this process no longer holds the lock (never, for some)."""

    async def release(self) -> None:
        """Let the lock go, if held (the broker stops): another process takes it."""

    async def account_key(self, own: bytes) -> bytes:
        """The account key every process uses: ``own`` unless another one is shared."""

    async def share(self, name: str, data: bytes | None) -> None:
        """Make the storage file ``name`` (``certificate.pem``, a challenge)
        ``data`` for every process (``None``: remove a challenge)."""

    async def settle(self) -> None:
        """Wait until every process can have what was shared."""

    async def follow(self) -> None:
        """Copy what the holder shared into this process's storage."""


class LocalShare:
    """The storage directory is shared already: see the module."""

    follow_seconds = 2.0

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def try_lead(self) -> bool:
        return await trio.to_thread.run_sync(self._storage.try_lock)

    async def keep_leading(self) -> None:
        await trio.sleep_forever()

    async def release(self) -> None:
        await trio.to_thread.run_sync(self._storage.unlock)

    async def account_key(self, own: bytes) -> bytes:
        return own

    async def share(self, name: str, data: bytes | None) -> None:
        return  # written to the directory already

    async def settle(self) -> None:
        return

    async def follow(self) -> None:
        return


class RedisShare:
    """Redis keys ``trio_esper:acme:<digest>:*`` (of the ACME directory and the
    sorted names): ``lock``, ``account``, ``certificate``, and the hash
    ``challenges`` (file name -> content). Open with :func:`open_redis_share`."""

    follow_seconds = MIRROR_SECONDS

    def __init__(
        self, client: coredis.Redis[bytes], storage: Storage, names: frozenset[str], directory: str
    ) -> None:
        # A certificate is shared with the processes that want it for the same
        # names from the same ACME server (staging's is no use in production).
        digest = hashlib.sha256(f"{directory} {','.join(sorted(names))}".encode()).hexdigest()
        digest = digest[:16]
        self._prefix = f"trio_esper:acme:{digest}:"
        self._client = client
        self._storage = storage
        self._names = names
        self._token = os.urandom(16).hex().encode()
        self._mirrored: dict[str, bytes] = {}
        self._reported = False

    async def try_lead(self) -> bool:
        try:
            with trio.fail_after(COMMAND_SECONDS):
                taken = await self._client.set(
                    self._prefix + "lock",
                    self._token,
                    condition=coredis.PureToken.NX,
                    px=int(LOCK_SECONDS * 1000),
                )
        except SHARE_ERRORS as error:
            self._unavailable(error)
            return False
        self._reported = False
        return bool(taken)

    async def keep_leading(self) -> None:
        extended = trio.current_time()
        while trio.current_time() - extended < LOCK_SECONDS * 2 / 3:
            await trio.sleep(LOCK_SECONDS / 3)
            try:
                with trio.fail_after(COMMAND_SECONDS):
                    held = await self._client.eval(
                        _EXTEND,
                        keys=[self._prefix + "lock"],
                        args=[self._token, int(LOCK_SECONDS * 1000)],
                    )
            except SHARE_ERRORS as error:
                self._unavailable(error)
                continue
            if not held:
                return
            extended = trio.current_time()

    async def release(self) -> None:
        with trio.move_on_after(COMMAND_SECONDS):
            try:
                await self._client.eval(_RELEASE, keys=[self._prefix + "lock"], args=[self._token])
            except SHARE_ERRORS:
                return  # its time to live ends it

    async def account_key(self, own: bytes) -> bytes:
        key = self._prefix + "account"
        with trio.fail_after(COMMAND_SECONDS):
            await self._client.set(key, own, condition=coredis.PureToken.NX)
            shared = await self._client.get(key)
        return own if shared is None else bytes(shared)

    async def share(self, name: str, data: bytes | None) -> None:
        with trio.fail_after(COMMAND_SECONDS):
            if name == "certificate.pem":
                assert data is not None
                await self._client.set(self._prefix + "certificate", data)
                return
            field = name.removeprefix("challenges/")
            if data is None:
                await self._client.hdel(self._prefix + "challenges", [field])
                return
            await self._client.hset(self._prefix + "challenges", {field: data})
            await self._client.pexpire(self._prefix + "challenges", int(LOCK_SECONDS * 1000))

    async def settle(self) -> None:
        # Every process copies within MIRROR_SECONDS: twice that, and they all have it.
        await trio.sleep(MIRROR_SECONDS * 2)

    async def follow(self) -> None:
        try:
            with trio.fail_after(COMMAND_SECONDS):
                certificate = await self._client.get(self._prefix + "certificate")
                challenges = await self._client.hgetall(self._prefix + "challenges")
        except SHARE_ERRORS as error:
            self._unavailable(error)
            return
        wanted = {"certificate.pem": bytes(certificate)} if certificate else {}
        for field, data in challenges.items():
            name = bytes(field).decode("ascii", "replace")
            if _CHALLENGE.fullmatch(name) and self._ours(name):
                wanted[f"challenges/{name}"] = bytes(data)
        await trio.to_thread.run_sync(self._mirror, wanted)

    def _ours(self, name: str) -> bool:
        kind, _, rest = name.partition("/")
        if kind == "http-01":
            return http_token_name(rest) is not None
        return tls_alpn_name(rest.removesuffix(".pem")) == f"challenges/{name}" and (
            rest.removesuffix(".pem") in self._names
        )

    def _mirror(self, wanted: dict[str, bytes]) -> None:
        """Write what changed; remove the challenges no longer pending."""
        for name, data in wanted.items():
            if self._mirrored.get(name) != data and self._storage.read(name) != data:
                self._storage.write(name, data)
            self._mirrored[name] = data
        for name in [n for n in self._mirrored if n not in wanted]:
            if name.startswith("challenges/"):
                self._storage.remove(name)
            del self._mirrored[name]

    def _unavailable(self, error: BaseException) -> None:
        if not self._reported:  # once until it answers again: the backplane logs its own
            self._reported = True
            log.warning(
                "ACME: the backplane cannot be reached to share the certificate (%s): "
                "the stored one is served, and nothing is ordered until it answers",
                type(error).__name__,
                extra={"event": "acme_failed", "problem": None},
            )


async def open_redis_share(
    url: str, storage: Storage, names: frozenset[str], directory: str, stack: AsyncExitStack
) -> RedisShare:
    """A :class:`RedisShare` on a client of its own, closed with ``stack``."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        url,
        decode_responses=False,
        connect_timeout=COMMAND_SECONDS,
        retry_policy=coredis.retry.NoRetryPolicy(),
    )
    await stack.enter_async_context(client)
    return RedisShare(client, storage, names, directory)
