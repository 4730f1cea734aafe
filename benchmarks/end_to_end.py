"""Does ``lightning_geo.recipe()`` (and do GEO's optimizer and batch-size schedule) train faster than plain Lightning,
end to end, on wall-clock time, from the demo's budget to 64 times it?

``python benchmarks/end_to_end.py [--models demo,llama] [--budgets 30s,120s,480s,1920s] [--seeds 0,1,2]
[--long-seeds 0] [--arms plain,recipe,muon,...] [--ablation-budget 480s] [--tune-lr N] [--parallel 2]
[--corpora stdlib,kjv] [--limit kjv:120s:0] [--reuse] [--plan] [--quick]``

Models (``--models``): ``demo``, the demo's GPT-2-shaped LM (4 blocks, width 128, 4 heads, learned positions, untied
head, context 128, batch 32), and ``llama``, a Hugging Face ``LlamaForCausalLM`` of the same size (4 layers, hidden
128, 4 heads, SwiGLU 344, RoPE, RMSNorm, untied head; built from a ``LlamaConfig``, nothing downloaded) behind the
same LightningModule (``benchmarks/end_to_end_models.py``). Both read a byte-level BPE of 4,096 tokens learned on
each corpus and train with AdamW (betas 0.9/0.95, weight decay 0.1 on the linear weights), warmup + cosine to 10%
over the budget, gradient clipping 1.0, ``bf16-mixed`` on a CPU with bf16 instructions (``32-true`` on one without
them, where bf16 is emulated; ``--precision``). Every run is budgeted in seconds spent in
training batches (validation is not counted; see ``lightning_geo.demo.budget``) and validates 12 times over its
budget on 256 held-out windows.

Corpora: ``stdlib`` (the demo's: this Python's standard library sources, 8.9 M tokens) and ``kjv`` (the King
James Bible as printed by Debian's ``bible`` command, ``apt-get install bible-kjv``; the last 5% held out).

Budgets: the demo's 30 s and 4, 16 and 64 times it; seeds 0, 1, 2 at each but the longest (``--long-seeds``,
seed 0 by default). Each run is its own ``python`` process; ``--parallel 2`` runs two at a time, each on one thread
(``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``), in the order of a seed's comparisons (plain beside the first
arm, then the other arms two by two), so that every run shares the machine with one other one-thread run and a
shared machine's slow phases hit both arms of a pair alike; the table gives CPU seconds beside wall seconds.

Arms (``--arms``):

- ``plain``: plain Lightning (Lightning's ``MixedPrecision``, AdamW);
- ``muon``: plain, but the model's optimizer is ``lightning_geo.optim.GeoMuon`` (Muon for the hidden matrices, the
  row rule for the embedding, AdamW for the rest) in place of AdamW;
- ``batch-schedule``: plain + ``lightning_geo.callbacks.BatchSizeSchedule`` (gradient accumulation grown from the
  measured gradient noise scale, with its LR rule);
- ``recipe``: ``L.Trainer(**lightning_geo.recipe())``; ``recipe+muon``, ``recipe+batch``, ``recipe+muon+batch``: the
  recipe with either or both of the newer parts;
- the leave-one-out ablation at ``--ablation-budget`` (16x the demo's by default), each arm the ``--ablation-base``
  (``recipe+muon+batch``) without one part: ``-muon``, ``-batch``, ``-seq_len_warmup``, ``-sparsity``; and
  ``random-order``, the curriculum's control: the same sequence lengths as the linear warmup, drawn in random order
  over the warmup instead of shortest first (the same tokens, not the same order). Runnable by name too:
  ``+bf16-plugin`` (``PredictiveScalingPrecision("bf16-mixed")`` in place of Lightning's ``bf16-mixed``) and
  ``deadline=<share>`` (the warmup over that share of the budget; ``--pacing-budgets`` runs ``deadline=0.5`` there).

Learning rates: by default ``DEMO_LEARNING_RATES`` and ``DEMO_WARMUP_SHARES`` (each arm tuned with the same budget
of ``GeoTuner`` trials at the demo's budget: ``python benchmarks/tune_demo_lr.py``): plain's for ``plain`` and
``batch-schedule``, the recipe's for the recipe's arms; an arm that trains with GeoMuon (one learning rate for Muon's
matrices and AdamW's rest, matched to AdamW's update size) takes the learning rate of the AdamW arm it replaces, or
``--lr-muon``. ``--tune-lr N`` tunes each arm at each budget (of ``--tune-budgets``) instead: N learning rates on a
log grid (``--tune-step`` apart, x2 by default) around its default, seed 0, the lowest final validation loss wins
(``bench_harness.tune_lr``), the same N trials for every arm; the table says which learning rate each arm used and
whether it was tuned.

Figures, per model, corpus, budget and seed: the target is that seed's plain run's final validation loss; steps,
tokens and seconds to reach it, read off each curve with linear interpolation between validations, with their
ratio ``x`` = plain's / the arm's (1.3 = the arm needs 1/1.3 of plain's); ``final``: the arm's final loss / plain's;
the seconds and CPU seconds spent in training batches; the per-step cost: the median CPU seconds of an optimizer
step at full sequence length (the batch schedule's steps hold several micro-batches) and its ratio to plain's.
Median over seeds and the spread (min-max).

Targets: at the demo's budget the recipe reaches plain's final loss in 1/1.3 of the time (median) and 1/1.1 on
every seed, with a lower final loss on every seed; at 16x and 64x its final loss is within 0.5% of plain's; the
newer parts (``muon``, ``batch-schedule``, ``recipe+muon``, ``recipe+batch``) end lower than plain at 16x and 64x
on every seed (a gain that lasts), and every part of the ablation base earns its place (the base reaches the target
sooner than without it, on every seed).

``--reuse`` keeps the run files of earlier invocations (``build/end_to_end/``) whose settings match, so that a long
sweep can be run in pieces; ``--plan`` lists the runs and the time they take, without training; ``--quick`` is a
smoke run (8 optimizer steps, one seed, ``plain`` and ``recipe+muon+batch``) of every code path, in about a
minute.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from threading import Lock
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "build" / "end_to_end"
RESULTS = ROOT / "benchmarks" / "results" / "end_to_end_cpu.txt"
MODELS: tuple[str, ...] = ("demo", "llama")
MAIN_ARMS: tuple[str, ...] = ("plain", "recipe", "muon", "batch-schedule", "recipe+muon", "recipe+batch")
ABLATION_BASE = "recipe+muon+batch"
ABLATIONS: tuple[str, ...] = ("-muon", "-batch", "-seq_len_warmup", "-sparsity", "random-order")
NEW_PART_ARMS: tuple[str, ...] = ("muon", "batch-schedule", "recipe+muon", "recipe+batch")
NEW_PARTS: tuple[str, ...] = ("muon", "batch")
PACING_ARM = "deadline=0.5"
"""The pacing arm also run at ``--pacing-budgets`` (the recipe's own deadline against the runner-up's)."""
RUN_OVERHEAD_S = 25.0
"""Seconds a run takes beyond its budget on 2 CPU cores (start-up, corpus from the cache, 12 validations)."""
QUICK = {"budgets": "8steps", "seeds": "0", "long_seeds": None, "corpora": "stdlib", "ablation_budget": "",
         "arms": "plain,recipe+muon+batch", "val_points": 3, "val_samples": 32, "max_train_chars": 1_000_000,
         "no_results_file": True}
"""What ``--quick`` sets: one tiny run per arm through every code path (GeoMuon, the batch schedule, the recipe), by
steps rather than seconds, so that a loaded machine still takes a few optimizer steps."""
ARM_FORMS = ("plain, muon, batch-schedule, recipe[+muon][+batch], and relative to --ablation-base: -<part> (part: "
             "muon, batch or a recipe part), random-order, +bf16-plugin, deadline=<share>")


@dataclass(frozen=True)
class Arm:
    """What an arm trains with."""

    geo: bool = False  # lightning_geo.recipe()
    exclude: str = ""  # the recipe part it leaves out
    muon: bool = False  # GeoMuon in place of AdamW
    batch: bool = False  # BatchSizeSchedule
    random_order: bool = False  # the warmup's lengths in random order
    bf16_plugin: bool = False  # PredictiveScalingPrecision("bf16-mixed")
    deadline: float | None = None  # the warmup's deadline when not the recipe's


def parse_arm(name: str, base: str = ABLATION_BASE) -> Arm:
    """The :class:`Arm` named ``name``; ``-<part>``, ``random-order``, ``+bf16-plugin`` and ``deadline=`` are taken
    relative to ``base``.

    Raises:
        ValueError: naming the arm and the forms arms take.
    """
    from lightning_geo.recipes import RECIPE_PARTS

    if name == "plain":
        return Arm()
    if name == "muon":
        return Arm(muon=True)
    if name == "batch-schedule":
        return Arm(batch=True)
    head, *extras = name.split("+")
    if head == "recipe" and set(extras) <= set(NEW_PARTS) and len(set(extras)) == len(extras):
        return Arm(geo=True, muon="muon" in extras, batch="batch" in extras)
    relative = name.startswith("-") or name in ("random-order", "+bf16-plugin") or name.startswith("deadline=")
    if not relative or base == name:
        raise ValueError(f"unknown arm {name!r}; arms: {ARM_FORMS}")
    start = parse_arm(base, base)
    if not start.geo:
        raise ValueError(f"arm {name!r} is relative to the ablation base {base!r}, which is not a recipe arm")
    if name.startswith("-"):
        part = name[1:]
        if part in NEW_PARTS:
            if not getattr(start, part):
                raise ValueError(f"arm {name!r}: the ablation base {base!r} has no {part} to leave out")
            return Arm(**{**asdict(start), part: False})
        if part not in RECIPE_PARTS:
            raise ValueError(f"arm {name!r}: unknown part {part!r}; parts: {[*NEW_PARTS, *RECIPE_PARTS]}")
        return Arm(**{**asdict(start), "exclude": part})
    if name.startswith("deadline="):
        try:
            deadline = float(name.split("=", 1)[1])
        except ValueError:
            raise ValueError(f"arm {name!r}: the deadline must be a share of the budget in (0, 1]") from None
        return Arm(**{**asdict(start), "deadline": deadline})
    return Arm(**{**asdict(start), "random_order": name == "random-order", "bf16_plugin": name == "+bf16-plugin"})


_KEY_DEFAULTS: dict[str, Any] = {"model": "demo", "threads": 0, "max_train_chars": None, "muon": False, "batch": False,
                                  "precision": "bf16-mixed"}
"""Settings left out of a run's key at these values, so that run files written before they existed still match."""


