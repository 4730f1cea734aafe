"""GEO callbacks: ``SparsityAwareLR`` (and ``DynamicCurriculum`` when it lands)."""

from lightning_geo.callbacks.sparsity_lr import SparsityAwareLR
from lightning_geo.callbacks.sparsity_stats import GradientSparsityTracker

__all__ = ["GradientSparsityTracker", "SparsityAwareLR"]
