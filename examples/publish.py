"""Publish one event to a trio_esper (or esper) broker.

    python examples/publish.py --url http://127.0.0.1:3000 myTopic123 "hello"
    python examples/publish.py myTopic123 $'two\nlines' --event greeting --id 42
    python examples/publish.py myTopic123 "hi" --token "$PUBLISHER_JWT"

Prints the broker's JSON reply ({"id", "events", "subscribers"}) and exits 0.
On an error status it prints the broker's one-line reason to stderr and exits 1;
if the broker cannot be reached it exits 2. Needs only httpx.
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx

DEFAULT_URL = "http://127.0.0.1:3000"
#: A publish is one small request; a broker that takes longer is not answering.
TIMEOUT_SECONDS = 10.0
EXIT_HTTP_ERROR = 1
EXIT_UNREACHABLE = 2


def sse_body(data: str, event: str | None = None, event_id: str | None = None) -> bytes:
    """The SSE fields the broker expects: optional ``event:``/``id:``, then one
    ``data:`` line per line of ``data`` (an SSE field cannot hold a line break:
    CR, LF and CRLF all end a line)."""
    lines = []
    if event is not None:
        lines.append(f"event: {event}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    data_lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines.extend(f"data: {line}" for line in data_lines)
    return ("\n".join(lines) + "\n").encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Publish one server-sent event.")
    parser.add_argument("topic", help="topic id: 8 to 64 ASCII letters or digits")
    parser.add_argument("data", help="the event's data; newlines become several data: lines")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"broker URL (default {DEFAULT_URL})")
    parser.add_argument("--event", help="event type (browsers dispatch it as a named event)")
    parser.add_argument("--id", dest="event_id", help="event id (subscribers resume from it)")
    parser.add_argument("--token", help="publisher JWT, sent as 'Authorization: Bearer'")
    args = parser.parse_args(argv)

    headers = {"Content-Type": "text/event-stream"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    url = f"{args.url.rstrip('/')}/publish/{args.topic}"
    try:
        response = httpx.post(
            url,
            content=sse_body(args.data, args.event, args.event_id),
            headers=headers,
            timeout=TIMEOUT_SECONDS,
        )
    except httpx.HTTPError as exc:
        print(f"publish.py: cannot reach {url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if response.is_error:
        reason = response.text.strip() or response.reason_phrase
        print(f"publish.py: {response.status_code} {reason}", file=sys.stderr)
        return EXIT_HTTP_ERROR
    print(json.dumps(response.json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
