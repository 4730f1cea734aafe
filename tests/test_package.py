"""The package as a user meets it: install metadata, a cheap import, the CLI, the two README commands, CI."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import metadata, requires
from pathlib import Path

import pytest

import lightning_geo

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("part", ["callbacks", "strategies", "precision", "optim", "tuning", "utils"])
def test_subpackages_import(part):
    importlib.import_module(f"lightning_geo.{part}")


def _heavy_modules_after(statement: str) -> list[str]:
    code = (
        f"import sys; {statement}; "
        "print(sorted(m for m in ('botorch', 'gpytorch', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return eval(out.strip().splitlines()[-1])  # a printed list of names


def test_import_loads_nothing_heavy_beyond_lightning_and_registers_geo_hybrid():
    # registering strategy="geo_hybrid" needs lightning.pytorch, which itself may pull matplotlib (via sympy)
    geo = _heavy_modules_after("import lightning_geo; from lightning.pytorch.strategies import StrategyRegistry; "
                               "assert 'geo_hybrid' in StrategyRegistry, 'geo_hybrid is not registered'")
    assert "botorch" not in geo
    assert set(geo) <= set(_heavy_modules_after("import lightning.pytorch"))


def test_version_and_dependencies_come_from_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert lightning_geo.__version__ == project["version"] == metadata("lightning_geo")["Version"]
    runtime = {
        r.split(";")[0].split(">")[0].split("<")[0].split("=")[0].strip()
        for r in requires("lightning_geo")
        if "extra ==" not in r
    }
    assert {"lightning", "torch", "torchmetrics", "botorch", "tensorboard", "nvidia-ml-py"} <= runtime
    test_extra = " ".join(project["optional-dependencies"]["test"])
    for name in ("pytest", "ruff", "nbmake", "ipykernel", "jsonargparse"):
        assert name in test_extra


def test_dependency_ranges_admit_the_cpu_torch_and_lightning_2_6():
    from packaging.requirements import Requirement

    reqs = {
        Requirement(r).name: Requirement(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert reqs["torch"].specifier.contains("2.13.0")
    assert reqs["lightning"].specifier.contains("2.6.6")


def test_console_script_and_module_both_answer_help(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    script = Path(sys.executable).with_name("lightning-geo")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out
    # ``python -m lightning_geo``: its __main__ run in this process (a second interpreter would only import again)
    import runpy

    monkeypatch.setattr(sys, "argv", ["python -m lightning_geo", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("lightning_geo", run_name="__main__")
    assert exited.value.code in (0, None) and "demo" in capsys.readouterr().out


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    commands = [line.strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
