"""The HTTP edge: every connection, from accept to close, in one task.

One module per concern; each says what it owns in its header:

=================  ===========================================================
``core``           :class:`Edge`: the accept loop, each connection's task
                   (limits, which front end serves it, its one failure log
                   line), and shutdown
``connection``     :class:`~.connection.Connection`: the socket, its reads and
                   writes (trio's two stream errors), the direct writer's
                   lifetime, the lingering close
``fast``           the fast forms: plain HTTP/1.1 publish and subscribe,
                   served by the connection's task with the Quart routes' code
``answers``        the HTTP/1.1 answer heads the fast forms write
``bridge``         Hypercorn and quart-trio: the only module that uses names
                   they do not publish (checked at start-up and by a test)
``tls``            the TLS context, each connection's handshake and close
``lifetime``       deadlines and their reaper; the open connections that
                   shutdown waits for
=================  ===========================================================
"""

from .bridge import require_private_names as require_private_names
from .bridge import wrap_asgi as wrap_asgi
from .core import Edge as Edge
from .tls import load_tls_context as load_tls_context

__all__ = ["Edge", "load_tls_context", "require_private_names", "wrap_asgi"]
