"""Moved to ``lightning_geo.utils.rows`` (shared with the sparsity callback); this path stays for old imports."""

from lightning_geo.utils.rows import touched_rows

__all__ = ["touched_rows"]
