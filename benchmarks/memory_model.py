"""Does the memory model (``lightning_geo.strategies.memory``) predict the peak memory of real training steps?

    python benchmarks/memory_model.py [--steps 3] [--out benchmarks/results/memory_model.txt]
                                      [--measured runs.jsonl]

Every arm trains one model for ``--steps`` steps (the optimizer's state exists from the second, so the second
and third steps hold everything a long run holds) under ``GeoHybridStrategy(mesh=(R, S, 1))`` on gloo, one
torch thread per process: 1 process (single device), 2 processes (DDP ``(2,1,1)``, FSDP ``(1,2,1)``, each with
and without ``activation_checkpointing=True``, FSDP with CPU offload), 4 processes (HSDP ``(2,2,1)`` with and
without checkpointing, FSDP ``(1,4,1)``). ``benchmarks/memory_model_worker.py`` runs the arms of one process
count back to back in one process group; each rank measures its peak with ``PeakMemory``
(``benchmarks/memory_probe.py``): the live bytes of tensor storage from PyTorch's CPU allocator, through the
profiler, plus the module's parameters at the start; the table gives the largest rank's.

Two models, AdamW, float32, micro-batches of 8 x 128 tokens per rank:

- ``demo``: the demo's ``CharLanguageModel`` (4 blocks of width 192, LayerNorm, GELU MLP, 96 characters): the
  activations and the model state dominate;
- ``llama``: a Hugging Face ``LlamaForCausalLM`` (4 blocks of width 128, 4 query and 2 key-value heads,
  SwiGLU of 352, RMSNorm, 2048 tokens, untied): the logits and the loss's temporaries dominate.

The estimate is ``estimate_memory`` on the shape ``TransformerShape.from_module`` read off the model, with the
arm's mesh, checkpointing and offload; with offload its ``cpu_bytes`` are added, since a CPU "device" and its
host are the same memory. Target: within 15% on every arm.

FSDP2's CPU offload as ``parallelize`` applies it (``CPUOffloadPolicy()``, pinned host memory) is refused on a
machine without an accelerator; the ``offload_unpinned`` arm applies it with ``pin_memory=False``, which runs,
and on a CPU moves nothing (host and device are the same memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import Transcript, code_version, free_port, write_results

from lightning_geo.strategies.memory import TransformerShape, estimate_memory
from lightning_geo.utils.table import format_table

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "benchmarks" / "memory_model_worker.py"
TARGET = 0.15
"""Largest relative error of the estimate the benchmark accepts on an arm."""
ARMS: dict[int, list[str]] = {
    1: ["demo:1,1,1", "llama:1,1,1"],
    2: [f"{model}:{arm}" for model in ("demo", "llama") for arm in (
        "2,1,1", "2,1,1:ac", "1,2,1", "1,2,1:ac", "1,2,1:offload_unpinned", "1,2,1:offload")],
    4: [f"{model}:{arm}" for model in ("demo", "llama") for arm in ("2,2,1", "2,2,1:ac", "1,4,1")],
}
"""The arms by process count: ``MODEL:R,S,T[:ac][:offload|:offload_unpinned]`` (see the worker)."""
RUN_TIMEOUT_S = 600
NOTES = [
    "measured MiB: the largest rank's peak; rank spread: it minus the smallest rank's; measured peak in: the phase of",
    "  the step (forward = from the batch's start to on_before_backward, Lightning's zero_grad included); unseen",
    "  frees: blocks freed on a thread the profiler does not follow, taken as freed at their address's next use.",
    "estimated peak at: the moment estimate_memory found largest (see lightning_geo/strategies/memory.py).",
    "offload: CPUOffloadPolicy() as parallelize builds it pins host memory, which needs an accelerator: refused on a",
    "  CPU-only machine. offload_unpinned (pin_memory=False) runs and moves nothing on a CPU (host = device); its",
    "  estimate is the device peak + cpu_bytes (the host's peak: state and gradients), which are not alive at the",
    "  same moment, so it is an upper bound, above the measure by the gradients not alive at the device's peak.",
]
"""What the table's columns mean, for the results file."""


