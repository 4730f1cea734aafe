"""GEO callbacks: ``DynamicCurriculum`` (+ ``CurriculumSampler``), ``SparsityAwareLR`` and ``LengthBucketing``."""

from lightning_geo.callbacks.curriculum import DynamicCurriculum
from lightning_geo.callbacks.curriculum_sampler import CurriculumSampler
from lightning_geo.callbacks.length_bucketing import LengthBucketing
from lightning_geo.callbacks.sparsity_lr import SparsityAwareLR
from lightning_geo.callbacks.sparsity_stats import GradientSparsityTracker

__all__ = ["CurriculumSampler", "DynamicCurriculum", "GradientSparsityTracker", "LengthBucketing", "SparsityAwareLR"]
