"""lightning_geo (GEO): callbacks, a precision plugin, a parallel strategy and a tuner for PyTorch Lightning.

The parts are imported from their sub-packages (``lightning_geo.callbacks``, ``.precision``,
``.strategies``, ``.optim``, ``.tuning``); BoTorch is imported only when the tuner is used. Importing the
package registers ``Trainer(strategy="geo_hybrid")`` with Lightning, which needs ``.strategies`` loaded, and
imports the parts a Trainer takes, so that the dashboard knows their sections (each part declares its own; see
``lightning_geo.utils.dashboard``). ``lightning_geo.recipe()`` ([`lightning_geo.recipes`][lightning_geo.recipes]) is
GEO's measured best configuration as Trainer keyword arguments.
"""

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# imported for the dashboard sections they declare (curriculum, sparsity, batch; optim; precision);
# strategies registers geo_hybrid
from lightning_geo import callbacks, optim, precision  # noqa: F401
from lightning_geo.recipes import recipe
from lightning_geo.strategies import register_geo_hybrid as _register_geo_hybrid


def _source_version() -> str:
    """The version ``pyproject.toml`` next to the package declares (a source tree that was never installed)."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    found = re.search(r'(?m)^version\s*=\s*"([^"]+)"', pyproject.read_text()) if pyproject.is_file() else None
    return found.group(1) if found else "0.0.0+unknown"


try:
    __version__: str = version("lightning_geo")
    """The installed distribution's version (``importlib.metadata``), else the one ``pyproject.toml`` declares."""
except PackageNotFoundError:
    __version__ = _source_version()

_register_geo_hybrid()

__all__ = ["__version__", "recipe"]
