"""GEO callbacks: ``DynamicCurriculum`` (+ ``CurriculumSampler``), ``SparsityAwareLR``, ``LengthBucketing`` and
``BatchSizeSchedule``."""

from lightning_geo.callbacks.batch_size_schedule import BatchSizeSchedule
from lightning_geo.callbacks.curriculum import DynamicCurriculum
from lightning_geo.callbacks.curriculum_sampler import CurriculumSampler
from lightning_geo.callbacks.length_bucketing import LengthBucketing
from lightning_geo.callbacks.noise_scale import GradientNoiseScale
from lightning_geo.callbacks.sparsity_lr import SparsityAwareLR
from lightning_geo.callbacks.sparsity_stats import GradientSparsityTracker

__all__ = [
    "BatchSizeSchedule",
    "CurriculumSampler",
    "DynamicCurriculum",
    "GradientNoiseScale",
    "GradientSparsityTracker",
    "LengthBucketing",
    "SparsityAwareLR",
]
