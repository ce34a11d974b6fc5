"""Publish a live price ticker to a trio_esper broker, with the project's own
client (:mod:`trio_esper.client`).

    python examples/ticker/publish.py tickerDemo1                  # a tick a second, until Ctrl-C
    python examples/ticker/publish.py tickerDemo1 --count 20 --interval 0.2
    python examples/ticker/publish.py tickerDemo1 --token "$PUBLISHER_JWT"

Every tick is one event: ``event: tick`` (pages listen for it by name) and
one ``data:`` line of JSON, ``{"seq", "symbol", "price", "change"}``, with the
price and its change as strings of two decimals, so the page shows exactly
what was sent. Prices are a random walk; ``--seed`` makes it repeatable.
The broker assigns each event's id (increasing), so the script can be run
again and again on one topic: a fixed id would be refused (409) once it is in
the topic's history, and the browser resumes from whatever id it last got.

Prints one JSON line per tick as soon as the broker accepted it, with the id
the broker assigned and how many subscribers it reached:
``{"topic", "id", "seq", "symbol", "price", "change", "subscribers"}``.

Exits 0 after ``--count`` ticks (0, the default, means never: stop with
Ctrl-C, exit 130); 1 if the broker refused a publish (its reason on stderr:
bad topic, missing or wrong token); 2 if it could not be reached.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import httpx
import trio

from trio_esper.client import BrokerError, Client

DEFAULT_URL = "http://127.0.0.1:3000"
DEFAULT_SYMBOLS = "ACME,GLOBEX,INITECH,UMBRELLA"
#: Starting prices, in cents, are drawn from this range.
START_CENTS = (5_000, 50_000)
#: A tick moves a price by at most this many cents either way.
MAX_STEP_CENTS = 150
#: No price falls below one dollar.
FLOOR_CENTS = 100
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 2
EXIT_INTERRUPTED = 130


def cents(value: int) -> str:
    """``12345`` -> ``"123.45"``, ``-7`` -> ``"-0.07"``."""
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), 100)
    return f"{sign}{whole}.{fraction:02d}"


class Market:
    """A random walk over ``symbols``: each :meth:`tick` moves one price."""

    def __init__(self, symbols: list[str], rng: random.Random) -> None:
        self._rng = rng
        self._prices = {symbol: rng.randint(*START_CENTS) for symbol in symbols}
        self._seq = 0

    def tick(self) -> dict[str, object]:
        self._seq += 1
        symbol = self._rng.choice(list(self._prices))
        before = self._prices[symbol]
        after = max(FLOOR_CENTS, before + self._rng.randint(-MAX_STEP_CENTS, MAX_STEP_CENTS))
        self._prices[symbol] = after
        change = cents(after - before)
        return {
            "seq": self._seq,
            "symbol": symbol,
            "price": cents(after),
            "change": change if change.startswith("-") else f"+{change}",
        }


async def run(args: argparse.Namespace) -> None:
    market = Market(args.symbols, random.Random(args.seed))
    async with Client(args.url) as client:
        published = 0
        while args.count == 0 or published < args.count:
            if published:
                await trio.sleep(args.interval)
            tick = market.tick()
            answer = await client.publish(
                args.topic, data=json.dumps(tick), event="tick", token=args.token
            )
            published += 1
            line = {"topic": args.topic, "id": answer["id"], **tick}
            print(json.dumps({**line, "subscribers": answer["subscribers"]}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Publish a live price ticker.")
    parser.add_argument("topic", help="topic id: 8 to 64 ASCII letters or digits")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"broker URL (default {DEFAULT_URL})")
    parser.add_argument("--token", help="publisher JWT for the topic (trio-esper token)")
    parser.add_argument(
        "--count", type=int, default=0, help="ticks to publish, then exit (default 0: forever)"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between ticks (default 1)"
    )
    parser.add_argument(
        "--symbols", default=DEFAULT_SYMBOLS, help=f"comma-separated (default {DEFAULT_SYMBOLS})"
    )
    parser.add_argument("--seed", type=int, help="seed the random walk (repeatable prices)")
    args = parser.parse_args(argv)
    if args.count < 0 or args.interval < 0:
        parser.error("--count and --interval cannot be negative")
    args.symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    if not args.symbols:
        parser.error("--symbols names no symbol")
    try:
        trio.run(run, args)
    except BrokerError as exc:
        print(f"publish.py: {exc.status} {exc.reason}", file=sys.stderr)
        return EXIT_REFUSED
    except httpx.TransportError as exc:
        print(f"publish.py: cannot reach {args.url}: {exc!r}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
