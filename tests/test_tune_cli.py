"""`lightning-geo tune`: the demo study, a study from a YAML file, resume from the command line, bad input."""

from __future__ import annotations

import json

import pytest

from lightning_geo.tuning.config_file import load_study_file
from tests.test_demo_cli import _run_main

STUDY_FILE = """
monitor: val_loss
max_trials: 3
pruner: none
space:
  model.lr: {float: [1.0e-3, 0.3], log: true}
  model.width: {categorical: [4, 16]}
  trainer.max_epochs: 2
model:
  class_path: tests.test_tuner.Regressor
trainer:
  accelerator: cpu
  enable_progress_bar: false
  enable_checkpointing: false
  num_sanity_val_steps: 0
"""


def test_tune_from_a_study_file_and_resume(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(STUDY_FILE)
    argv = ["tune", "--config", str(config), "--out", str(tmp_path / "runs"), "--name", "cfg"]
    code, out, err = _run_main(argv, capsys)
    assert code == 0, err
    assert "best val_loss =" in out and out.count("[trial ") == 3
    storage = tmp_path / "runs" / "cfg" / "trials.jsonl"
    events = [json.loads(line) for line in storage.read_text().splitlines()]
    assert [e["state"] for e in events if e["event"] == "finish"] == ["COMPLETE"] * 3
    assert all(e["params"]["trainer.max_epochs"] == 2 for e in events if e["event"] == "finish")
    assert (tmp_path / "runs" / "cfg" / "tuning.png").exists()

    code, out, err = _run_main([*argv, "--trials", "4"], capsys)  # the same study, one trial more
    assert code == 0, err
    assert "resuming" in out and out.count("[trial ") == 1


@pytest.mark.slow
def test_tune_the_demo_model(tmp_path, text_folder, capsys):
    argv = ["tune", "--corpus", str(text_folder), "--trials", "2", "--tokens", "3000", "--seq-len", "32",
            "--out", str(tmp_path), "--quiet"]
    code, out, err = _run_main(argv, capsys)
    assert code == 0, err
    assert "best val/loss =" in out and "n_layer" in out


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("space: {model.lr: {float: [0.1, 1]}}\n", "'model' section is missing"),
        ("space: {lr: {float: [0.1, 1]}}\nmodel: {class_path: tests.test_tuner.Regressor}\n", "must start with"),
        ("space: {model.lr: {float: [0.1, 1]}}\nmodel: {class_path: no.such.Module}\n", "cannot import"),
        ("space: {model.lr: {float: [1, 0.1]}}\nmodel: {class_path: tests.test_tuner.Regressor}\n", "smaller than"),
        ("spaces: {}\n", "unknown keys"),
        ("[1, 2", "cannot read the study file"),
    ],
)
def test_bad_study_files_fail_in_one_line(tmp_path, capsys, text, match):
    config = tmp_path / "study.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_study_file(config)
    code, _, err = _run_main(["tune", "--config", str(config), "--out", str(tmp_path)], capsys)
    assert code == 2 and err.startswith("lightning-geo tune: error:") and len(err.strip().splitlines()) == 1


def test_tune_rejects_bad_flags(capsys, tmp_path, text_folder):
    code, _, err = _run_main(["tune", "--trials", "0"], capsys)
    assert code == 2 and "--trials" in err
    code, _, err = _run_main(["tune", "--corpus", str(tmp_path / "missing")], capsys)
    assert code == 2 and err.startswith("lightning-geo tune: error:") and "missing" in err
    code, _, err = _run_main(["tune", "--corpus", str(text_folder), "--parallel", "2", "--out", str(tmp_path)], capsys)
    assert code == 2 and "needs executor='subprocess'" in err
