"""Helpers shared by every GEO part: decision logging and rank-safe reductions."""

from lightning_geo.utils.distributed import any_rank, reduce_tensor
from lightning_geo.utils.geo_logging import (
    GEO_PARTS,
    geo_tag,
    is_log_step,
    log_geo_histogram,
    log_geo_scalars,
    log_geo_text,
    logging_step,
)

__all__ = [
    "GEO_PARTS",
    "any_rank",
    "geo_tag",
    "is_log_step",
    "log_geo_histogram",
    "log_geo_scalars",
    "log_geo_text",
    "logging_step",
    "reduce_tensor",
]
