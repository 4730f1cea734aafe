"""The documentation site builds strictly, documents every public name, and the README links into it.

The strict build (`mkdocs build --strict`, as `make docs` runs it) fails on a broken link or anchor, a page
left out of the navigation, an unresolved cross-reference and any warning of mkdocstrings while it renders
the API reference from the docstrings. Skipped, with the reason, where the docs builder is not installed
(it comes with the `test` and `docs` extras).
"""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each package whose `__all__` is public API, and its page of the API reference (docs/api/<page>.md).
PUBLIC_PACKAGES = {
    "lightning_geo": "lightning_geo",
    "lightning_geo.callbacks": "callbacks",
    "lightning_geo.precision": "precision",
    "lightning_geo.strategies": "strategies",
    "lightning_geo.optim": "optim",
    "lightning_geo.tuning": "tuning",
    "lightning_geo.utils": "utils",
}
# One guide per part, and the pages the README front page must link to.
GUIDES = ["curriculum.md", "sparsity.md", "precision.md", "parallelism.md", "tuning.md", "inference.md"]
README_LINKS = [*GUIDES, "getting-started.md", "works-with.md", "alternatives.md", "benchmarks.md", "step-cost.md"]
README_MAX_LINES = 250

SKIP_REASON = "the docs builder is not installed: pip install -e '.[docs]' (also in the test extra)"


def _public_names(package: str) -> list[str]:
    return list(importlib.import_module(package).__all__)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Builds the site once, strictly, into a temporary folder."""
    pytest.importorskip("mkdocs", reason=SKIP_REASON)
    pytest.importorskip("mkdocstrings_handlers.python", reason=SKIP_REASON)
    site_dir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "--site-dir", str(site_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)
    return site_dir


def test_strict_build_renders_every_page(site: Path) -> None:
    for page in sorted((ROOT / "docs").rglob("*.md")):
        rel = page.relative_to(ROOT / "docs")
        html = site / rel.parent / ("index.html" if rel.name == "index.md" else f"{rel.stem}/index.html")
        assert html.is_file(), f"docs/{rel} was not built"


@pytest.mark.parametrize("package", list(PUBLIC_PACKAGES))
def test_api_reference_shows_every_public_name(site: Path, package: str) -> None:
    html = (site / "api" / PUBLIC_PACKAGES[package] / "index.html").read_text(encoding="utf-8")
    anchors = set(re.findall(r'id="([^"]+)"', html))
    missing = [name for name in _public_names(package) if f"{package}.{name}" not in anchors]
    assert not missing, f"not on the page of docs/api/{PUBLIC_PACKAGES[package]}.md: {missing}"


def test_every_public_name_has_a_docstring() -> None:
    # griffe reads the docstrings as the API reference renders them (constants' attribute docstrings too).
    griffe = pytest.importorskip("griffe", reason=SKIP_REASON)
    loader = griffe.GriffeLoader(search_paths=[str(ROOT)])
    root = loader.load("lightning_geo")
    loader.resolve_aliases(external=False, implicit=False)
    undocumented = []
    for package in PUBLIC_PACKAGES:
        module = root if package == "lightning_geo" else root[package.removeprefix("lightning_geo.")]
        for name in _public_names(package):
            docstring = module[name].docstring
            if docstring is None or not docstring.value.strip():
                undocumented.append(f"{package}.{name}")
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_readme_is_a_front_page_linking_into_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    num_lines = len(readme.splitlines())
    assert num_lines <= README_MAX_LINES, f"README.md has {num_lines} lines (at most {README_MAX_LINES})"
    targets = re.findall(r"\]\((?!https?://|#)([^)#\s]+)(?:#[^)]*)?\)", readme)
    broken = [target for target in targets if not (ROOT / target).exists()]
    assert not broken, f"README.md links to missing files: {broken}"
    unlinked = [page for page in README_LINKS if f"docs/{page}" not in targets]
    assert not unlinked, f"README.md does not link to: {unlinked}"
