"""The container's health check: ``python -m trio_esper.healthcheck`` exits 0
when the broker in this container answers ``GET /health`` with 200, else 1
(Docker's "unhealthy").

It asks ``127.0.0.1`` on ``ESPER_PORT`` (3000 unless set) in plain HTTP, then,
when that port speaks TLS (``--certfile``, or a certificate from ACME), in
HTTPS without checking the certificate: the check is about this process
answering, and a certificate for a public name does not name 127.0.0.1.
Standard library only, so it costs the container no import of the broker.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

#: Docker's own --timeout is the bound; each attempt stays within it.
ATTEMPT_SECONDS = 2.0


def healthy(port: str) -> bool:
    """Whether ``GET /health`` on ``port`` answers 200, over HTTP or HTTPS.
    Never through a proxy: Docker passes the client's ``HTTP_PROXY`` into
    containers, and urllib does not read CIDR entries of ``NO_PROXY``."""
    unchecked = ssl.create_default_context()
    unchecked.check_hostname = False
    unchecked.verify_mode = ssl.CERT_NONE
    for scheme, context in (("http", None), ("https", unchecked)):
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        opener = urllib.request.build_opener(*handlers)
        url = f"{scheme}://127.0.0.1:{port}/health"
        try:
            # The URL is built here, http or https only (S310 is about other schemes).
            with opener.open(url, timeout=ATTEMPT_SECONDS) as answer:
                if answer.status == 200:
                    return True
        except OSError:  # refused, or an HTTPError: plain HTTP to a TLS port gets 400
            continue
    return False


def main() -> int:
    return 0 if healthy(os.environ.get("ESPER_PORT") or "3000") else 1


if __name__ == "__main__":
    sys.exit(main())
