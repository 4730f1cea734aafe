"""Resume a GEO run on another number of processes: does it continue the uninterrupted run, within the bounds?

``python benchmarks/faults_reshard.py [--seed 0] [--cases 2:1,1:2,2:4] [--steps 6] [--work DIR]``

Each run is ``tests/geo_hybrid_worker.py`` (the worker of the distributed tests and of ``benchmarks/faults.py``): the
demo model under ``strategy="geo_hybrid"`` (the single-device plan in one process, FSDP over more), with every GEO
part on (``PredictiveScalingPrecision('16-mixed')``, ``DynamicCurriculum(mode="seq_len")``, ``SparsityAwareLR``,
``GeoAdamW``), a shuffled DataLoader (the curriculum's resumable sampler), a global batch of 8 whatever the number of
processes, epochs of 3 batches with a validation at each end, and a checkpoint after every step.

A case ``N -> M`` runs the uninterrupted N-process run, then resumes it on M processes from its checkpoint after step
``k`` (drawn per case from the seed, 1 to ``steps - 1``: mid-epoch or at an epoch's end); the stop at ``k`` is the
simplest honest stand-in for a kill there, since a kill leaves the run on its last complete checkpoint
(``benchmarks/faults.py`` measures that part). The resumed run is compared with the uninterrupted one:

- exactly: the samples of every step (none repeated, none skipped in each epoch the resume continued), the
  precision plugin's loss scales, the sequence lengths, the density statistics (row density, hit counts), the
  curriculum's counts and GeoAdamW's per-row state (step, row hit counts, density average, row modes);
- to a bound: the losses after the resume (``LOSS_RTOL``, relative), GeoAdamW's moments (``MOMENT_RTOL``, relative,
  the norm of each parameter's) and every final weight (``WEIGHT_ATOL_PER_STEP`` per step trained after the resume:
  the demo's learning rate; Adam's normalised step moves a weight whose gradient is near zero by up to about the
  learning rate whichever sign rounding gives that gradient). These cannot be equal: the gradients are summed over
  another number of processes, in another order. For scale, the table also gives the same differences between the
  uninterrupted N-process run and an uninterrupted M-process run over the same steps (``from start``): what the
  number of processes changes with no resume at all (where that M-process run is made: see ``from_start``).

Also callable: ``run_reshard_resumes(seed)`` returns one row (a dict) per case.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from itertools import zip_longest
from pathlib import Path
from typing import Any

import torch
from bench_common import free_port

from lightning_geo.utils.table import format_table

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "geo_hybrid_worker.py"
EVERY_PART = ("--geo", "geo_adamw", "--shuffle", "--validate", "--every", "1", "--save-weights")
CASES: tuple[tuple[int, int], ...] = ((2, 1), (1, 2), (2, 4))
LOSS_RTOL = 1e-4  # largest relative difference of a loss after the resume
MOMENT_RTOL = 1e-3  # largest relative difference of the norm of a parameter's Adam moment at the end
WEIGHT_ATOL_PER_STEP = 3e-3  # largest difference of any final weight, per step after the resume (the learning rate)
ROW_STATE = ("step", "row_step", "density_ema", "row_mode", "row_mode_age")  # GeoAdamW's per-row bookkeeping
CURRICULUM_COUNTS = ("threshold", "progress", "samples_seen", "tokens_seen")
HEADERS = ("case", "resume step", "loss rel diff", "max |dw|", "|dw| bound", "moments rel diff", "repeated",
           "skipped", "scales equal", "density rel diff", "row state equal", "from start: loss", "from start: |dw|",
           "outcome")


def _run(out: Path, processes: int, steps: int, *extra: str) -> dict:
    """The worker on ``processes`` (plain python for one, ``torchrun`` and FSDP for more); its result."""
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={free_port()}"]
    plan = ("--plan", "fsdp") if processes > 1 else ()
    command = [*launcher, str(WORKER), "--out", str(out), "--steps", str(steps), *plan, *EVERY_PART, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(f"{processes}-process run failed: {lines[-1][:200] if lines else done.returncode}")
    return json.loads((out / "result.json").read_text())


def _max_rel(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True)), default=0.0)


def _max_weight_diff(a: Path, b: Path) -> float:
    first, second = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
    return max(float((first[name] - second[name]).abs().max()) for name in second)


def _moment_rel_diff(full: dict, resumed: dict) -> float:
    """The largest relative difference of the norm of a parameter's Adam moment (``exp_avg``, ``exp_avg_sq``)."""
    worst = 0.0
    for name, state in full["optimizer"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = state.get(key), resumed["optimizer"][name].get(key)
            if a is None or b is None:
                worst = worst if a is None and b is None else float("inf")
                continue
            norm_a, norm_b = (float(torch.tensor(v, dtype=torch.float64).norm()) for v in (a, b))
            worst = max(worst, abs(norm_b - norm_a) / max(norm_a, 1e-30))
    return worst


def _epochs(batches: list[list[int]], size: int) -> list[list[int]]:
    flat = [i for batch in batches for i in batch]
    return [flat[start:start + size] for start in range(0, len(flat), size)]


def compare(full: dict, resumed: dict, step: int, full_dir: Path, resumed_dir: Path) -> dict[str, Any]:
    """How the run resumed after ``step`` differs from the uninterrupted ``full`` run (results of the worker)."""
    size = full["train_samples"]
    repeated = skipped = 0
    for done, expected in zip_longest(_epochs(full["samples"][:step] + resumed["samples"], size),
                                      _epochs(full["samples"], size), fillvalue=[]):
        repeated += len(done) - len(set(done))
        skipped += len(set(expected) - set(done))
    geo, ref = resumed["geo"], full["geo"]
    density = [*geo["density"], *resumed["sparsity"]["row_density"].values()]
    ref_density = [*ref["density"][step:], *full["sparsity"]["row_density"].values()]
    row_state_equal = all(
        {k: v for k, v in resumed["optimizer"][name].items() if k in ROW_STATE}
        == {k: v for k, v in state.items() if k in ROW_STATE}
        for name, state in full["optimizer"].items())
    exact = {
        "steps": resumed["global_step"] == full["global_step"],
        "same batches": resumed["samples"] == full["samples"][step:],
        "scales": geo["scale"] == ref["scale"][step:] and resumed["precision"] == full["precision"],
        "seq_len": geo["seq_len"] == ref["seq_len"][step:],
        "hit counts": resumed["sparsity"]["hit_counts"] == full["sparsity"]["hit_counts"],
        "curriculum": all(resumed["curriculum"][k] == full["curriculum"][k] for k in CURRICULUM_COUNTS),
        "row state": row_state_equal,
    }
    row = {
        "resume_step": step,
        "loss_rel_diff": _max_rel(resumed["losses"], full["losses"][step:]),
        "weight_max_diff": _max_weight_diff(resumed_dir, full_dir),
        "weight_bound": WEIGHT_ATOL_PER_STEP * (full["global_step"] - step),
        "moment_rel_diff": _moment_rel_diff(full, resumed),
        "samples_repeated": repeated,
        "samples_skipped": skipped,
        "scales_equal": exact["scales"],
        "density_rel_diff": _max_rel(density, ref_density),
        "row_state_equal": row_state_equal,
    }
    problems = [name for name, equal in exact.items() if not equal]
    problems += ["samples repeated"] * bool(repeated) + ["samples skipped"] * bool(skipped)
    problems += ["density"] * (row["density_rel_diff"] > 0.0)
    problems += ["losses"] * (row["loss_rel_diff"] > LOSS_RTOL) + ["moments"] * (row["moment_rel_diff"] > MOMENT_RTOL)
    problems += ["weights"] * (row["weight_max_diff"] > row["weight_bound"])
    row["outcome"] = "within bound" if not problems else "OUT: " + ", ".join(problems)
    return row


def run_reshard_resumes(seed: int, cases: tuple[tuple[int, int], ...] = CASES, *, steps: int = 6,
                        work: Path | None = None, from_start: bool | None = None) -> list[dict[str, Any]]:
    """Resume on another number of processes, once per case ``(N, M)``; one row per case.

    Args:
        seed: Draws each case's resume step, 1 to ``steps - 1``.
        cases: ``(saved on, resumed on)`` numbers of processes. Default 2 -> 1, 1 -> 2, 2 -> 4.
        steps: Training steps of every run (epochs of 3). Default 6.
        work: Folder for the runs; default a temporary one, removed at the end.
        from_start: The ``from_start_*`` differences (the uninterrupted M-process run against the N-process one:
            the reduction order alone): ``True`` runs every M uninterrupted, ``False`` none, ``None`` (default) uses
            the uninterrupted runs the cases make anyway (2 -> 1 and 1 -> 2 get them, 2 -> 4 does not).

    Returns:
        Per case: ``case`` ("2->1"), ``resume_step``, ``loss_rel_diff``, ``weight_max_diff``, ``weight_bound``,
        ``moment_rel_diff``, ``samples_repeated``, ``samples_skipped``, ``scales_equal``, ``density_rel_diff``,
        ``row_state_equal``, ``from_start_loss_rel_diff`` and ``from_start_weight_max_diff`` (``None`` where not
        made), ``outcome`` ("within bound", "OUT: <what differs>" or "failed: <error>") and ``seconds``.
    """
    if work is None:
        with tempfile.TemporaryDirectory(prefix="geo_reshard_") as folder:
            return run_reshard_resumes(seed, cases, steps=steps, work=Path(folder), from_start=from_start)
    uninterrupted: dict[int, dict] = {}

    def full_run(processes: int) -> dict:
        if processes not in uninterrupted:
            uninterrupted[processes] = _run(work / f"full_{processes}p", processes, steps)
        return uninterrupted[processes]

    rows = []
    for saved, resumed_on in cases:
        step = random.Random(f"{seed}:{saved}->{resumed_on}").randint(1, steps - 1)  # each case its own draw
        row: dict[str, Any] = {"case": f"{saved}->{resumed_on}", "resume_step": step}
        started = time.monotonic()
        try:
            full = full_run(saved)
            checkpoint = next((work / f"full_{saved}p" / "ckpt").glob(f"*-step={step}.ckpt"))
            out = work / f"resume_{saved}to{resumed_on}_at{step}"
            resumed = _run(out, resumed_on, steps, "--resume", str(checkpoint))
            row.update(compare(full, resumed, step, work / f"full_{saved}p", out))
            if from_start:
                full_run(resumed_on)
        except (RuntimeError, StopIteration, OSError, subprocess.TimeoutExpired) as error:
            row["outcome"] = f"failed: {type(error).__name__}: {error}"[:160]
        row["seconds"] = round(time.monotonic() - started, 1)
        rows.append(row)
    for row, (saved, resumed_on) in zip(rows, cases, strict=True):
        row["from_start_loss_rel_diff"] = row["from_start_weight_max_diff"] = None
        if from_start is not False and saved in uninterrupted and resumed_on in uninterrupted:
            step, full = row["resume_step"], uninterrupted[saved]
            other = uninterrupted[resumed_on]
            row["from_start_loss_rel_diff"] = _max_rel(other["losses"][step:], full["losses"][step:])
            row["from_start_weight_max_diff"] = _max_weight_diff(work / f"full_{resumed_on}p", work / f"full_{saved}p")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as the text table this script prints."""
    def number(value: Any) -> Any:
        return "-" if value is None else f"{value:.1e}" if isinstance(value, float) else value

    keys = ("case", "resume_step", "loss_rel_diff", "weight_max_diff", "weight_bound", "moment_rel_diff",
            "samples_repeated", "samples_skipped",
            "scales_equal", "density_rel_diff", "row_state_equal", "from_start_loss_rel_diff",
            "from_start_weight_max_diff", "outcome")
    return format_table(HEADERS, [[number(row.get(key)) for key in keys] for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default="2:1,1:2,2:4", help="N:M pairs: saved on N processes, resumed on M")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--work", type=Path, default=None, help="keep the runs in this folder (default: removed)")
    parser.add_argument("--from-start", action="store_true",
                        help="also run every M uninterrupted (2 -> 4: a 4-process run) for the from-start columns")
    args = parser.parse_args()
    cases = tuple((int(n), int(m)) for n, m in (pair.split(":") for pair in args.cases.split(",")))
    started = time.monotonic()
    rows = run_reshard_resumes(args.seed, cases, steps=args.steps, work=args.work, from_start=args.from_start or None)
    print(table(rows))
    within = sum(row["outcome"] == "within bound" for row in rows)
    print(f"\nbounds: losses to {LOSS_RTOL:g} and Adam moments' norms to {MOMENT_RTOL:g} (relative), every weight to "
          f"{WEIGHT_ATOL_PER_STEP:g} per step after the resume; everything else exact. "
          f"{within}/{len(rows)} resumes within bound. seed {args.seed}, {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
