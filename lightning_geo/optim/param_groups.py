"""Moved to ``lightning_geo.utils.param_groups`` (used by the sparsity callback); this path stays for old imports."""

from lightning_geo.utils.param_groups import isolate_parameters

__all__ = ["isolate_parameters"]
