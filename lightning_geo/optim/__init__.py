"""GEO optimizers: ``GeoAdamW``."""
