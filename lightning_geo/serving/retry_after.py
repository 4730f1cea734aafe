"""An ASGI middleware that gives GEO's 503 answers their ``Retry-After`` header.

LitServe carries an inference worker's error to the HTTP server as a status and a detail only (no
headers), so [`GeoBatchingLoop`][lightning_geo.serving.GeoBatchingLoop] puts the seconds to wait in the
503's JSON detail (``{"detail": {"error": "overloaded", "retry_after_s": 2, ...}}``) and this middleware,
running in the HTTP server, copies them into the header clients and load balancers read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def retry_after_seconds(body: bytes) -> int | None:
    """The ``retry_after_s`` in a 503 body GEO wrote, as whole seconds (at least 1); ``None`` if absent."""
    try:
        detail = json.loads(body).get("detail")
        seconds = float(detail["retry_after_s"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return max(int(-(-seconds // 1)), 1)


class RetryAfterMiddleware:
    """Adds ``Retry-After`` to 503 responses whose detail carries ``retry_after_s``; passes the rest through.

    Give it to the server: ``LitServer(api, middlewares=[RetryAfterMiddleware])``
    ([`geo_server`][lightning_geo.serving.geo_server] does).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start" and message.get("status") == 503:
                held.append(message)  # wait for the body: the seconds are in it
                return
            if held and message["type"] == "http.response.body":
                start = held.pop()
                seconds = retry_after_seconds(message.get("body", b""))
                if seconds is not None:
                    start["headers"] = [*start.get("headers", []), (b"retry-after", str(seconds).encode())]
                await send(start)
            await send(message)

        await self.app(scope, receive, send_with_header)
