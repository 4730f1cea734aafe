"""``geo_server``: a LitServe ``LitServer`` whose inference loop is GEO's batching, in one call."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from litserve import LitAPI, LitServer

from lightning_geo.serving.loop import GeoBatchingLoop
from lightning_geo.serving.retry_after import RetryAfterMiddleware

_SERVER_PID: list[int] = []


def _interrupt(signum: int, frame: Any) -> None:
    if os.getpid() in _SERVER_PID:
        raise KeyboardInterrupt
    raise SystemExit(0)  # a forked HTTP or inference process told to stop (after uvicorn drained its requests)


class GeoLitServer(LitServer):
    """A ``LitServer`` that also shuts down gracefully on SIGTERM (what ``docker stop`` and Kubernetes send).

    LitServe drains in-flight requests on Ctrl-C (SIGINT); on SIGTERM its main process dies at once and
    leaves its HTTP and inference processes running. ``run`` here treats SIGTERM as Ctrl-C: the HTTP
    server stops accepting connections, every accepted request is answered, then the workers stop.
    """

    def run(self, *args: Any, **kwargs: Any) -> None:
        """``LitServer.run``, with SIGTERM handled as Ctrl-C while it runs (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return super().run(*args, **kwargs)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        _SERVER_PID.append(os.getpid())
        try:
            return super().run(*args, **kwargs)
        finally:
            _SERVER_PID.remove(os.getpid())
            signal.signal(signal.SIGTERM, previous)


def geo_server(api: LitAPI, *, loop: GeoBatchingLoop | None = None, **server_kwargs: Any) -> GeoLitServer:
    """Serve ``api`` with [`GeoBatchingLoop`][lightning_geo.serving.GeoBatchingLoop] as its inference loop.

    The same ``LitAPI`` a user already serves with LitServe: its ``decode_request``, ``predict`` and
    ``encode_response`` (and ``batch``/``unbatch`` if it defines them) run unchanged; GEO decides which
    requests share a batch and when it runs, adds ``Retry-After`` to its 503 answers, and drains accepted
    requests on SIGTERM as on Ctrl-C ([`GeoLitServer`][lightning_geo.serving.GeoLitServer]).

    Args:
        api: The ``LitAPI`` to serve (its ``max_batch_size``/``batch_timeout`` are not used: GEO batches).
        loop: The loop, for settings other than the defaults (``GeoBatchingLoop()``: 200 ms p95 target).
        **server_kwargs: Passed to ``LitServer`` (``accelerator``, ``timeout``, ``middlewares``, ...).

    Returns:
        The server; start it with ``.run(port=8000)``.

    Raises:
        TypeError: if ``api`` is not a ``LitAPI`` or ``loop`` not a ``GeoBatchingLoop``.

    Example:
        ```python
        server = geo_server(MyTextAPI(), loop=GeoBatchingLoop(target_p95_ms=150, max_length=512))
        server.run(port=8000)
        ```
    """
    if not isinstance(api, LitAPI):
        raise TypeError(f"geo_server: api must be a litserve.LitAPI, got {type(api).__name__}")
    if loop is not None and not isinstance(loop, GeoBatchingLoop):
        raise TypeError(f"geo_server: loop must be a GeoBatchingLoop, got {type(loop).__name__}")
    api.loop = loop or GeoBatchingLoop()
    middlewares = list(server_kwargs.pop("middlewares", None) or [])
    if RetryAfterMiddleware not in middlewares:
        middlewares.append(RetryAfterMiddleware)
    return GeoLitServer(api, middlewares=middlewares, **server_kwargs)
