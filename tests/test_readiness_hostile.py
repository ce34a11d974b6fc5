"""Hostile cases for the edge's edge-triggered readiness (edge/readiness.py)
and the connection's reads over it (edge/connection.py), through a real
broker on 127.0.0.1 and a raw client."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from .conftest import STEP_SECONDS, TOPIC, Broker, start_broker
from .rawhttp import Raw, accepted_sockets, assert_still_serves, request

pytestmark = pytest.mark.fast_lane_only("the fast forms' reads wait on the edge's epoll set")

#: Long enough for the connection's task to read, find nothing and wait.
SETTLE_SECONDS = 0.2
#: The broker's timeouts here: longer than a test waits, so that a missed
#: wake-up fails the test rather than being caught up by the reaper (which
#: wakes a waiter whose input arrived, once its deadline passes).
TIMEOUT_SECONDS = 3 * STEP_SECONDS


def _connect(broker: Broker) -> tuple[socket.socket, Raw]:
    """A client whose stdlib socket can send and end its output in one step,
    with no checkpoint between (the broker's tasks cannot run in between:
    its connection's task is woken once for both)."""
    plain = socket.create_connection(broker.host_port)
    plain.setblocking(False)
    return plain, Raw(trio.SocketStream(trio.socket.from_stdlib_socket(plain)))


async def _wait_closed(broker: Broker) -> None:
    """Until the broker holds no accepted socket."""
    port = broker.host_port[1]
    with trio.move_on_after(STEP_SECONDS):
        while accepted_sockets(port):
            await trio.sleep(0.05)
        return
    pytest.fail(f"the broker still holds connections: descriptors {accepted_sockets(port)}")


async def test_a_publish_and_the_end_of_input_together_end_a_kept_alive_connection(
    nursery: trio.Nursery,
) -> None:
    # A kept-alive publisher's next request and its FIN arrive together:
    # the connection's task, already waiting, is woken once for both. Its
    # read takes the request (fewer bytes than it asks for); the end must
    # still be seen, without another wake-up from the edge-triggered set.
    broker = await start_broker(nursery, keep_alive_seconds=TIMEOUT_SECONDS)
    plain, raw = _connect(broker)
    async with raw:
        publish = request("POST", f"/publish/{TOPIC}", b"data: x\n")
        await raw.send(publish)
        assert (await raw.read_response()).status == 200
        await trio.sleep(SETTLE_SECONDS)
        plain.send(publish)
        plain.shutdown(socket.SHUT_WR)
        assert (await raw.read_response()).status == 200
        # Closed once the answer is out, not at the keep-alive timeout.
        assert await raw.read_to_eof(timeout=STEP_SECONDS) == b""
    await assert_still_serves(broker)


async def test_half_a_head_and_the_end_of_input_together_are_answered(
    nursery: trio.Nursery,
) -> None:
    broker = await start_broker(nursery, request_head_timeout_seconds=TIMEOUT_SECONDS)
    plain, raw = _connect(broker)
    async with raw:
        await trio.sleep(SETTLE_SECONDS)  # read, found nothing, waits
        plain.send(b"POST /publish/x HTTP/1.1\r\nHost: x\r\n")
        plain.shutdown(socket.SHUT_WR)
        await raw.read_to_eof(timeout=STEP_SECONDS)
    await _wait_closed(broker)
    await assert_still_serves(broker)


async def test_a_head_with_urgent_data_in_it_is_served(nursery: trio.Nursery) -> None:
    # TCP urgent data: a read stops short at the urgent mark (fewer bytes
    # than asked for, with more queued behind the mark), and the rest
    # brings no new wake-up from the edge-triggered set.
    broker = await start_broker(nursery, request_head_timeout_seconds=TIMEOUT_SECONDS)
    plain, raw = _connect(broker)
    async with raw:
        await trio.sleep(SETTLE_SECONDS)  # read, found nothing, waits
        publish = request("POST", f"/publish/{TOPIC}", b"data: x\n")
        plain.send(publish[:20] + b"!", socket.MSG_OOB)  # "!" is urgent, out of band
        plain.send(publish[20:])
        assert (await raw.read_response()).status == 200
    await assert_still_serves(broker)


async def test_half_a_head_and_a_reset_together_close_the_connection(
    nursery: trio.Nursery,
) -> None:
    broker = await start_broker(nursery, request_head_timeout_seconds=TIMEOUT_SECONDS)
    plain = socket.create_connection(broker.host_port)
    with plain:
        plain.setblocking(False)
        await trio.sleep(SETTLE_SECONDS)  # read, found nothing, waits
        assert accepted_sockets(broker.host_port[1])  # the helper sees it
        plain.send(b"POST /publish/x HTTP/1.1\r\nHost: x\r\n")
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Closed: a reset right behind the bytes.
    await _wait_closed(broker)
    await assert_still_serves(broker)
