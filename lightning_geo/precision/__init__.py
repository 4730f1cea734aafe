"""GEO precision plugins: ``PredictiveScalingPrecision``."""
