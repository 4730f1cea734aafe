"""`lightning-geo demo` end to end: event files and PNG left behind, one-line errors for bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_geo.cli import main
from lightning_geo.demo.compare import CompareResult, tokens_to_reach
from lightning_geo.demo.config import GEO_PARTS_IN_DEMO, DemoConfig, default_mixed_precision
from lightning_geo.demo.plot import read_scalars
from lightning_geo.demo.run import DemoResult

TINY = [
    "--steps",
    "12",
    "--val-every",
    "5",
    "--batch-size",
    "4",
    "--seq-len",
    "32",
    "--n-layer",
    "1",
    "--n-embd",
    "32",
    "--n-head",
    "2",
    "--no-progress-bar",
]


def _demo_argv(corpus, out, *extra: str) -> list[str]:
    """One plain arm of `demo` on ``corpus`` (the character model, by steps) with the tiny settings, logging under
    ``out``; later flags override earlier ones; with ``--geo`` / ``--compare`` in ``extra`` no ``--arm plain``."""
    arm = [] if {"--geo", "--compare"} & set(extra) else ["--arm", "plain"]
    return ["demo", *arm, "--tokenizer", "char", "--corpus", str(corpus), "--out", str(out), *TINY, *extra]


def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_leaves_event_files_and_a_plot(tmp_path, text_folder, capsys):
    code, out, err = _run_main(_demo_argv(text_folder, tmp_path / "runs"), capsys)
    assert code == 0, err
    (log_dir,) = (tmp_path / "runs" / "demo").iterdir()
    assert any(p.name.startswith("events.out.tfevents") for p in log_dir.iterdir())
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    train_loss = [e.value for e in acc.Scalars("train/loss")]
    assert len(train_loss) == 12 and train_loss[-1] < train_loss[0]
    assert {"train/bpc", "val/loss", "val/bpc"} <= set(acc.Tags()["scalars"])
    # Validation after steps 5 and 10 and, since 12 is not a multiple of 5, once more at the end.
    assert [e.step for e in acc.Scalars("val/loss")] == [4, 9, 11]
    assert (log_dir / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for line in ("steps", "tokens/s", "best val loss", str(log_dir)):
        assert line in out
    assert "Traceback" not in err


def test_geo_flag_trains_with_the_recipe_and_logs_sparsity(tmp_path, text_folder, capsys):
    code, out, err = _run_main(_demo_argv(text_folder, tmp_path / "runs", "--geo"), capsys)
    assert code == 0, err
    assert "sparsity: SparsityAwareLR" in out
    (log_dir,) = (tmp_path / "runs" / "demo").iterdir()
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"geo/sparsity/model.wte.weight/row_density", "geo/sparsity/model.wte.weight/lr_multiplier"} <= tags
    assert "geo/sparsity/model.wte.weight/row_hits" in acc.Tags()["histograms"]
    assert "DynamicCurriculum(mode='seq_len'" in out
    seq_len = [e.value for e in acc.Scalars("geo/curriculum/seq_len")]
    assert seq_len[0] < seq_len[-1] == 32  # warmed up to the full --seq-len within the first 30% of the steps
    train_loss = [e.value for e in acc.Scalars("train/loss")]
    assert train_loss[-1] < train_loss[0]


def test_geo_flag_at_16_mixed_trains_in_fp16_with_the_predicted_scale(tmp_path, text_folder, capsys):
    argv = _demo_argv(text_folder, tmp_path / "runs", "--geo", "--precision", "16-mixed", "--accelerator", "cpu")
    code, out, err = _run_main(argv, capsys)
    assert code == 0, err
    assert "PredictiveScalingPrecision('16-mixed')" in out and "sparsity: SparsityAwareLR" in out
    (log_dir,) = (tmp_path / "runs" / "demo").iterdir()
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"geo/precision/scale", "geo/precision/skipped_steps", "geo/precision/block_scale/head"} <= tags
    assert [e.value for e in acc.Scalars("geo/precision/skipped_steps")][-1] == 0
    train_loss = [e.value for e in acc.Scalars("train/loss")]
    assert train_loss[-1] < train_loss[0]


def test_geo_flag_at_32_true_says_the_precision_part_is_not_used(tmp_path, text_folder, capsys):
    argv = _demo_argv(text_folder, tmp_path / "runs", "--geo", "--steps", "2", "--precision", "32-true")
    code, out, err = _run_main(argv, capsys)
    assert code == 0, err
    assert "precision: not used at --precision 32-true" in out


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    """A CPU with bf16 instructions, whatever this machine has."""
    monkeypatch.setattr("lightning_geo.utils.cpu_precision.cpu_has_native_bf16", lambda: True)


@pytest.mark.usefixtures("cpu_with_bf16")
def test_geo_flag_trains_every_part_together_in_bf16_mixed_by_default_on_a_cpu(tmp_path, text_folder, capsys):
    """`--geo` alone: lightning_geo.recipe(): geo_hybrid (a single-device plan here), Lightning's bf16-mixed (on a
    CPU with bf16 instructions, where fp16 is emulated; bf16 has no loss scale for PredictiveScalingPrecision to
    predict), the curriculum and the sparsity part, each logging under geo/<part>/; the summary names them and the
    plan."""
    summary = tmp_path / "summary.json"
    argv = _demo_argv(text_folder, tmp_path / "runs", "--geo", "--accelerator", "cpu", "--summary-json", str(summary))
    code, out, err = _run_main(argv, capsys)
    assert code == 0, err
    assert "strategy: geo_hybrid (single device on 1 device(s))" in out
    assert "precision: Lightning's bf16-mixed" in out and "precision                  bf16-mixed" in out
    (log_dir,) = (tmp_path / "runs" / "demo").iterdir()
    tags = set(read_scalars(log_dir))
    for part in ("strategy", "curriculum", "sparsity"):
        assert any(t.startswith(f"geo/{part}/") for t in tags), part
    assert not any(t.startswith("geo/precision/") for t in tags)  # Lightning's bf16-mixed: nothing to decide
    result = DemoResult.from_json(summary.read_text())
    assert result.precision == "bf16-mixed" and result.skipped_steps == 0 and result.peak_memory_bytes > 0
    assert [step for step, _, _ in result.val_curve] == [5, 10, 12]
    tokens = [t for _, t, _ in result.val_curve]
    assert tokens == sorted(tokens) and tokens[-1] == result.tokens < 12 * 4 * 32  # shorter rows early on


@pytest.mark.parametrize(
    ("precision", "geo", "accelerator", "expected"),
    [
        (None, True, "cpu", "bf16-mixed"),
        (None, True, "gpu", "16-mixed"),
        (None, True, "cuda", "16-mixed"),
        (None, False, "gpu", "32-true"),
        ("16-mixed", True, "cpu", "16-mixed"),
        ("32-true", True, "gpu", "32-true"),
    ],
)
def test_resolved_precision_defaults_to_fp16_on_a_gpu_and_bf16_on_a_cpu(precision, geo, accelerator, expected,
                                                                         cpu_with_bf16):
    config = DemoConfig(precision=precision, geo=geo, accelerator=accelerator)
    assert config.resolved_precision == expected


def test_a_cpu_without_bf16_instructions_trains_both_arms_in_fp32_and_says_why(tmp_path, text_folder, capsys,
                                                                                monkeypatch):
    """bf16 is emulated on such a CPU (12x the CPU time of fp32 per demo step on an AVX2-only EPYC)."""
    monkeypatch.setattr("lightning_geo.utils.cpu_precision.cpu_has_native_bf16", lambda: False)
    assert DemoConfig(geo=True, accelerator="cpu").resolved_precision == "32-true"
    assert DemoConfig(geo=True, accelerator="cpu", precision="bf16-mixed").resolved_precision == "bf16-mixed"
    argv = _demo_argv(text_folder, tmp_path / "runs", "--geo", "--accelerator", "cpu", "--steps", "3")
    code, out, err = _run_main(argv, capsys)
    assert code == 0, err
    words = " ".join(out.split())  # the summary wraps long lines
    assert "precision: not used at --precision 32-true, the default on this CPU: it has no bf16 instructions" in words
    assert "precision                  32-true" in out


def test_plain_16_mixed_on_a_cpu_is_real_fp16_with_lightnings_grad_scaler(tmp_path, text_folder, capsys):
    """Lightning alone would turn 16-mixed into bf16-mixed on a CPU; the demo keeps fp16 so that the plain
    and the GEO run compare like for like."""
    argv = _demo_argv(text_folder, tmp_path / "runs", "--steps", "3", "--precision", "16-mixed",
                      "--accelerator", "cpu", "--summary-json", str(tmp_path / "s.json"))
    code, out, err = _run_main(argv, capsys)
    assert code == 0, err
    assert DemoResult.from_json((tmp_path / "s.json").read_text()).precision == "16-mixed"
    assert "bf16" not in out + err


def test_plain_demo_says_it_used_no_geo_part(tmp_path, text_folder, capsys):
    code, out, _ = _run_main(_demo_argv(text_folder, tmp_path / "runs", "--steps", "2"), capsys)
    assert code == 0 and "none (plain Lightning; add --geo)" in out


def test_time_cap_stops_early_and_still_validates_the_final_weights(tmp_path, text_folder, capsys):
    argv = _demo_argv(text_folder, tmp_path, "--steps", "1000", "--max-minutes", "0.0005")
    code, out, err = _run_main(argv, capsys)
    assert code == 0, err
    assert "(stopped by --max-minutes)" in out
    (log_dir,) = (tmp_path / "demo").iterdir()
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    last_train_step = acc.Scalars("train/loss")[-1].step
    assert last_train_step < 999 and acc.Scalars("val/loss")[-1].step == last_train_step


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--corpus", "/does/not/exist"], "corpus path '/does/not/exist' does not exist"),
        (["--corpus", "{empty}"], "is empty"),
        (["--corpus", "{binary}"], "is not a UTF-8 text file"),
        (["--steps", "0"], "argument --steps: must be positive, got 0"),
        (["--precision", "fp8"], "argument --precision: unknown precision 'fp8'; choose one of 32-true"),
        (["--corpus", "{short}"], "too short for one batch"),
    ],
    ids=["missing-corpus", "empty-corpus", "binary-file", "zero-steps", "unknown-precision", "tiny-corpus"],
)
def test_bad_input_gets_one_line_error(tmp_path, capsys, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.dat").write_bytes(b"\x7fELF\x00\x00" * 100)
    (tmp_path / "short.txt").write_text("print('hi')\n" * 20)
    paths = {"empty": tmp_path / "empty.txt", "binary": tmp_path / "binary.dat", "short": tmp_path / "short.txt"}
    argv = ["demo", *[a.format(**paths) for a in args], "--out", str(tmp_path / "runs")]
    code, _, err = _run_main(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightning-geo demo: error:") and message in lines[0], err


def test_help_lists_the_subcommands(capsys):
    code, out, _ = _run_main(["--help"], capsys)
    assert code == 0 and "demo" in out


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@pytest.mark.slow
def test_console_script_trains_on_the_default_stdlib_corpus(tmp_path):
    """The installed `lightning-geo` entry point with no --corpus: the standard library's sources."""
    cmd = [_script("lightning-geo"), "demo", "--arm", "plain", "--tokenizer", "char", "--out", str(tmp_path), *TINY[:2],
           "--val-every", "6", *TINY[4:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Python standard library" in proc.stdout and "best val loss" in proc.stdout


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("geo", [False, True], ids=["plain", "geo"])
def test_python_dash_m_runs_ddp_on_two_cpu_processes(tmp_path, text_folder, geo):
    """`python -m lightning_geo demo --devices 2`: Lightning relaunches the module per rank; one summary.
    With --geo, geo_hybrid plans for the 2 processes (DDP for a model this small) and every part runs."""
    cmd = [
        sys.executable,
        "-m",
        "lightning_geo",
        "demo",
        "--arm",
        "geo" if geo else "plain",
        "--tokenizer",
        "char",
        "--corpus",
        str(text_folder),
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "--out",
        str(tmp_path / "runs"),
        *TINY,
        *(["--seq-len", "32"] if geo else []),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best val loss") == 1  # only rank 0 summarises
    if geo:
        assert "strategy: geo_hybrid (DDP on 2 device(s))" in proc.stdout
        from lightning_geo.utils.cpu_precision import cpu_has_native_bf16  # this machine's, as in the subprocess

        assert ("precision: Lightning's bf16-mixed" if cpu_has_native_bf16() else
                "the default on this CPU: it has no bf16 instructions") in " ".join(proc.stdout.split())
    else:
        assert re.search(r"tokens \(characters\) seen +3,072", proc.stdout)  # 12 steps x 2 ranks x 4 samples x 32


@pytest.mark.slow
def test_compare_trains_both_arms_on_the_same_budget_and_prints_one_table(tmp_path, text_folder, capsys):
    argv = ["demo", "--compare", "--tokenizer", "char", "--corpus", str(text_folder), "--out", str(tmp_path), *TINY]
    code, out, err = _run_main(argv, capsys)
    assert code == 0, err
    table = out[out.index("plain Lightning vs lightning_geo.recipe()"):]
    for row in ("Lightning ", "GEO ", "GEO vs Lightning", "tokens to stay", "skipped"):
        assert row in table
    paths = ("validation curves", "see both runs")  # a file path is as long as the folder the user chose
    assert max(len(line) for line in table.splitlines() if not line.startswith(paths)) <= 120
    assert "GEO parts:\n- strategy: geo_hybrid" in table
    assert f"precision {default_mixed_precision('auto')}" in table
    assert (tmp_path / "compare" / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for arm in ("lightning", "geo"):
        (log_dir,) = (tmp_path / "compare" / arm).iterdir()
        tags = set(read_scalars(log_dir))
        assert ("geo/curriculum/seq_len" in tags) == (arm == "geo") and "train/tokens" in tags
        assert "geo/precision/skipped_steps" not in tags  # bf16 on a CPU: Lightning's own plugin in both arms


def test_tokens_to_reach_interpolates_between_validations():
    curve = ((10, 1000, 3.0), (20, 2000, 2.0), (30, 3000, 1.5))
    assert tokens_to_reach(curve, 2.5) == pytest.approx(1500.0)
    assert tokens_to_reach(curve, 3.5) == 1000.0  # reached at the first validation already
    assert tokens_to_reach(curve, 1.5) == 3000.0
    assert tokens_to_reach(curve, 1.4) is None
    assert tokens_to_reach((), 1.0) is None


@pytest.mark.gpu
def test_demo_trains_in_fp16_mixed_on_cuda(tmp_path, text_folder, capsys):
    argv = _demo_argv(text_folder, tmp_path, "--accelerator", "gpu", "--devices", "1", "--precision", "16-mixed")
    code, out, err = _run_main(argv, capsys)
    assert code == 0, err
    assert "best val loss" in out


@pytest.mark.parametrize("where", ["through-a-file", "proc"])
def test_a_bad_out_folder_gets_one_line_error_naming_the_flag(tmp_path, text_folder, capsys, where):
    (tmp_path / "a_file").write_text("not a folder")
    out = str(tmp_path / "a_file" / "runs") if where == "through-a-file" else "/proc/nope"
    if where == "proc" and not Path("/proc").is_dir():
        pytest.skip("no /proc on this system")
    code, _, err = _run_main(_demo_argv(text_folder, out), capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightning-geo demo: error: --out "), err
    assert not Path(out).exists()


def _result(seconds, losses, *, geo_parts=(), budget="30 s", wall=61.0) -> DemoResult:
    tokens = [4096 * (i + 1) for i in range(len(losses))]
    return DemoResult(
        steps=len(losses) * 10, tokens=tokens[-1], train_seconds=seconds[-1], wall_seconds=wall,
        tokens_per_second=tokens[-1] / seconds[-1], final_train_loss=losses[-1], best_val_loss=min(losses),
        best_val_step=10, final_val_loss=losses[-1], stopped_early=False, log_dir=Path("runs/x"),
        plot_path=Path("runs/x/loss_curves.png"), sample="", geo_parts=geo_parts, precision="bf16-mixed",
        peak_memory_bytes=900 * 2**20, val_curve=tuple((10 * (i + 1), t, v) for i, (t, v) in
                                                       enumerate(zip(tokens, losses, strict=True))),
        val_seconds=tuple(seconds), tokenizer="bpe", budget=budget,
    )


def test_compare_counts_the_time_from_which_geo_stays_below_plains_final_loss():
    """GEO first dips under plain's final loss (5.0) at 10 s, spikes back over it at 15 s and is below it for good
    from 17.5 s: the headline speed-up is plain's 30 s over 17.5 s, not over 10 s; both times are in the table."""
    seconds = [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    baseline = _result(seconds, [7.0, 6.2, 5.7, 5.4, 5.15, 5.0])
    geo = _result(seconds, [6.0, 5.0, 6.0, 4.0, 3.9, 3.8], geo_parts=GEO_PARTS_IN_DEMO)
    result = CompareResult(baseline=baseline, geo=geo, plot_path=Path("runs/compare/loss_curves.png"))
    time_speedup, token_speedup = result.speedups()
    assert time_speedup == pytest.approx(30.0 / 17.5)
    assert token_speedup == pytest.approx((6 * 4096) / (3.5 * 4096))
    assert result.first_reach_speedup() == pytest.approx(3.0)
    table = result.table()
    geo_row = next(line for line in table.splitlines() if line.startswith("GEO  "))
    assert "10.0" in geo_row and "17.5" in geo_row
    assert "1.71x faster" in table and "3.00x faster" in table
    assert max(len(line) for line in table.splitlines()) <= 120


def test_compare_says_not_reached_when_geo_ends_above_plains_final_loss():
    seconds = [10.0, 20.0, 30.0]
    baseline = _result(seconds, [6.0, 5.5, 5.0])
    geo = _result(seconds, [5.5, 4.9, 5.2])  # under it at 20 s, over it again at the end
    result = CompareResult(baseline=baseline, geo=geo, plot_path=Path("p.png"))
    assert result.speedups() == (None, None)
    geo_row = next(line for line in result.table().splitlines() if line.startswith("GEO  "))
    assert "not reached" in geo_row


def test_summary_table_fits_120_columns_and_says_what_the_budget_counts():
    table = _result([10.0, 20.0, 30.0], [6.0, 5.5, 5.0], geo_parts=GEO_PARTS_IN_DEMO).table()
    assert max(len(line) for line in table.splitlines()) <= 120, table
    budget = next(line for line in table.splitlines() if line.startswith("budget"))
    assert "30 s of training batches" in budget and "not validation" in budget
    wall = next(line for line in table.splitlines() if line.startswith("fit wall time"))
    assert "61.0 s" in wall and "validation" in wall
    assert "training time" in table
    for part in ("strategy: geo_hybrid", "sparsity: SparsityAwareLR", "PredictiveScalingPrecision"):
        assert part in table
