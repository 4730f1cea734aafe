"""The package as users get it: ``python -m build`` makes a wheel and an sdist of the source tree, and the wheel,
installed into a fresh virtual environment, runs ``lightning-geo --version`` and ``lightning-geo demo --help`` from a
directory outside the checkout, importing the installed copy (not the editable checkout).

The fresh environment takes the dependencies (torch, lightning, ...) from the environment running the tests: the
wheel is installed with ``--no-deps`` into an empty environment, and only then a ``.pth`` line adds this
environment's site-packages behind its own (installing torch again would take minutes and gigabytes; and
``python -m venv --system-site-packages`` would not do it: from inside a virtual environment it exposes the base
interpreter's packages, not the environment's). Building is done on a copy of the files git knows (tracked and
untracked, ignored ones left out), so that the checkout gets no ``build/`` or ``*.egg-info`` of this test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # 40 s on an idle 2-core machine, 75-110 s with a cold build cache or under load

ROOT = Path(__file__).resolve().parent.parent


def _project_version() -> str:
    found = re.search(r'(?m)^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert found, "pyproject.toml declares no version"
    return found.group(1)


def _source_files() -> list[str]:
    """The files of the source tree as git knows them (tracked or untracked, not ignored), that exist."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files are the source tree")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    return [name for name in listed if name and (ROOT / name).is_file()]


def _run(args: list[str], *, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{output}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, list[str]]:
    """``python -m build`` of a copy of the source tree: the folder with the wheel and the sdist, and the package's
    modules in the source tree (``lightning_geo/...py``)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = tmp / "src", tmp / "dist"
    files = _source_files()
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], cwd=tmp, timeout=900)
    modules = sorted(name for name in files if name.startswith("lightning_geo/") and name.endswith(".py"))
    return out, modules


def test_build_makes_a_wheel_and_an_sdist_with_every_module(dist):
    out, modules = dist
    version = _project_version()
    wheel, sdist = out / f"lightning_geo-{version}-py3-none-any.whl", out / f"lightning_geo-{version}.tar.gz"
    assert sorted(p.name for p in out.iterdir()) == sorted([wheel.name, sdist.name])
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = archive.namelist()
        entry_points = archive.read(f"lightning_geo-{version}.dist-info/entry_points.txt").decode()
    assert sorted(n for n in in_wheel if n.startswith("lightning_geo/")) == modules
    assert "lightning-geo = lightning_geo.cli:main" in entry_points
    prefix = f"lightning_geo-{version}/"
    with tarfile.open(sdist) as archive:
        in_sdist = {name.removeprefix(prefix) for name in archive.getnames()}
    assert {"pyproject.toml", "setup.cfg", "README.md", *modules} <= in_sdist


def test_the_installed_wheel_runs_the_cli_from_outside_the_checkout(dist, tmp_path):
    out, _ = dist
    version = _project_version()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python, command = venv / "bin" / "python", venv / "bin" / "lightning-geo"
    wheel = next(out.glob("*.whl"))
    # installed into the empty environment first: pip must not see (and offer to replace) the editable checkout
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "-c", str(ROOT / "constraints" / "cpu.txt"), str(wheel)], cwd=tmp_path)
    site_packages = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=tmp_path).strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site_packages / "_geo_test_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))

    elsewhere = tmp_path / "elsewhere"  # not the checkout: its lightning_geo/ must not be importable from the cwd
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    assert _run([str(command), "--version"], cwd=elsewhere, env=env) == f"lightning-geo {version}\n"
    assert "usage: lightning-geo demo" in _run([str(command), "demo", "--help"], cwd=elsewhere, env=env)

    where = _run([str(python), "-c", "import sys, lightning_geo, lightning_geo.cli; print(lightning_geo.__version__); "
                  "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('lightning_geo')))"],
                 cwd=elsewhere, env=env).split()
    assert where[0] == version
    assert where[1:] and all(Path(path).is_relative_to(site_packages) for path in where[1:]), where
