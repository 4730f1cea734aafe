"""GEO strategies: topology detection, the parallel planner and ``GeoHybridStrategy`` (``"geo_hybrid"``)."""
