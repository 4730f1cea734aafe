"""A ``geo_hybrid`` run with every GEO part, saved mid-epoch on N processes and resumed on M (2 -> 1, 1 -> 2, and
2 -> 4 when asked: ``pytest -m four_processes``), continues the uninterrupted N-process run:

- the same samples per step (the global batch is kept): the rest of the saved epoch, none repeated, none skipped;
- exactly the same sequence lengths, precision plugin's loss scales, density statistics (row density, hit counts),
  curriculum counts (samples and tokens seen) and GeoAdamW per-row state (step, row hit counts, density average,
  row modes), re-sharded by the distributed checkpoint or carried over as they are;
- the losses to ``LOSS_RTOL``, GeoAdamW's moments to ``MOMENT_RTOL`` and every weight to ``WEIGHT_ATOL_PER_STEP`` per
  step after the resume: not bit for bit, because the gradients are summed over another number of processes (another
  reduction order). A 1-process and a 2-process run of the same steps differ by as much (relative loss difference
  about 1e-5 after four steps). ``benchmarks/faults_reshard.py`` measures these at random resume steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_geo_hybrid import run_worker

STEPS = 6  # two epochs of three global batches of 8 (24 samples)
RESUME_AT = 4  # mid-epoch: 8 of the second epoch's 24 samples trained before the checkpoint
EVERY_PART = ("--geo", "geo_adamw", "--shuffle", "--every", "2", "--steps", str(STEPS), "--save-weights")
LOSS_RTOL = 1e-4  # measured: at most 2.2e-5
MOMENT_RTOL = 1e-3  # of the norm of each parameter's exp_avg and exp_avg_sq; measured: at most 3e-4
WEIGHT_ATOL_PER_STEP = 3e-3  # the learning rate; measured: at most a quarter of it per step after the resume
ROW_STATE = ("step", "row_step", "density_ema", "row_mode", "row_mode_age")  # GeoAdamW's per-row bookkeeping


def _run(out: Path, processes: int, *args: str) -> dict:
    """The worker on ``processes`` (FSDP for more than one; plain python for one)."""
    plan = ("--plan", "fsdp") if processes > 1 else ()
    return run_worker(out, 0 if processes == 1 else processes, *plan, *EVERY_PART, *args)


def _epochs(batches: list[list[int]], size: int) -> list[list[int]]:
    """The samples of consecutive epochs of ``size`` samples, in training order."""
    flat = [i for batch in batches for i in batch]
    return [flat[start:start + size] for start in range(0, len(flat), size)]


def assert_resume_continues(full: dict, resumed: dict, full_dir: Path, resumed_dir: Path, step: int) -> None:
    """``resumed`` (from ``full``'s checkpoint at ``step``) continues ``full`` as the module docstring says."""
    assert resumed["global_step"] == full["global_step"] == STEPS
    # the samples: the rest of each epoch once, and the same global batch per step as the uninterrupted run
    size = full["train_samples"]
    for epoch in _epochs(full["samples"][:step] + resumed["samples"], size):
        assert sorted(epoch) == list(range(size)), "a sample repeated or skipped within an epoch"
    assert resumed["samples"] == full["samples"][step:]
    # what every GEO part decided, exactly
    geo, ref = resumed["geo"], full["geo"]
    for key in ("scale", "skipped", "seq_len", "density", "multiplier"):
        assert geo[key] == ref[key][step:], key
    assert resumed["precision"] == full["precision"]
    assert resumed["sparsity"] == full["sparsity"]
    counts = ("threshold", "progress", "samples_seen", "tokens_seen")
    assert {k: resumed["curriculum"][k] for k in counts} == {k: full["curriculum"][k] for k in counts}
    assert resumed["curriculum"]["smoothed_losses"] == pytest.approx(full["curriculum"]["smoothed_losses"], rel=1e-5)
    assert "row_step" in full["optimizer"]["model.wte.weight"]  # the embedding is under GeoAdamW's row rule
    for name, state in full["optimizer"].items():
        assert {k: v for k, v in resumed["optimizer"][name].items() if k in ROW_STATE} == {
            k: v for k, v in state.items() if k in ROW_STATE}, name
    # the numbers that depend on the reduction order, to the stated bounds
    assert resumed["losses"] == pytest.approx(full["losses"][step:], rel=LOSS_RTOL)
    for name in full["optimizer"]:
        for key in ("exp_avg", "exp_avg_sq"):
            norms = [float(torch.tensor(run["optimizer"][name][key], dtype=torch.float64).norm())
                     for run in (resumed, full)]
            assert norms[0] == pytest.approx(norms[1], rel=MOMENT_RTOL), (name, key)
    weights, reference = torch.load(resumed_dir / "weights.pt"), torch.load(full_dir / "weights.pt")
    assert weights.keys() == reference.keys()
    for name, value in reference.items():
        atol = WEIGHT_ATOL_PER_STEP * (STEPS - step)
        torch.testing.assert_close(weights[name], value, rtol=0, atol=atol, msg=name)


def _resume_case(tmp_path: Path, saved: int, resumed: int) -> None:
    full = _run(tmp_path / "full", saved)
    checkpoint = next((tmp_path / "full" / "ckpt").glob(f"*step={RESUME_AT}.ckpt"))
    after = _run(tmp_path / "resumed", resumed, "--resume", str(checkpoint))
    assert (full["world_size"], after["world_size"]) == (saved, resumed)
    assert_resume_continues(full, after, tmp_path / "full", tmp_path / "resumed", RESUME_AT)


@pytest.mark.ddp
def test_a_two_process_fsdp_run_resumed_on_one_process_continues_it(tmp_path):
    _resume_case(tmp_path, 2, 1)


@pytest.mark.ddp
def test_a_one_process_run_resumed_on_two_fsdp_processes_continues_it(tmp_path):
    _resume_case(tmp_path, 1, 2)


@pytest.mark.four_processes
def test_a_two_process_fsdp_run_resumed_on_four_fsdp_processes_continues_it(tmp_path):
    _resume_case(tmp_path, 2, 4)
