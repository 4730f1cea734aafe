"""lightning_geo (GEO): callbacks, a precision plugin, a parallel strategy and a tuner for PyTorch Lightning.

The parts are imported from their sub-packages (``lightning_geo.callbacks``, ``.precision``,
``.strategies``, ``.optim``, ``.tuning``); BoTorch is imported only when the tuner is used. Importing the
package registers ``Trainer(strategy="geo_hybrid")`` with Lightning, which needs ``.strategies`` loaded.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lightning_geo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from lightning_geo.strategies import register_geo_hybrid as _register_geo_hybrid

_register_geo_hybrid()

__all__ = ["__version__"]
