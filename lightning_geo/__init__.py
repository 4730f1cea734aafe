"""lightning_geo (GEO): callbacks, a precision plugin, a parallel strategy and a tuner for PyTorch Lightning.

Importing the package is cheap: the parts are imported from their sub-packages
(``lightning_geo.callbacks``, ``.precision``, ``.strategies``, ``.optim``, ``.tuning``) and BoTorch is
imported only when the tuner is used.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lightning_geo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
