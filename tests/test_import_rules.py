"""The layering DESIGN.md sets, read off the source with ``ast``: ``lightning_geo/utils`` imports no part, and no part
imports another part (parts meet only through Lightning's objects; ``demo/``, ``cli.py`` and the top-level
``__init__``/``recipe`` may import several). Every import counts: module level, inside functions, under
``TYPE_CHECKING``, relative, and ``importlib.import_module``/``__import__`` with a literal name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lightning_geo"
PARTS = ("callbacks", "precision", "strategies", "optim", "tuning", "serving")
SHARED = "utils"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, dotted module name)`` of every import in ``source`` (the file of ``module``); ``from a import b``
    gives ``a.b`` (``b`` may be a sub-module), relative imports are resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return sorted(found)


def _layer(module: str) -> str | None:
    """The part or ``"utils"`` a ``lightning_geo`` module belongs to; ``None`` for the top level, ``demo``, others."""
    pieces = module.split(".")
    if pieces[0] != "lightning_geo" or len(pieces) < 2:
        return None
    return pieces[1] if pieces[1] in (*PARTS, SHARED) else None


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports in ``source`` (the file of ``module``) that break the layering."""
    importer = _layer(module)
    if importer is None:
        return []
    broken = []
    for line, imported in _imported_modules(source, module, is_package):
        target = _layer(imported)
        if target is None or target in (SHARED, importer):
            continue
        rule = "utils imports no part" if importer == SHARED else "no part imports another part"
        broken.append(f"{module}:{line} imports {imported} ({rule})")
    return broken


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_checker_sees_every_kind_of_import():
    source = (
        "import lightning_geo.precision.plugin\n"
        "from lightning_geo.optim import GeoAdamW\n"
        "from lightning_geo import strategies\n"
        "from ..tuning import GeoTuner\n"
        "from . import curriculum_pacing\n"
        "from lightning_geo.utils.rows import touched_rows\n"
        "if TYPE_CHECKING:\n"
        "    from lightning_geo.strategies.topology import NodeTopology\n"
        "def f():\n"
        "    import lightning_geo.tuning\n"
        "    importlib.import_module('lightning_geo.optim.geo_adamw')\n"
    )
    found = violations(source, "lightning_geo.callbacks.sparsity_lr")
    assert [v.split(" imports ")[1].split(" (")[0] for v in found] == [
        "lightning_geo.precision.plugin",
        "lightning_geo.optim.GeoAdamW",
        "lightning_geo.strategies",
        "lightning_geo.tuning.GeoTuner",
        "lightning_geo.strategies.topology.NodeTopology",
        "lightning_geo.tuning",
        "lightning_geo.optim.geo_adamw",
    ]
    assert violations("from lightning_geo.callbacks import DynamicCurriculum", "lightning_geo.utils.dashboard") == [
        "lightning_geo.utils.dashboard:1 imports lightning_geo.callbacks.DynamicCurriculum (utils imports no part)"
    ]
    assert violations("from .. import optim", "lightning_geo.utils", is_package=True)
    assert not violations("from lightning_geo.optim import GeoAdamW", "lightning_geo.demo.model")
    assert not violations("from lightning_geo import callbacks, precision", "lightning_geo")


def test_every_package_is_a_part_or_shared_or_may_import_several():
    """A new sub-package must be placed in one of the groups, or this test would silently not check it."""
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == {*PARTS, SHARED, "demo"}, sorted(packages)


@pytest.mark.parametrize("layer", [SHARED, *PARTS])
def test_layering_holds_in_the_source(layer):
    files = [path for path in _sources() if _layer(_module_name(path)) == layer]
    assert files, layer
    broken = [v for path in files for v in violations(path.read_text(), _module_name(path), path.name == "__init__.py")]
    assert not broken, "\n".join(broken)


def test_the_trial_reporter_does_not_import_the_trial_module():
    """``tuning/trial.py`` builds ``TrialReporter``s; the reporter depends on a protocol, not on the trial module,
    so the two do not import each other (they once did, through a function-level import)."""
    path = PACKAGE / "tuning" / "reporter.py"
    imported = [name for _, name in _imported_modules(path.read_text(), "lightning_geo.tuning.reporter", False)]
    assert not any(name.startswith("lightning_geo.tuning.trial") for name in imported), imported
