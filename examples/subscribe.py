"""Subscribe to a topic and print each event as one JSON line.

    python examples/subscribe.py --url http://127.0.0.1:3000 myTopic123
    python examples/subscribe.py myTopic123 --count 2 --token "$SUBSCRIBER_JWT"

Each event prints as ``{"event": ..., "id": ..., "data": ...}`` the moment it
arrives (``event`` is ``"message"`` unless the publisher named one; ``id`` is
the publisher's id or, if it sent none, the one trio_esper assigned, e.g.
``"1795352373156230"``; ``null`` only from a broker that sends events without
an id). Comments such as ``: subscribed`` and ``: heartbeat`` are not events
and are not printed.

Exits 0 after ``--count`` events or when the broker ends the stream; on an
error status prints the broker's reason to stderr and exits 1; exits 2 if the
broker cannot be reached. Needs only httpx.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator

import httpx

DEFAULT_URL = "http://127.0.0.1:3000"
#: Connecting should be quick; reading must wait forever (events are rare, and
#: the broker's heartbeat keeps proxies from timing out the idle stream).
CONNECT_TIMEOUT_SECONDS = 10.0
EXIT_HTTP_ERROR = 1
EXIT_UNREACHABLE = 2


def parse_events(lines: Iterable[str]) -> Iterator[dict[str, str | None]]:
    """Turn event-stream lines into events, following WHATWG HTML 9.2.6
    "Interpreting an event stream" (the parts a subscriber needs)."""
    data: list[str] = []
    event: str | None = None
    event_id: str | None = None
    for line in lines:
        if line == "":
            # "If the data buffer is an empty string, set the data buffer and
            # the event type buffer to the empty string and return."
            if data:
                yield {"event": event or "message", "id": event_id, "data": "\n".join(data)}
            data, event, event_id = [], None, None
            continue
        if line.startswith(":"):
            continue  # a comment
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            event_id = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a topic's server-sent events.")
    parser.add_argument("topic", help="topic id: 8 to 64 ASCII letters or digits")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"broker URL (default {DEFAULT_URL})")
    parser.add_argument("--count", type=int, help="exit after this many events")
    parser.add_argument("--token", help="subscriber JWT, sent as 'Authorization: Bearer'")
    args = parser.parse_args(argv)

    headers = {"Accept": "text/event-stream"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    url = f"{args.url.rstrip('/')}/subscribe/{args.topic}"
    timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT_SECONDS)
    received = 0
    try:
        with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
            if response.is_error:
                reason = response.read().decode(errors="replace").strip()
                print(
                    f"subscribe.py: {response.status_code} {reason or response.reason_phrase}",
                    file=sys.stderr,
                )
                return EXIT_HTTP_ERROR
            if args.count is not None and args.count <= 0:
                return 0
            for event in parse_events(response.iter_lines()):
                # flush: whoever reads our stdout (a pipe, a log) sees each event now
                print(json.dumps(event), flush=True)
                received += 1
                if received == args.count:
                    return 0
    except httpx.HTTPError as exc:
        print(f"subscribe.py: connection to {url} failed: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130  # the shell's convention for "ended by SIGINT"
    return 0


if __name__ == "__main__":
    sys.exit(main())
