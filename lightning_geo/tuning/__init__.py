"""GEO tuning: search spaces, the BoTorch optimizer and ``GeoTuner``.

BoTorch is imported inside the modules of this package only, never at ``import lightning_geo``.
"""
