"""Wrong ``lightning-geo demo`` / ``predict`` flags end, before any training or scoring, in one line naming the flag.

The cases ``benchmarks/bad_inputs.py`` found ending in a traceback or silently accepted. Each runs ``main()`` in
this process (as ``tests/test_demo_cli.py`` does): exit status 2, one ``lightning-geo <command>: error: ...`` line
that names every flag involved, and nothing trained (no ``--out`` folder, nothing printed).
"""

from __future__ import annotations

from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_geo.cli import build_parser, demo_config_from_args
from lightning_geo.demo.model import CharLanguageModel
from tests.test_demo_cli import _run_main

NO_PROC = pytest.mark.skipif(not Path("/proc").is_dir(), reason="no /proc on this system")
HAS_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: --accelerator gpu works")

# Two steps of a tiny character model on the CPU: the old code trained this fast where it let a case through.
TINY_DEMO = ["--tokenizer", "char", "--arm", "plain", "--budget", "2 steps", "--n-layer", "1", "--n-embd", "16",
             "--n-head", "2", "--batch-size", "2", "--seq-len", "16", "--val-samples", "4", "--val-points", "1",
             "--sample-chars", "0", "--no-progress-bar", "--accelerator", "cpu"]


def _one_line_error(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lightning-geo {command}: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        pytest.param(["--n-embd", "16", "--n-head", "3"], ["--n-head 3", "--n-embd 16", "e.g. 2 or 4"],
                     id="n-head-does-not-divide-n-embd"),
        pytest.param(["--accelerator", "tpu"], ["--accelerator", "'tpu'", "auto, cpu"], id="accelerator-tpu"),
        pytest.param(["--accelerator", "nope"], ["--accelerator", "'nope'", "auto, cpu"], id="accelerator-unknown"),
        pytest.param(["--accelerator", "gpu"], ["--accelerator", "no CUDA device", "auto, cpu"], marks=HAS_CUDA,
                     id="accelerator-gpu-without-one"),
        pytest.param(["--summary-json", "/proc/nope/summary.json"], ["--summary-json", "/proc"], marks=NO_PROC,
                     id="summary-json-unwritable"),
        pytest.param(["--summary-json", "{tmp}"], ["--summary-json", "it is a folder"], id="summary-json-a-folder"),
        pytest.param(["--geo"], ["--arm plain", "--geo"], id="arm-plain-and-geo"),
        pytest.param(["--arm", "both", "--geo"], ["--arm both", "--geo"], id="arm-both-and-geo"),
        pytest.param(["--arm", "geo", "--compare"], ["--arm geo", "--compare"], id="arm-geo-and-compare"),
        *(pytest.param([flag, "inf"], [f"argument {flag}: must be a finite number, got inf"], id=f"{flag[2:]}-inf")
          for flag in ["--lr", "--geo-lr", "--warmup-share", "--geo-warmup-share", "--seq-len-warmup",
                       "--max-minutes"]),
        pytest.param(["--lr", "nan"], ["argument --lr: must be positive, got nan"], id="lr-nan"),  # refused before
    ],
)
def test_demo_refuses_before_training_naming_the_flags(tmp_path: Path, text_folder: Path,
                                                       capsys: pytest.CaptureFixture[str], flags: list[str],
                                                       named: list[str]) -> None:
    out = tmp_path / "runs"
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    code, stdout, err = _run_main(["demo", "--corpus", str(text_folder), "--out", str(out), *TINY_DEMO, *flags],
                                  capsys)
    assert code == 2, err
    line = _one_line_error(err, "demo")
    for name in named:
        assert name in line, line
    assert stdout == "" and not out.exists()  # refused before the corpus was read, let alone trained on


def test_the_old_spellings_still_agree_with_arm() -> None:
    parse = build_parser().parse_args
    for argv, geo in [(["--arm", "geo", "--geo"], True), (["--geo"], True), (["--arm", "plain"], False)]:
        assert demo_config_from_args(parse(["demo", "--out", "runs", *argv])).geo is geo


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny demo model's checkpoint, a BoringModel's, and ``texts/`` to score (nothing trained)."""
    root = tmp_path_factory.mktemp("predict")
    model = CharLanguageModel("abcdefghijklmnopqrstuvwxyz \n", seq_len=16, n_layer=1, n_head=2, n_embd=16)
    for name, module, hparams in [("demo.ckpt", model, dict(model.hparams)), ("boring.ckpt", BoringModel(), {})]:
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams,
                    "pytorch-lightning_version": lightning.__version__}, root / name)
    (root / "texts").mkdir()
    (root / "texts" / "a.txt").write_text("hello world\n" * 20)
    return root


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        pytest.param(["--accelerator", "tpu"], ["--accelerator", "'tpu'", "auto, cpu"], id="accelerator-tpu"),
        pytest.param(["--checkpoint", "{root}/boring.ckpt"],
                     ["--checkpoint", "boring.ckpt is not a checkpoint of the demo model", "layer.weight"],
                     id="checkpoint-of-another-model"),
        pytest.param(["--output", "/proc/nope/s.tsv"], ["--output", "/proc"], marks=NO_PROC, id="output-unwritable"),
        pytest.param(["--output", "{root}/texts"], ["--output", "it is a folder"], id="output-a-folder"),
    ],
)
def test_predict_refuses_before_scoring_naming_the_flag(checkpoints: Path, capsys: pytest.CaptureFixture[str],
                                                        flags: list[str], named: list[str]) -> None:
    argv = ["predict", str(checkpoints / "texts"), "--checkpoint", str(checkpoints / "demo.ckpt"),
            "--accelerator", "cpu", *(flag.format(root=checkpoints) for flag in flags)]
    code, stdout, err = _run_main(argv, capsys)
    assert code == 2, err
    line = _one_line_error(err, "predict")
    for name in named:
        assert name in line, line
    assert stdout == ""  # nothing scored


def test_predict_output_goes_into_a_new_folder(checkpoints: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "new" / "scores.tsv"  # its folder is created, as --out's is
    code, _, err = _run_main(["predict", str(checkpoints / "texts"), "--checkpoint", str(checkpoints / "demo.ckpt"),
                              "--accelerator", "cpu", "--output", str(output)], capsys)
    assert code == 0, err
    assert output.read_text().splitlines()[1].startswith("a.txt\t240\t")