@dataclass(frozen=True)
class RunSpec:
    """One training run: what a worker process needs."""

    arm: str  # see parse_arm
    corpus: str  # stdlib or kjv
    budget: str
    seed: int
    lr: float
    warmup_share: float = 0.05
    val_points: int = 12
    val_samples: int = 256
    model: str = "demo"  # one of MODELS
    base: str = ABLATION_BASE  # what -<part>, random-order, +bf16-plugin and deadline= arms start from
    threads: int = 0  # torch threads of the worker (0: torch's default)
    max_train_chars: int | None = None  # BPE: characters of training text encoded (None: all of it)
    precision: str = "bf16-mixed"  # both arms' (32-true on a CPU without bf16 instructions: see --precision)

    def parts(self) -> Arm:
        return parse_arm(self.arm, self.base)

    def effective(self) -> dict[str, Any]:
        """What the arm trains with: two arm names that mean the same run share one run file."""
        from lightning_geo.recipes import SEQ_LEN_WARMUP_DEADLINE

        arm = self.parts()
        warmup = arm.geo and arm.exclude != "seq_len_warmup"
        deadline = (arm.deadline or SEQ_LEN_WARMUP_DEADLINE) if warmup else None
        return {"geo": arm.geo, "exclude": arm.exclude, "deadline": deadline, "random_order": arm.random_order,
                "bf16_plugin": arm.bf16_plugin, "muon": arm.muon, "batch": arm.batch}

    def key(self) -> str:
        fields = {**asdict(self), **self.effective()}
        for name in ("arm", "base"):
            fields.pop(name)
        fields = {k: v for k, v in fields.items() if not (k in _KEY_DEFAULTS and v == _KEY_DEFAULTS[k])}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def corpus_path(name: str) -> str | None:
    """The corpus argument of ``name``: None for the stdlib; the KJV written once to the cache."""
    if name == "stdlib":
        return None
    if name != "kjv":
        raise ValueError(f"unknown corpus {name!r}; expected stdlib or kjv")
    cache = Path(os.environ.get("LIGHTNING_GEO_CACHE", Path.home() / ".cache" / "lightning_geo")) / "kjv.txt"
    if not cache.is_file():
        if shutil.which("bible") is None:
            sys.exit("the kjv corpus needs the `bible` command: apt-get install bible-kjv")
        text = subprocess.run(["bible", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(text)
    return str(cache)


def _worker(spec: RunSpec, out: Path) -> None:
    """Train one run (in this process) and write its DemoResult JSON, with its CPU clock's figures, to ``out``."""
    import logging
    import random
    import time

    import lightning.pytorch as pl
    import torch
    from end_to_end_models import batch_size_schedule_class, model_factory
    from lightning.pytorch.callbacks import Callback

    from lightning_geo.callbacks import DynamicCurriculum
    from lightning_geo.demo.budget import BudgetedTraining
    from lightning_geo.demo.config import DemoConfig
    from lightning_geo.demo.run import load_demo_corpus, run_demo

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if spec.threads:
        torch.set_num_threads(spec.threads)

    class RandomOrderWarmup(DynamicCurriculum):
        """The control: each batch's length drawn at random from the linear warmup's lengths while it lasts."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._rng = random.Random(spec.seed)

        def _length_for(self, threshold: float) -> int:
            if threshold >= 1.0:
                return super()._length_for(1.0)
            return super()._length_for(self._start + (1.0 - self._start) * self._rng.random())

    class CpuClock(Callback):
        """CPU seconds in training batches, and per optimizer step whose micro-batches were all at full length.

        It moves itself just before ``BudgetedTraining`` in the Trainer's callbacks, so that it times the span the
        budget counts (not the validations that run in the budget's ``on_train_batch_end``).
        """

        def __init__(self) -> None:
            self.cpu_seconds = 0.0
            self.step_cpu: list[float] = []  # per optimizer step at full length
            self._start = 0.0
            self._step_cpu = 0.0
            self._step_full = True
            self._last_step = 0

        def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            trainer.callbacks.remove(self)
            budget = next(i for i, c in enumerate(trainer.callbacks) if isinstance(c, BudgetedTraining))
            trainer.callbacks.insert(budget, self)

        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                 batch_idx: int) -> None:
            self._start = time.process_time()

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            spent = time.process_time() - self._start
            self.cpu_seconds += spent
            self._step_cpu += spent
            self._step_full &= batch[0].shape[1] == pl_module.hparams["seq_len"]
            if trainer.global_step > self._last_step:  # this batch ended an optimizer step
                if self._step_full:
                    self.step_cpu.append(self._step_cpu / (trainer.global_step - self._last_step))
                self._last_step, self._step_cpu, self._step_full = trainer.global_step, 0.0, True

    arm = spec.parts()
    effective = spec.effective()
    config = DemoConfig(
        seq_len_warmup=effective["deadline"] or 0.3,
        corpus=corpus_path(spec.corpus), tokenizer="bpe", max_train_chars=spec.max_train_chars, budget=spec.budget,
        geo=arm.geo, exclude=(arm.exclude,) if arm.exclude else (), lr=spec.lr, warmup_share=spec.warmup_share,
        seed=spec.seed, val_points=spec.val_points, val_samples=spec.val_samples, precision=spec.precision,
        out=str(RUNS / "logs"), name=f"{spec.model}_{spec.corpus}_{spec.arm}_{spec.budget}_{spec.seed}",
        progress_bar=False, sample_chars=0,
    )
    plugins = []
    if arm.bf16_plugin:
        from lightning_geo.precision import PredictiveScalingPrecision

        plugins.append(PredictiveScalingPrecision("bf16-mixed"))
    clock = CpuClock()
    callbacks: list[Callback] = [clock]
    if arm.random_order:
        from lightning_geo.demo.run import seq_len_warmup_deadline

        callbacks.append(RandomOrderWarmup(mode="seq_len", pacing="linear", deadline=seq_len_warmup_deadline(config)))
    if arm.batch:
        callbacks.append(batch_size_schedule_class()())
    factory = model_factory(spec.model, muon=arm.muon)
    started = time.process_time()
    result = run_demo(config, load_demo_corpus(config), callbacks=callbacks, plugins=plugins, model_factory=factory)
    assert result is not None
    figures = json.loads(result.to_json())
    figures.update(cpu_seconds=clock.cpu_seconds, process_cpu_seconds=time.process_time() - started,
                   step_cpu_median=statistics.median(clock.step_cpu) if clock.step_cpu else None,
                   full_length_steps=len(clock.step_cpu), threads=torch.get_num_threads())
    out.write_text(json.dumps(figures, indent=1))


def run(spec: RunSpec, reuse: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """The result of ``spec``: from its run file when ``reuse`` and it exists, else trained in a fresh process."""
    path = RUNS / f"{spec.key()}.json"
    fresh = not (reuse and path.is_file())
    if fresh:
        RUNS.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if spec.threads:
            env.update(OMP_NUM_THREADS=str(spec.threads), MKL_NUM_THREADS=str(spec.threads))
        cmd = [sys.executable, __file__, "--worker", json.dumps(asdict(spec)), str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{spec} failed:\n{done.stderr[-3000:]}")
    result = json.loads(path.read_text())
    result["fresh"] = fresh
    cpu = result.get("cpu_seconds")
    log(f"  {spec.model:5} {spec.corpus:6} {spec.budget:>6} seed {spec.seed} {spec.arm:17} lr {spec.lr:.3g} warmup "
        f"{spec.warmup_share:.3g}: final {result['final_val_loss']:.4f}, {result['steps']} steps, "
        f"{result['tokens']:,} tokens, {result['tokens_per_second']:,.0f} tokens/s"
        + (f", {cpu:.1f} CPU s" if cpu is not None else "") + ("" if fresh else " (reused)"))
    return result


class Runner:
    """Runs specs in worker processes, ``parallel`` at a time in the order they are submitted, each distinct run
    (by :meth:`RunSpec.key`) once per invocation."""

    def __init__(self, *, parallel: int, reuse: bool, log: Callable[[str], None]) -> None:
        self.pool = ThreadPoolExecutor(max_workers=parallel)
        self.reuse = reuse
        self.log = log
        self.futures: dict[str, Future[dict[str, Any]]] = {}
        self._lock = Lock()

    def submit(self, spec: RunSpec) -> Future[dict[str, Any]]:
        with self._lock:
            key = spec.key()
            if key not in self.futures:
                self.futures[key] = self.pool.submit(run, spec, self.reuse, self.log)
            return self.futures[key]


@dataclass
class Comparison:
    """One arm against the same seed's plain run: to plain's final loss, in steps, tokens and seconds."""

    steps: float | None  # the arm's steps to plain's final loss (None: not reached)
    tokens: float | None
    seconds: float | None
    steps_x: float | None  # plain's steps to its final loss / the arm's
    tokens_x: float | None
    time_x: float | None
    final_ratio: float  # the arm's final loss / plain's
    plain_final: float
    arm_final: float
    train_seconds: float  # wall-clock seconds in training batches
    cpu_seconds: float | None  # CPU seconds in training batches (None: a run file from before they were measured)
    step_cpu: float | None  # median CPU seconds per optimizer step at full length
    step_cpu_x: float | None  # the arm's / plain's


def compare(plain: dict[str, Any], arm: dict[str, Any]) -> Comparison:
    from lightning_geo.demo.compare import first_reach

    target = plain["final_val_loss"]

    def reach(result: dict[str, Any], axis: int | None) -> float | None:
        xs = result["val_seconds"] if axis is None else [p[axis] for p in result["val_curve"]]
        return first_reach(xs, [p[2] for p in result["val_curve"]], target)

    def ratio(axis: int | None) -> tuple[float | None, float | None]:
        mine, base = reach(arm, axis), reach(plain, axis)
        return mine, base / mine if mine and base else None

    (steps, steps_x), (tokens, tokens_x), (seconds, time_x) = ratio(0), ratio(1), ratio(None)
    step_cpu, base_cpu = arm.get("step_cpu_median"), plain.get("step_cpu_median")
    return Comparison(
        steps=steps, tokens=tokens, seconds=seconds, steps_x=steps_x, tokens_x=tokens_x, time_x=time_x,
        final_ratio=arm["final_val_loss"] / target, plain_final=target, arm_final=arm["final_val_loss"],
        train_seconds=arm["train_seconds"], cpu_seconds=arm.get("cpu_seconds"), step_cpu=step_cpu,
        step_cpu_x=step_cpu / base_cpu if step_cpu and base_cpu else None,
    )


def _summary(values: Sequence[float | None]) -> str:
    reached = [v for v in values if v is not None]
    if not reached:
        return "not reached"
    text = f"{statistics.median(reached):.2f}x" if len(reached) == len(values) else "median n/a"
    spread = f" ({min(reached):.2f}-{max(reached):.2f})" if len(reached) > 1 else ""
    missing = f", {len(values) - len(reached)} not reached" if len(reached) < len(values) else ""
    return text + spread + missing


def _reach_cell(amounts: Sequence[float | None], ratios: Sequence[float | None], fmt: str) -> str:
    """``<median amount> / <ratio summary>``: what the arm took to plain's final loss, and its ratio to plain."""
    reached = [a for a in amounts if a is not None]
    if not reached:
        return "not reached"
    return f"{format(statistics.median(reached), fmt)} / {_summary(ratios)}"


def _median_or_dash(values: Sequence[float | None], fmt: str) -> str:
    known = [v for v in values if v is not None]
    return format(statistics.median(known), fmt) if known else "-"


@dataclass
class Sweep:
    """Every comparison of a sweep, by (model, corpus, budget, arm), and the learning rate each arm used."""

    rows: dict[tuple[str, str, str, str], list[Comparison]] = field(default_factory=dict)
    lrs: dict[tuple[str, str, str, str], str] = field(default_factory=dict)

    def add(self, where: tuple[str, str, str, str], comparison: Comparison) -> None:
        self.rows.setdefault(where, []).append(comparison)


@dataclass(frozen=True)
class Cell:
    """The arms and seeds of one model, corpus and budget."""

    model: str
    corpus: str
    budget: str
    arms: tuple[str, ...]  # plain first
    seeds: tuple[int, ...]
    tune: bool  # --tune-lr applies here


def _items(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, ``--quick`` applied and the arms checked (``parser.error`` on a bad one)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo", help=f"comma-separated, from {MODELS}")
    parser.add_argument("--budgets", default="30s,120s,480s,1920s", help="the demo's budget, 4x, 16x and 64x it")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--long-seeds", default="0", help="seeds at the largest budget ('' for --seeds)")
    parser.add_argument("--long-corpora", default=None, help="corpora at the largest budget (default: --corpora)")
    parser.add_argument("--corpora", default="stdlib,kjv")
    parser.add_argument("--arms", default=",".join(MAIN_ARMS), help="the arms at every budget (plain always runs)")
    parser.add_argument("--ablation-budget", default="480s", help="budget of the ablation arms ('' for none)")
    parser.add_argument("--ablation-corpora", default="stdlib")
    parser.add_argument("--ablation-base", default=ABLATION_BASE, help="the arm the ablation arms leave a part out of")
    parser.add_argument("--ablation-arms", default=",".join(ABLATIONS))
    parser.add_argument("--limit", action="append", default=[], metavar="CORPUS:BUDGET:SEEDS",
                        help="run only these seeds at this corpus and budget, e.g. kjv:120s:0 (repeatable)")
    parser.add_argument("--pacing-budgets", default="", help=f"more budgets at which {PACING_ARM} runs")
    parser.add_argument("--lr-plain", type=float, default=None)
    parser.add_argument("--lr-recipe", type=float, default=None)
    parser.add_argument("--lr-muon", type=float, default=None, help="GeoMuon's LR (default: the arm's AdamW LR)")
    parser.add_argument("--warmup-plain", type=float, default=None)
    parser.add_argument("--warmup-recipe", type=float, default=None)
    parser.add_argument("--tune-lr", type=int, default=0, metavar="N",
                        help="tune each arm's LR at each budget: N LRs on a log grid around its default, seed 0")
    parser.add_argument("--tune-step", type=float, default=2.0, help="ratio of neighbouring LRs of the grid")
    parser.add_argument("--tune-budgets", default="", help="budgets at which --tune-lr tunes (default: all)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time; above 1, one thread each")
    parser.add_argument("--precision", choices=("auto", "bf16-mixed", "32-true"), default="auto",
                        help="both arms' precision; auto: bf16-mixed on a CPU with bf16 instructions, else 32-true "
                        "(bf16 is emulated there, ~12x slower)")
    parser.add_argument("--val-points", type=int, default=12)
    parser.add_argument("--val-samples", type=int, default=256)
    parser.add_argument("--max-train-chars", type=int, default=None, help="BPE: characters encoded (default all)")
    parser.add_argument("--reuse", action="store_true", help="keep matching run files of earlier invocations")
    parser.add_argument("--plan", action="store_true", help="list the runs and their time; train nothing")
    parser.add_argument("--quick", action="store_true", help="smoke run of every code path in about a minute")
    parser.add_argument("--no-results-file", action="store_true", help="do not write benchmarks/results/")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    for name in _items(args.models):
        if name not in MODELS:
            parser.error(f"--models: unknown model {name!r}; choose from {MODELS}")
    if args.parallel < 1 or args.tune_lr < 0 or args.tune_step <= 1.0:
        parser.error("--parallel must be >= 1, --tune-lr >= 0 and --tune-step > 1")
    try:
        for arm in {*_items(args.arms), *_items(args.ablation_arms), args.ablation_base, PACING_ARM}:
            parse_arm(arm, args.ablation_base)
    except ValueError as error:
        parser.error(str(error))
    return args


def plan(args: argparse.Namespace) -> list[Cell]:
    """The cells of the sweep, in the order they run."""
    budgets, seeds = _items(args.budgets), [int(s) for s in _items(args.seeds)]
    long_seeds = [int(s) for s in _items(args.long_seeds)] or seeds
    corpora = _items(args.corpora)
    long_corpora = _items(args.long_corpora) or corpora
    limits = {tuple(item.split(":")[:2]): [int(s) for s in item.split(":")[2].split(",")] for item in args.limit}
    tune_budgets = _items(args.tune_budgets) or budgets
    cells = []
    for model in _items(args.models):
        for corpus in corpora:
            for budget in budgets:
                longest = budget == budgets[-1] and len(budgets) > 1
                if longest and corpus not in long_corpora:
                    continue
                arms = ["plain", *_items(args.arms)]
                if budget == args.ablation_budget and corpus in _items(args.ablation_corpora):
                    arms += [args.ablation_base, *_items(args.ablation_arms)]
                elif budget in _items(args.pacing_budgets) and corpus in _items(args.ablation_corpora):
                    arms.append(PACING_ARM)
                cell_seeds = limits.get((corpus, budget), long_seeds if longest else seeds)
                cells.append(Cell(model, corpus, budget, tuple(dict.fromkeys(arms)), tuple(cell_seeds),
                                  args.tune_lr > 0 and budget in tune_budgets))
    return cells


def lr_grid(center: float, n: int, step: float) -> list[float]:
    """``n`` learning rates, ``step`` apart on a log scale, centred on ``center`` (3 significant digits)."""
    return [float(f"{center * step ** (i - (n - 1) / 2):.3g}") for i in range(n)]


class Settings:
    """Each arm's default learning rate and warmup, and the RunSpec of a run."""

    def __init__(self, args: argparse.Namespace) -> None:
        from lightning_geo.demo.config import DEMO_LEARNING_RATES, DEMO_WARMUP_SHARES

        self.args = args
        self.lrs = {"plain": args.lr_plain or DEMO_LEARNING_RATES["plain"],
                    "recipe": args.lr_recipe or DEMO_LEARNING_RATES["geo"]}
        self.warmups = {"plain": DEMO_WARMUP_SHARES["plain"] if args.warmup_plain is None else args.warmup_plain,
                        "recipe": DEMO_WARMUP_SHARES["geo"] if args.warmup_recipe is None else args.warmup_recipe}
        self.threads = 1 if args.parallel > 1 else 0
        if args.precision == "auto":
            from lightning_geo.utils.cpu_precision import default_cpu_precision

            self.precision = default_cpu_precision()
        else:
            self.precision = args.precision

    def default_lr(self, arm: str) -> float:
        parts = parse_arm(arm, self.args.ablation_base)
        if parts.muon and self.args.lr_muon:
            return float(self.args.lr_muon)
        return self.lrs["recipe" if parts.geo else "plain"]

    def spec(self, cell: Cell, arm: str, seed: int, lr: float) -> RunSpec:
        warmup = self.warmups["recipe" if parse_arm(arm, self.args.ablation_base).geo else "plain"]
        return RunSpec(arm, cell.corpus, cell.budget, seed, lr, warmup_share=warmup, val_points=self.args.val_points,
                       val_samples=self.args.val_samples, model=cell.model, base=self.args.ablation_base,
                       threads=self.threads, max_train_chars=self.args.max_train_chars, precision=self.precision)


def _print_plan(cells: list[Cell], settings: Settings, log: Callable[[str], None]) -> None:
    from lightning_geo.demo.budget import Budget

    keys: set[str] = set()
    seconds = 0.0
    n = settings.args.tune_lr
    for cell in cells:
        seeds = [seed for seed in cell.seeds if not (cell.tune and seed == 0)]  # tuned: seed 0 is a tuning run
        specs = [settings.spec(cell, arm, seed, settings.default_lr(arm)) for seed in seeds for arm in cell.arms]
        if cell.tune:
            specs += [settings.spec(cell, arm, 0, lr) for arm in cell.arms
                      for lr in lr_grid(settings.default_lr(arm), n, settings.args.tune_step)]
        new = {s.key() for s in specs} - keys
        keys |= new
        budget = Budget.parse(cell.budget)
        seconds += len(new) * ((budget.amount if budget.unit == "seconds" else 0.0) + RUN_OVERHEAD_S)
        log(f"  {cell.model:5} {cell.corpus:6} {cell.budget:>6}: {len(new)} runs ({', '.join(cell.arms)}; seeds "
            f"{', '.join(map(str, cell.seeds))}{f'; {n} LRs tuned per arm' if cell.tune else ''})")
    parallel = settings.args.parallel
    log(f"{len(keys)} runs, about {seconds / 3600 / parallel:.1f} h at {parallel} run(s) at a time on 2 CPU cores "
        f"(the budgets + {RUN_OVERHEAD_S:g} s per run)")


def main() -> None:
    args = parse_args()
    if args.worker:
        _worker(RunSpec(**json.loads(args.worker[0])), Path(args.worker[1]))
        return
    from bench_common import Transcript, code_version, verdict
    from bench_harness import tune_lr

    from lightning_geo.demo.budget import Budget

    log = Transcript()
    log(f"# benchmarks/end_to_end.py: {' '.join(sys.argv[1:]) or '(defaults)'}; code {code_version()}")
    settings = Settings(args)
    cells = plan(args)
    muon = f"{args.lr_muon:g}" if args.lr_muon else "the AdamW arm's"
    log(f"default learning rates: plain {settings.lrs['plain']:g}, recipe {settings.lrs['recipe']:g}, GeoMuon "
        f"{muon}; LR warmup (share of the budget): plain {settings.warmups['plain']:g}, recipe "
        f"{settings.warmups['recipe']:g}; {args.parallel} run(s) at a time"
        + (", one thread each" if settings.threads else "") + f"; both arms in {settings.precision}")
    if args.plan:
        _print_plan(cells, settings, log)
        return
    runner = Runner(parallel=args.parallel, reuse=args.reuse, log=log)
    grids: dict[tuple[Cell, str], list[float]] = {}
    for cell in cells:  # every tuning run first, LR by LR with the arms interleaved
        if cell.tune:
            for arm in cell.arms:
                grids[cell, arm] = lr_grid(settings.default_lr(arm), args.tune_lr, args.tune_step)
            for i in range(args.tune_lr):
                for arm in cell.arms:
                    runner.submit(settings.spec(cell, arm, 0, grids[cell, arm][i]))
    sweep = Sweep()
    chosen: dict[tuple[Cell, str], float] = {}
    for cell in cells:  # the seeds of a cell as soon as its tuning is done
        for arm in cell.arms:
            lr = settings.default_lr(arm)
            if cell.tune:
                def trial(lr: float, cell: Cell = cell, arm: str = arm) -> dict[str, Any]:
                    return runner.submit(settings.spec(cell, arm, 0, lr)).result()

                def score(result: dict[str, Any]) -> float:
                    loss = result["final_val_loss"]
                    return -loss if math.isfinite(loss) else -math.inf

                tuned = tune_lr(trial, grids[cell, arm], score=score)
                lr = tuned.best
                log(f"  tuned {cell.model} {cell.corpus} {cell.budget} {arm}: lr {lr:.3g} of "
                    f"{', '.join(f'{x:.3g}' for x in grids[cell, arm])}" + (" (at an edge)" if lr in (
                        min(grids[cell, arm]), max(grids[cell, arm])) else ""))
            chosen[cell, arm] = lr
            sweep.lrs[cell.model, cell.corpus, cell.budget, arm] = f"{lr:.3g}" + (" (tuned)" if cell.tune else "")
        for seed in cell.seeds:
            for arm in cell.arms:
                runner.submit(settings.spec(cell, arm, seed, chosen[cell, arm]))
    for cell in cells:
        for seed in cell.seeds:
            results = {arm: runner.submit(settings.spec(cell, arm, seed, chosen[cell, arm])).result()
                       for arm in cell.arms}
            for arm in cell.arms:
                sweep.add((cell.model, cell.corpus, cell.budget, arm), compare(results["plain"], results[arm]))
    runner.pool.shutdown()
    fresh = sum(1 for f in runner.futures.values() if f.result()["fresh"])
    mark = log.mark()
    log("")
    log(f"{len(runner.futures)} runs ({len(runner.futures) - fresh} reused); learning rates "
        + (f"tuned per arm and budget ({args.tune_lr} LRs, x{args.tune_step:g} apart, seed 0)" if args.tune_lr
           else "the defaults above"))
    log("")
    log("| model | corpus | budget | arm | lr | seeds | steps to plain's final loss / x | tokens / x | seconds / x | "
        "final loss / plain's | train s (wall / CPU) | CPU ms per step at full length / x plain | plain final |")
    log("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for where, rows in sweep.rows.items():
        model, corpus, budget, arm = where
        finals = [c.final_ratio for c in rows]
        wall, cpu = (_median_or_dash([c.train_seconds for c in rows], ".0f"),
                     _median_or_dash([c.cpu_seconds for c in rows], ".0f"))
        step = _median_or_dash([None if c.step_cpu is None else 1e3 * c.step_cpu for c in rows], ".1f")
        step_x = [c.step_cpu_x for c in rows]
        log(f"| {model} | {corpus} | {budget} | {arm} | {sweep.lrs[where]} | {len(rows)} | "
            f"{_reach_cell([c.steps for c in rows], [c.steps_x for c in rows], ',.0f')} | "
            f"{_reach_cell([c.tokens for c in rows], [c.tokens_x for c in rows], ',.0f')} | "
            f"{_reach_cell([c.seconds for c in rows], [c.time_x for c in rows], '.1f')} | "
            f"{statistics.median(finals):.4f} ({min(finals):.4f}-{max(finals):.4f}) | {wall} / {cpu} | "
            f"{step} / {_summary(step_x) if any(x is not None for x in step_x) else '-'} | "
            f"{statistics.median(c.plain_final for c in rows):.4f} |")
    log("")
    budgets = _items(args.budgets)
    base_seconds = Budget.parse(budgets[0]).amount

    def per_seed(values: Sequence[float | None], digits: int = 2) -> str:
        return ", ".join("-" if v is None else f"{v:.{digits}f}" for v in values)

    for cell in cells:
        where = (cell.model, cell.corpus, cell.budget)
        multiple = Budget.parse(cell.budget).amount / base_seconds
        recipe_rows = sweep.rows.get((*where, "recipe"), [])
        if recipe_rows and cell.budget == budgets[0]:
            times = [c.time_x for c in recipe_rows]
            met = (all(t is not None for t in times) and statistics.median(times) >= 1.3  # type: ignore[type-var]
                   and min(times) >= 1.1 and all(c.final_ratio < 1.0 for c in recipe_rows))  # type: ignore[type-var]
            for line in verdict(met, f"{' '.join(where)}: recipe >= 1.3x time to plain's final loss (median), >= 1.1x "
                                "every seed, lower final loss every seed",
                                [f"time x per seed: {per_seed(times)}; final ratio per seed: "
                                 f"{per_seed([c.final_ratio for c in recipe_rows], 4)}"]):
                log(line)
        base_rows = sweep.rows.get((*where, args.ablation_base), [])
        for arm in _items(args.ablation_arms) if cell.budget == args.ablation_budget else []:
            rows = sweep.rows.get((*where, arm), [])
            if not rows or not base_rows:
                continue
            pairs = [(b.time_x, a.time_x) for b, a in zip(base_rows, rows, strict=True)]
            earns = all(a is None or (b is not None and b > a) for b, a in pairs)
            log(f"ablation {' '.join(where)} {arm}: time x {per_seed([a for _, a in pairs])} vs "
                f"{args.ablation_base}'s {per_seed([b for b, _ in pairs])}: "
                + (f"{args.ablation_base} is faster on every seed" if earns
                   else "the arm matches or beats it on some seed"))
        if multiple < 16:
            continue
        if recipe_rows:
            met = all(c.final_ratio <= 1.005 for c in recipe_rows)
            for line in verdict(met, f"{' '.join(where)}: recipe's final loss within 0.5% of plain's",
                                [f"final ratio per seed: {per_seed([c.final_ratio for c in recipe_rows], 4)}; time x: "
                                 f"{per_seed([c.time_x for c in recipe_rows])}"]):
                log(line)
        for arm in NEW_PART_ARMS:
            rows = sweep.rows.get((*where, arm), [])
            if rows:
                for line in verdict(all(c.final_ratio < 1.0 for c in rows),
                                    f"{' '.join(where)}: {arm} ends lower than plain on every seed",
                                    [f"final ratio per seed: {per_seed([c.final_ratio for c in rows], 4)}; steps x: "
                                     f"{per_seed([c.steps_x for c in rows])}; time x: "
                                     f"{per_seed([c.time_x for c in rows])}"]):
                    log(line)
    if not args.no_results_file:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(log.lines[:2]) + "\n" + log.since(mark) + "\n")
        log(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
