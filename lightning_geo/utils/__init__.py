"""Helpers shared by every GEO part: decision logging, the TensorBoard dashboard and rank-safe reductions."""

from lightning_geo.utils.dashboard import (
    GEO_DASHBOARD_CHARTS,
    DashboardSection,
    add_geo_dashboard,
    dashboard_sections_in,
    geo_dashboard_layout,
    geo_parts_in,
    write_geo_dashboard,
)
from lightning_geo.utils.distributed import any_rank, local_part, reduce_tensor
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
    "GEO_DASHBOARD_CHARTS",
    "GEO_PARTS",
    "DashboardSection",
    "add_geo_dashboard",
    "any_rank",
    "dashboard_sections_in",
    "geo_dashboard_layout",
    "geo_parts_in",
    "geo_tag",
    "is_log_step",
    "local_part",
    "log_geo_histogram",
    "log_geo_scalars",
    "log_geo_text",
    "logging_step",
    "reduce_tensor",
    "write_geo_dashboard",
]
