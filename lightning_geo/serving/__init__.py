"""Serving with GEO: length-grouped, load-aware batching under a p95 latency target, inside LitServe.

Needs the ``serve`` extra (``pip install 'lightning_geo[serve]'``: LitServe). ``BatchPlanner`` and the cost
and arrival models are plain Python and import without it.
"""

from typing import TYPE_CHECKING

from lightning_geo.serving.planner import ArrivalRate, BatchCostModel, BatchPlanner, PendingRequest
from lightning_geo.serving.retry_after import RetryAfterMiddleware

if TYPE_CHECKING:
    from lightning_geo.serving.loop import GeoBatchingLoop
    from lightning_geo.serving.server import GeoLitServer, geo_server

__all__ = [
    "ArrivalRate",
    "BatchCostModel",
    "BatchPlanner",
    "GeoBatchingLoop",
    "GeoLitServer",
    "PendingRequest",
    "RetryAfterMiddleware",
    "geo_server",
]


def __getattr__(name: str) -> object:
    # the LitServe parts import litserve (the serve extra) only when used
    if name == "GeoBatchingLoop":
        from lightning_geo.serving.loop import GeoBatchingLoop

        return GeoBatchingLoop
    if name in ("geo_server", "GeoLitServer"):
        from lightning_geo.serving import server

        return getattr(server, name)
    raise AttributeError(f"module 'lightning_geo.serving' has no attribute {name!r}")
