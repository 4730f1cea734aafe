"""GEO callbacks: ``DynamicCurriculum`` (with its ``CurriculumSampler``) and ``SparsityAwareLR``."""

from lightning_geo.callbacks.curriculum import DynamicCurriculum
from lightning_geo.callbacks.curriculum_sampler import CurriculumSampler
from lightning_geo.callbacks.sparsity_lr import SparsityAwareLR
from lightning_geo.callbacks.sparsity_stats import GradientSparsityTracker

__all__ = ["CurriculumSampler", "DynamicCurriculum", "GradientSparsityTracker", "SparsityAwareLR"]
