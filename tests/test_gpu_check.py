"""``benchmarks/gpu_check.py`` (one command for one CUDA GPU) and the set-up of ``benchmarks/end_to_end.py``: the GPU
check on CUDA, its CPU dry run, and the end-to-end sweep's arms, keys and plan, without training."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import end_to_end
import gpu_check

BENCHMARKS = Path(end_to_end.__file__).resolve().parent

ROWS_A = ("16-mixed", "bf16-mixed")
ROWS_C = ("optimizer step (GeoMuon.step)", "Newton-Schulz", "Newton-Schulz work", "training step")


def _assert_tables(text: str) -> None:
    for heading in ("(a) plain vs recipe", "(b) step time per GEO part", "(c) GeoMuon's optimizer step"):
        assert heading in text
    lines = text.splitlines()
    for row in (*ROWS_A, *gpu_check.STEP_ARMS, *ROWS_C):
        assert any(line.startswith(row + " ") for line in lines), f"no row {row!r} in:\n{text}"


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False")
def test_gpu_check_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.txt"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--budget", "15s", "--steps", "60", "--reps", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_tables(out.read_text())
    assert "dry run" not in out.read_text()


def test_gpu_check_without_cuda_measures_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                 tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu_check.txt"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert "no CUDA device: nothing measured" in capsys.readouterr().out
    assert not out.exists()


@pytest.fixture
def logger_levels():
    """Puts back the levels the check's ``quiet_lightning()`` sets on Lightning's and GEO's loggers."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_geo")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("logger_levels")
def test_gpu_check_dry_run_prints_every_row(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.txt"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    _assert_tables(printed)
    written = out.read_text()
    _assert_tables(written)
    assert "CPU dry run" in written


def test_gpu_check_rejects_an_unknown_step_arm() -> None:
    with pytest.raises(ValueError, match="arm='fp8' is not one of"):
        gpu_check.fit_arm("fp8", gpu_check.dry_run_settings(), None, "16-mixed")


# ------------------------------------------------------------------------------------- end_to_end.py, no training
def test_end_to_end_arms() -> None:
    parse = end_to_end.parse_arm
    assert parse("plain") == end_to_end.Arm()
    assert parse("muon") == end_to_end.Arm(muon=True)
    assert parse("batch-schedule") == end_to_end.Arm(batch=True)
    assert parse("recipe+batch+muon") == parse("recipe+muon+batch") == end_to_end.Arm(geo=True, muon=True, batch=True)
    base = "recipe+muon+batch"
    assert parse("-muon", base) == parse("recipe+batch")
    assert parse("-batch", base) == parse("recipe+muon")
    assert parse("-sparsity", base) == end_to_end.Arm(geo=True, muon=True, batch=True, exclude="sparsity")
    assert parse("random-order", base).random_order and parse("random-order", base).muon
    assert parse("deadline=0.5", "recipe") == end_to_end.Arm(geo=True, deadline=0.5)
    for bad, match in (("adam", "unknown arm 'adam'"), ("recipe+fp8", "unknown arm"), ("-fp8", "unknown part 'fp8'"),
                       ("recipe+muon+muon", "unknown arm")):
        with pytest.raises(ValueError, match=match):
            parse(bad, base)
    with pytest.raises(ValueError, match="has no muon to leave out"):
        parse("-muon", "recipe")


def test_end_to_end_run_keys() -> None:
    spec = end_to_end.RunSpec("plain", "stdlib", "30s", 0, 0.00394, warmup_share=0.211)
    # a run file written before models, threads and the newer parts existed keeps its key
    old = {"corpus": "stdlib", "budget": "30s", "seed": 0, "lr": 0.00394, "warmup_share": 0.211, "val_points": 12,
           "val_samples": 256, "geo": False, "exclude": "", "deadline": None, "random_order": False,
           "bf16_plugin": False}
    assert spec.key() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    same = {end_to_end.RunSpec(arm, "stdlib", "480s", 0, 0.0131).key() for arm in ("-muon", "recipe+batch")}
    assert len(same) == 1  # one run file for two names of the same run
    keys = {end_to_end.RunSpec("plain", "stdlib", "30s", 0, 0.00394, **extra).key()
            for extra in ({}, {"model": "llama"}, {"threads": 1}, {"max_train_chars": 10**6})}
    assert len(keys) == 4


def test_end_to_end_plan_and_learning_rates() -> None:
    args = end_to_end.parse_args(["--models", "demo,llama", "--corpora", "stdlib", "--tune-lr", "3",
                                  "--tune-budgets", "30s", "--parallel", "2"])
    cells = end_to_end.plan(args)
    assert [(c.model, c.budget) for c in cells] == [(m, b) for m in ("demo", "llama")
                                                   for b in ("30s", "120s", "480s", "1920s")]
    by_budget = {c.budget: c for c in cells if c.model == "demo"}
    assert by_budget["30s"].arms == ("plain", *end_to_end.MAIN_ARMS[1:]) and by_budget["30s"].seeds == (0, 1, 2)
    assert by_budget["1920s"].seeds == (0,)
    assert by_budget["480s"].arms[-6:] == ("recipe+muon+batch", *end_to_end.ABLATIONS)
    assert [c.tune for c in cells] == [True, False, False, False] * 2
    settings = end_to_end.Settings(args)
    assert settings.default_lr("muon") == settings.default_lr("plain") == settings.default_lr("batch-schedule")
    assert settings.default_lr("recipe+muon") == settings.default_lr("recipe") != settings.default_lr("plain")
    spec = settings.spec(cells[0], "muon", 0, 1e-3)
    assert (spec.threads, spec.model, spec.warmup_share) == (1, "demo", settings.warmups["plain"])
    grid = end_to_end.lr_grid(0.004, 3, 2.0)
    assert grid == [0.002, 0.004, 0.008]


def test_end_to_end_quick_and_bad_arguments(capsys: pytest.CaptureFixture) -> None:
    args = end_to_end.parse_args(["--quick", "--models", "llama"])
    (cell,) = end_to_end.plan(args)
    assert (cell.model, cell.budget, cell.arms, cell.seeds) == ("llama", "8steps", ("plain", "recipe+muon+batch"), (0,))
    assert args.no_results_file
    for argv, message in ((["--arms", "plain,adam"], "unknown arm 'adam'"), (["--models", "gpt5"], "unknown model"),
                          (["--tune-step", "1"], "--tune-step > 1")):
        with pytest.raises(SystemExit):
            end_to_end.parse_args(argv)
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_quick_runs_every_arm(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "end_to_end.py"), "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| demo | stdlib | 8steps |")]
    assert [row.split(" | ")[3] for row in rows] == ["plain", "recipe+muon+batch"]


