"""GEO optimizers: ``GeoAdamW`` (AdamW with row-wise lazy moments and per-row step sizes)."""

from lightning_geo.optim.geo_adamw import GeoAdamW

__all__ = ["GeoAdamW"]
