"""Kill a GEO run anywhere, resume it with ``ckpt_path="last"``: does it continue the uninterrupted run bit for bit?

``python benchmarks/faults.py [--kills 36] [--kills-2p 14] [--control-kills 10] [--tuner-kills 10]
[--reshard-seeds 3] [--steps 12] [--seed 0] [--out PATH]``

Each run is ``tests/geo_hybrid_worker.py`` (the worker of the distributed tests): the demo model under
``strategy="geo_hybrid"`` (the single-device plan in one process, FSDP over two), with every GEO part on
(``PredictiveScalingPrecision('16-mixed')``, ``DynamicCurriculum(mode="seq_len")``, ``SparsityAwareLR``,
``GeoAdamW``), ``ModelCheckpoint(every_n_train_steps=2, save_last=True)``, a shuffled DataLoader (the
curriculum puts its resumable sampler into it) and a validation at the end of every 3-batch epoch. A kill is a
SIGKILL of the run and every process it started, at one of four kinds of moment, in turn:

- ``random``: uniformly within the uninterrupted run's training time (from its first step to its end), so it
  lands inside steps, checkpoint saves, validations and epoch ends in proportion to their time (checkpoint saves
  take most of this tiny model's time);
- ``in-save``, ``in-step``, ``in-validation``: a few milliseconds (uniform, 0-40 ms) after a randomly chosen
  checkpoint save, training step or validation began.

The phase the kill hit is the last line the run's ``PhaseTrace`` wrote. The killed run is then resumed with
``ckpt_path="last"`` (a fresh start if no ``last.ckpt`` exists yet) and must end with every loss after its
resume step and its final weights (float64 sums of every parameter) equal to the uninterrupted run's, bit for
bit (a kill after the last step resumes with nothing left to train: its weights are compared). A resume that
fails, or that reads a checkpoint a kill cut short, counts as a corrupt checkpoint picked up.

The control arm (``--control-kills``) saves as Lightning's ``ModelParallelStrategy`` does (into the checkpoint's
own folder, over the previous one) and is killed ``in-save`` the same way.

The tuner segment (``--tuner-kills``, ``benchmarks/faults_tuner.py``, whose docstring has the details) kills one of
two ``GeoTuner`` processes sharing a SQLite study mid-trial (in its objective, or while it writes a trial's start, a
report or the result) and checks the study: no trial lost, none doubled, its trials and best those of an unkilled
study with the same seed.

The reshard segment (``--reshard-seeds``, ``benchmarks/faults_reshard.py``) resumes the same every-part run on
another number of processes (2 -> 1, 1 -> 2, 2 -> 4) from a checkpoint at a step drawn per seed and case: the
samples, loss scales, density statistics and GeoAdamW's row state must continue exactly, the losses, moments and
weights within stated bounds (the gradients are summed over another number of processes, in another order).

The results file is written when every segment ran (each count above zero), or to ``--out``: a partial run does not
replace the published campaign.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_common import Transcript, code_version, command_line, free_port, write_results
from faults_reshard import LOSS_RTOL, MOMENT_RTOL, WEIGHT_ATOL_PER_STEP, run_reshard_resumes
from faults_reshard import table as reshard_table
from faults_tuner import NUM_TRIALS, kill_rows, run_tuner_kills, summary_rows, target_line

from lightning_geo.utils.table import format_table

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "geo_hybrid_worker.py"
RESULTS = ROOT / "benchmarks" / "results" / "faults.txt"
EVERY_PART = ("--geo", "geo_adamw", "--validate", "--shuffle")


# a targeted kill: the trace line it waits for, and how many of them a run of `steps` steps writes
PHASE_OF_MODE = {
    "in-save": ("checkpoint", lambda steps: 2 * (steps // 2)),  # two saves per interval: epoch=..ckpt and last
    "in-step": ("step", lambda steps: steps),
    "in-validation": ("validation", lambda steps: steps // 3),  # one per 3-batch epoch
}
MODES = ("random", *PHASE_OF_MODE)


@dataclass
class Kill:
    """One kill and its resume."""

    arm: str
    processes: int
    mode: str
    phase: str = ""
    resumed_from: int | None = None
    losses_equal: bool | None = None
    weights_equal: bool | None = None
    error: str = ""


def _command(out: Path, processes: int, steps: int, extra: tuple[str, ...]) -> list[str]:
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={free_port()}"]
    return [*launcher, str(WORKER), "--out", str(out), "--steps", str(steps), "--every", "2", "--save-last",
            *EVERY_PART, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _run(out: Path, processes: int, steps: int, *extra: str) -> tuple[int, str]:
    done = subprocess.run(_command(out, processes, steps, extra), env=_env(), capture_output=True, text=True,
                          timeout=600)
    return done.returncode, done.stderr


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun's workers and theirs), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the run and every process it started, at once (torchrun's workers leave its process group)."""
    for pid in [process.pid, *_descendants(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def _trace_lines(trace: Path) -> list[str]:
    return trace.read_text().splitlines() if trace.exists() else []


def _wait_for(trace: Path, process: subprocess.Popen, predicate, timeout: float = 300.0) -> bool:
    """Poll the trace (every 2 ms) until ``predicate(lines)``; ``False`` if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(_trace_lines(trace)):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.002)
    return False


def reference(work: Path, processes: int, steps: int) -> tuple[dict, float]:
    """The uninterrupted run's result and its training time (first step to end), seconds."""
    out = work / f"reference_{processes}p"
    trace = out / "trace.txt"
    out.mkdir(parents=True)
    process = subprocess.Popen(_command(out, processes, steps, ("--trace", str(trace))), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(trace, process, lambda lines: len(lines) > 0)
    first_step = time.monotonic()
    _wait_for(trace, process, lambda lines: f"after-step {steps}" in lines)
    train_s = time.monotonic() - first_step
    _, stderr = process.communicate(timeout=600)
    if process.returncode != 0:
        raise SystemExit(f"the uninterrupted {processes}-process run failed:\n{stderr[-3000:]}")
    return json.loads((out / "result.json").read_text()), train_s


def kill_and_resume(work: Path, number: int, kill: Kill, steps: int, train_s: float, ref: dict,
                    rng: random.Random) -> Kill:
    out = work / f"kill_{number:03d}"
    out.mkdir(parents=True)
    trace = out / "trace.txt"
    extra = ("--in-place-saves",) if kill.arm == "control" else ()
    process = subprocess.Popen(_command(out, kill.processes, steps, ("--trace", str(trace), *extra)), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started = _wait_for(trace, process, lambda lines: len(lines) > 0)
    if started and kill.mode == "random":
        time.sleep(rng.uniform(0.0, train_s))
    elif started:
        phase, count = PHASE_OF_MODE[kill.mode]
        nth = rng.randint(1, max(1, count(steps) - 1))  # which of the run's lines of that phase to wait for
        started = _wait_for(trace, process, lambda lines: sum(line.startswith(phase) for line in lines) >= nth)
        time.sleep(rng.uniform(0.0, 0.040))
    if process.poll() is not None:
        kill.phase, kill.error = "ended before the kill", f"exit {process.returncode}"
        return kill
    _kill_tree(process)
    lines = _trace_lines(trace)
    kill.phase = lines[-1] if lines else "start-up"
    resume = ("--resume", "last") if (out / "ckpt" / "last.ckpt").exists() else ()
    code, stderr = _run(out, kill.processes, steps, *resume, *extra)
    if code != 0:
        kill.error = stderr.strip().splitlines()[-1][:100] if stderr.strip() else f"exit {code}"
        return kill
    result = json.loads((out / "result.json").read_text())
    kill.resumed_from = steps - len(result["losses"])
    if kill.resumed_from >= steps and not kill.phase.endswith(f" {steps}"):  # the kill did not stop the run
        kill.error = "the killed run went on to its end"
        kill.resumed_from = None
        return kill
    kill.losses_equal = result["losses"] == ref["losses"][kill.resumed_from:]
    kill.weights_equal = result["weights"] == ref["weights"]
    return kill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=36, help="kills of one-process runs (the modes in turn)")
    parser.add_argument("--kills-2p", type=int, default=14, help="kills of two-process FSDP runs")
    parser.add_argument("--control-kills", type=int, default=10, help="in-save kills of the in-place control arm")
    parser.add_argument("--tuner-kills", type=int, default=10,
                        help="kills of a GeoTuner process sharing a SQLite study (0 skips the tuner segment)")
    parser.add_argument("--reshard-seeds", type=int, default=3,
                        help="seeds of resumes on another number of processes (2->1, 1->2, 2->4 each; 0 skips)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results file (default {RESULTS.relative_to(ROOT)}: only when every segment runs)")
    args = parser.parse_args()
    for flag in ("kills", "kills_2p", "control_kills", "tuner_kills", "reshard_seeds", "steps"):
        if getattr(args, flag) < (1 if flag == "steps" else 0):
            parser.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be non-negative (steps positive)")
    version, rng, say = code_version(), random.Random(args.seed), Transcript()
    plan = ([Kill("geo", 1, MODES[i % len(MODES)]) for i in range(args.kills)]
            + [Kill("geo", 2, MODES[i % len(MODES)]) for i in range(args.kills_2p)]
            + [Kill("control", 1, "in-save") for _ in range(args.control_kills)])
    with tempfile.TemporaryDirectory(prefix="geo_faults_") as tmp:
        work = Path(tmp)
        refs = {}
        for processes in sorted({k.processes for k in plan}):
            refs[processes] = reference(work, processes, args.steps)
            say(f"uninterrupted {processes}-process run: {args.steps} steps, {refs[processes][1]:.1f} s of training")
        done: list[Kill] = []
        for number, kill in enumerate(plan):
            ref, train_s = refs[kill.processes]
            done.append(kill_and_resume(work, number, kill, args.steps, train_s, ref, rng))
            k = done[-1]
            say(f"kill {number + 1}/{len(plan)}: {k.arm} {k.processes}p {k.mode}: {k.phase} -> "
                f"{'resumed from step ' + str(k.resumed_from) if k.resumed_from is not None else k.error}"
                + ("" if k.losses_equal is None else f", losses {'equal' if k.losses_equal else 'DIFFER'}, "
                   f"weights {'equal' if k.weights_equal else 'DIFFER'}"))
        tuner_started = time.monotonic()
        tuner_kills = run_tuner_kills(work, args.tuner_kills, args.seed, rng, say)[0] if args.tuner_kills else []
        if args.tuner_kills:
            say(f"tuner segment: {time.monotonic() - tuner_started:.0f} s")
        reshard = []
        for seed in range(args.seed, args.seed + args.reshard_seeds):
            reshard += run_reshard_resumes(seed, work=work / f"reshard_{seed}", from_start=True)
            say(f"resumes on another number of processes, seed {seed}: "
                + ", ".join(f"{r['case']} at step {r['resume_step']} {r['outcome']}" for r in reshard[-3:]))
    mark = say.mark()
    if done:
        say(f"# Kill anywhere, resume with ckpt_path='last' ({args.steps} steps, checkpoint every 2, seed {args.seed})")
        say()
        say(format_table(["#", "arm", "procs", "kill", "phase at the kill (step)", "resumed from", "losses",
                          "weights", "error"],
                         [[i + 1, k.arm, k.processes, k.mode, k.phase,
                           "" if k.resumed_from is None else k.resumed_from,
                           {True: "equal", False: "DIFFER", None: ""}[k.losses_equal],
                           {True: "equal", False: "DIFFER", None: ""}[k.weights_equal], k.error]
                          for i, k in enumerate(done)]))
        say()
    if tuner_kills:
        say(f"# The tuner killed mid-trial: GeoTuner, two processes on one SQLite study of {NUM_TRIALS} trials, "
            f"one SIGKILLed (seed {args.seed})")
        say()
        say(format_table(*kill_rows(tuner_kills, first=len(done) + 1)))
        say()
    if reshard:
        say(f"# Resumed on another number of processes ({len(reshard) // 3} seeds from {args.seed}; 6 steps, epochs "
            "of 3, a checkpoint after every step; the resume step drawn per case; 'from start' is an uninterrupted "
            "run on the new number of processes, for scale)")
        say()
        say(reshard_table(reshard))
        say()
    rows = []
    for arm, processes in sorted({(k.arm, k.processes) for k in done}):
        group = [k for k in done if (k.arm, k.processes) == (arm, processes) and k.phase != "ended before the kill"]
        exact = sum(bool(k.losses_equal and k.weights_equal) for k in group)
        failed = sum(k.resumed_from is None for k in group)
        phases: dict[str, int] = {}
        for k in group:
            name = k.phase.split(" ")[0]
            phases[name] = phases.get(name, 0) + 1
        rows.append([arm, processes, len(group), f"{exact}/{len(group)}", failed,
                     ", ".join(f"{p} {n}" for p, n in sorted(phases.items()))])
    rows += summary_rows(tuner_kills)
    for case in sorted({r["case"] for r in reshard}, key=lambda c: reshard.index(next(r for r in reshard
                                                                                        if r["case"] == c))):
        group = [r for r in reshard if r["case"] == case]
        within = sum(r["outcome"] == "within bound" for r in group)
        rows.append([f"processes {case}", case.replace("->", "/"), len(group), f"{within}/{len(group)} within bound",
                     len(group) - within, ", ".join(f"step {r['resume_step']}" for r in group)])
    say(format_table(["arm", "procs", "kills", "bit-for-bit resumes", "failed resumes", "phases hit"], rows))
    if tuner_kills:
        say("(a tuner study resumes bit for bit when it ends with every trial complete once, with the unkilled study's")
        say(" configs and values bit for bit and its best; it fails with a lost or doubled trial or an error)")
    say()
    geo = [k for k in done if k.arm == "geo" and k.phase != "ended before the kill"]
    if geo:
        met = all(k.losses_equal and k.weights_equal for k in geo)
        say(f"target: every GEO resume continues bit for bit and no corrupt checkpoint is picked up: "
            f"{'met' if met else 'NOT met'} ({sum(bool(k.losses_equal and k.weights_equal) for k in geo)}/{len(geo)})")
    if tuner_kills:
        say(target_line(tuner_kills))
    if reshard:
        within = sum(r["outcome"] == "within bound" for r in reshard)
        say(f"target: every resume on another number of processes within the bounds (losses {LOSS_RTOL:g} and Adam "
            f"moments' norms {MOMENT_RTOL:g} relative, weights {WEIGHT_ATOL_PER_STEP:g} per step after the resume, "
            f"samples, scales, density and row state exact): {'met' if within == len(reshard) else 'NOT met'} "
            f"({within}/{len(reshard)})")
    say(f"\ncommand: {command_line(__file__)}")
    every_segment = all(getattr(args, flag) > 0
                        for flag in ("kills", "kills_2p", "control_kills", "tuner_kills", "reshard_seeds"))
    if args.out is not None or every_segment:
        write_results(args.out or RESULTS, say.since(mark), version=version)
    else:
        print(f"\nnot written: a run without every segment does not replace {RESULTS.relative_to(ROOT)} "
              "(pass --out to write it elsewhere)")


if __name__ == "__main__":
    main()