def run_arms(processes: int, arms: list[str], *, steps: int, out: Path) -> str:
    """Run ``arms`` on ``processes`` ranks (one plain process for 1); the worker appends to ``out``. Returns
    the output's tail when the launch failed, else ``""``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={free_port()}"]
    command = [*launcher, str(WORKER), "--out", str(out), "--steps", str(steps),
               *(f"--arm={arm}" for arm in arms)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"timed out after {RUN_TIMEOUT_S} s"
    return "" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-3000:]}"


def estimate_for(rank: dict[str, Any]) -> tuple[float, str]:
    """The estimated bytes of one rank's arm (device + host with offload) and the moment of its peak."""
    shape = TransformerShape(**rank["shape"])
    r, s, t = rank["mesh"]
    estimate = estimate_memory(shape, replicate=r, shard=s, tensor=t, activation_checkpointing=rank["ac"],
                               cpu_offload=rank["offload"])
    return estimate.total + estimate.cpu_bytes, estimate.moment


def report(lines: list[dict[str, Any]]) -> tuple[str, list[float], list[str]]:
    """The comparison table, every measured arm's relative error, and the arms that failed, with their error."""
    rows, errors, failures = [], [], []
    for line in lines:
        ranks = line["ranks"]
        failed = next((r for r in ranks if "error" in r), None)
        model, mesh, *flags = line["run"].split(":")
        processes = len(ranks)
        if failed is not None:
            offload = next((f for f in flags if f.startswith("offload")), "no")
            rows.append([model, f"mesh {mesh}", processes, "yes" if "ac" in flags else "no", offload,
                         *["-"] * 7, "failed"])
            failures.append(f"{line['run']} failed on every rank: {failed['error'][:200]}")
            continue
        worst = max(ranks, key=lambda r: r["peak_bytes"])
        least = min(r["peak_bytes"] for r in ranks)
        estimated, moment = estimate_for(worst)
        error = estimated / worst["peak_bytes"] - 1
        errors.append(error)
        offload = next((f for f in flags if f.startswith("offload")), "no")
        rows.append([model, worst["plan"], processes, "yes" if worst["ac"] else "no", offload,
                     f"{worst['peak_bytes'] / 2**20:.2f}", f"{(worst['peak_bytes'] - least) / 2**20:.2f}",
                     f"{estimated / 2**20:.2f}", f"{error:+.1%}", worst["peak_phase"].split(" ", 2)[-1], moment,
                     max(r["unseen_frees"] for r in ranks), "yes" if abs(error) <= TARGET else "MISSED"])
    table = format_table(["model", "plan", "procs", "AC", "offload", "measured MiB", "rank spread", "estimated MiB",
                          "error", "measured peak in", "estimated peak at", "unseen frees", "within 15%"], rows)
    return table, errors, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps per arm (at least 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory_model.txt")
    parser.add_argument("--measured", type=Path, default=None,
                        help="re-estimate the worker's JSON lines from an earlier run instead of measuring")
    parser.add_argument("--keep", type=Path, default=None, help="also copy the worker's JSON lines here")
    args = parser.parse_args()
    version, started = code_version(), time.perf_counter()
    log = Transcript()
    failures = []
    if args.measured is not None:
        lines = [json.loads(line) for line in args.measured.read_text().splitlines() if line.strip()]
    else:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "runs.jsonl"
            for processes, arms in ARMS.items():
                begun = time.perf_counter()
                failure = run_arms(processes, arms, steps=args.steps, out=out)
                if failure:
                    failures.append(f"{processes} processes: {failure}")
                print(f"  {processes} process(es), {len(arms)} arms: {time.perf_counter() - begun:.0f} s"
                      + (f" FAILED\n{failure}" if failure else ""), flush=True)
            text = out.read_text() if out.is_file() else ""
            if args.keep is not None:
                args.keep.write_text(text)
            lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    table, errors, failed_arms = report(lines)
    mark = log.mark()
    log(" ".join(["$ python benchmarks/memory_model.py", *sys.argv[1:]]))
    log(f"{version}; torch {torch.__version__}; {os.cpu_count()} CPU cores; gloo, 1 torch thread per process; "
        f"{args.steps} steps per arm; whole run {(time.perf_counter() - started) / 60:.1f} min")
    log("measured: peak live bytes of tensor storage of the largest rank (CPU allocator via torch.profiler, "
        "+ parameters at the start); estimated: estimate_memory(TransformerShape.from_module(model), mesh, AC, "
        "offload), + cpu_bytes with offload")
    log()
    log(table)
    log()
    within = sum(abs(e) <= TARGET for e in errors)
    log(f"{within} of {len(errors)} arms within {TARGET:.0%}; largest error {max(map(abs, errors), default=0):.1%}")
    log()
    for line in NOTES:
        log(line)
    for failure in failed_arms:
        log(failure)
    for failure in failures:
        log(f"launch failed: {failure[:300]}")
    write_results(args.out, log.since(mark), version=version)


if __name__ == "__main__":
    main()
