"""GEO strategies: topology detection, the parallel planner and ``GeoHybridStrategy`` (``"geo_hybrid"``).

Importing this package registers ``strategy="geo_hybrid"`` with Lightning (``import lightning_geo`` does it).
"""

from lightning_geo.strategies.bandwidth import Bandwidths
from lightning_geo.strategies.geo_hybrid import GeoHybridStrategy, register_geo_hybrid
from lightning_geo.strategies.pipeline import PipelineParts
from lightning_geo.strategies.planner import ModelSize, Plan, PlanReport, plan_parallelism
from lightning_geo.strategies.topology import GPU, ClusterTopology, Link, LinkKind, NodeTopology

register_geo_hybrid()

__all__ = [
    "GPU",
    "Bandwidths",
    "ClusterTopology",
    "GeoHybridStrategy",
    "Link",
    "LinkKind",
    "ModelSize",
    "NodeTopology",
    "PipelineParts",
    "Plan",
    "PlanReport",
    "plan_parallelism",
    "register_geo_hybrid",
]