def test_end_to_end_table_and_verdicts_from_stand_in_runs(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """The whole report path (tuning, comparisons, table, targets, ablation lines) on stand-in runs: no training."""
    trained: list[end_to_end.RunSpec] = []

    def stand_in(spec: end_to_end.RunSpec, reuse: bool, log: object) -> dict[str, object]:
        trained.append(spec)
        arm = spec.parts()
        gain = 0.9 if arm.geo else 1.0
        gain *= 0.97 if arm.muon else 1.0
        gain *= 1.0 + abs(spec.lr - 0.004)  # the grid's best LR is the one nearest 0.004
        losses = [8.0 - (8.0 - 4.0 * gain) * (i + 1) / 4 for i in range(4)]
        return {"final_val_loss": losses[-1], "val_curve": [[10 * (i + 1), 4096 * (i + 1), loss]
                                                            for i, loss in enumerate(losses)],
                "val_seconds": [7.5 * (i + 1) for i in range(4)], "train_seconds": 30.0, "cpu_seconds": 29.0,
                "step_cpu_median": 0.3 if arm.muon else 0.25, "steps": 40, "tokens": 4096 * 40,
                "tokens_per_second": 5461.0, "fresh": True}

    monkeypatch.setattr(end_to_end, "run", stand_in)
    monkeypatch.setattr(sys, "argv", ["end_to_end.py", "--corpora", "stdlib", "--budgets", "30s,480s", "--seeds", "0,1",
                                      "--long-seeds", "", "--tune-lr", "2", "--no-results-file"])
    end_to_end.main()
    out = capsys.readouterr().out
    assert len(trained) == len({s.key() for s in trained})  # every distinct run once
    table = [line for line in out.splitlines() if line.startswith("| demo | stdlib |")]
    arms_480 = [row.split(" | ")[3] for row in table if "| 480s |" in row]
    assert arms_480 == ["plain", *end_to_end.MAIN_ARMS[1:], "recipe+muon+batch", *end_to_end.ABLATIONS]
    assert all("(tuned)" in row.split(" | ")[4] for row in table)
    assert "[MET] demo stdlib 30s: recipe >= 1.3x time" not in out  # 0.9 of the loss does not make 1.3x here
    assert "demo stdlib 480s: recipe's final loss within 0.5% of plain's" in out
    assert "[MET] demo stdlib 480s: muon ends lower than plain on every seed" in out
    assert "ablation demo stdlib 480s -muon: time x" in out
