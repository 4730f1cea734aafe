"""GEO optimizers: ``GeoAdamW`` (AdamW with row-wise lazy moments and per-row step sizes) and ``GeoMuon`` (Muon for
hidden matrices, the row rule for token embeddings, AdamW for the rest, as one optimizer built from the model)."""

from lightning_geo.optim.geo_adamw import GeoAdamW
from lightning_geo.optim.geo_muon import GeoMuon

__all__ = ["GeoAdamW", "GeoMuon"]
