"""trio_esper inside your own Quart-Trio application.

The shop below is an ordinary Quart-Trio app; the broker is mounted beside it
under ``/events`` with Hypercorn's ``TrioDispatcherMiddleware``, and the
shop's own route publishes to it in-process (no HTTP round trip)::

    hypercorn -k trio examples/mounted:app
    curl -N http://127.0.0.1:8000/events/subscribe/orders0001        # a browser's EventSource
    curl --json '{"item": "tea", "qty": 2}' http://127.0.0.1:8000/orders

The subscriber gets ``event: order`` with the order as JSON. Every broker
route is under ``/events`` (``/events/publish/...``, ``/events/api/v1/...``,
``/events/dashboard``); the broker reads its settings from ``ESPER_*``
variables, as ``trio-esper`` does.
"""

from __future__ import annotations

import json
from typing import Any

from hypercorn.middleware.dispatcher import TrioDispatcherMiddleware
from quart import request
from quart_trio import QuartTrio

from trio_esper import Event
from trio_esper.asgi import EsperApp

TOPIC = "orders0001"

broker = EsperApp()
shop = QuartTrio(__name__)


@shop.post("/orders")
async def place_order() -> dict[str, Any]:
    order = await request.get_json()
    if not isinstance(order, dict):
        return {"error": "an order is a JSON object"}
    published = await broker.hub.publish(TOPIC, [Event(json.dumps(order), event="order")])
    return {"placed": True, "event_id": published.records[-1].id}


# The broker's mount first: the dispatcher takes the first prefix that matches.
app = TrioDispatcherMiddleware({"/events": broker, "": shop})
