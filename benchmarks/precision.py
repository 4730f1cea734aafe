"""Does PredictiveScalingPrecision train in fp16 like fp32, without the skips and underflow of GradScaler?

    python benchmarks/precision.py [--device cpu|cuda] [--seeds 3] [--steps N] [--tasks a,a_high,b,c]
                                   [--lr LR] [--quick] [--out benchmarks/results/precision_<device>.txt]

**The claims under test.** ``PredictiveScalingPrecision`` (fp16 autocast whose loss scale is predicted
from the gradient amax history instead of probed by overflows, optionally per transformer block, with
modules whose fp16 forward overflows promoted to fp32) (1) skips no step on ordinary training, where
Lightning's ``16-mixed`` (``torch.amp.GradScaler``) skips several; (2) with per-block scales, flushes
at least 5x fewer fp16 activation gradients to zero in the worst layer than ``16-mixed``; (3) ends
within 0.5% of fp32's validation loss; (4) keeps training when a module's fp16 forward overflows,
where ``16-mixed`` fails, ending within 1% of fp32; (5) costs at most 5% step time over ``16-mixed``
(on CPU). The script prints each target as MET or MISSED with the numbers behind it.

**Arms**, run on the same data and initialisation: ``fp32`` (``precision="32-true"``); ``16-mixed``
(Lightning's ``MixedPrecision("16-mixed", device)``, i.e. ``GradScaler`` at its defaults: initial
scale 2**16, halved and the step skipped on inf/NaN, doubled after 2000 clean steps; on CPU it has to
be given as a plugin, since ``precision="16-mixed"`` turns into bf16 there); ``GEO global``
(``PredictiveScalingPrecision("16-mixed", per_block=False)``) and ``GEO per-block``
(``PredictiveScalingPrecision("16-mixed")``), both otherwise at their defaults.

**Tasks** (the demo's char-level GPT, ``lightning_geo.demo.model.CharLanguageModel``, trained on the
Python standard library's sources, ``load_corpus(None)``; AdamW, linear warmup then cosine decay, no
gradient clipping; the final validation loss is the mean loss in nats per character on a fixed set of
validation windows, computed under each arm's own precision):

* ``a``: mean cross-entropy at the normal LR. The normal LR is tuned for fp32 on seed 0 over
  {1e-3, 3e-3, 1e-2} (best final validation loss; that run is reused as fp32's seed-0 run) and used
  for every arm, since the question is whether fp16 matches fp32 (``--lr`` fixes it, skipping the tuning).
* ``a_high``: the same at LR 0.02 (gradient spikes).
* ``b``: the training loss is the cross-entropy *summed* over every token of the batch (gradients
  batch x seq_len times larger; Adam is scale-invariant, so the normal LR still fits); validation
  reports the usual mean loss.
* ``c``: block 0's MLP starts with a Linear whose output is multiplied by a fixed gain of 2**18
  (activations of order 1e5, beyond fp16's 65504), followed by a LayerNorm: in fp16 that output is inf
  and the LayerNorm turns it into NaN. No loss scale can fix a forward overflow: GradScaler skips every
  step, halving its scale to nothing; GEO's forward-overflow probe should move that Linear to fp32
  after the first step.

Default sizes: CPU 2 blocks, width 64, 4 heads, 64 characters of context, batch 16, 250 steps (25 of
warmup), 128 validation windows; CUDA 4 blocks, width 128, 128 characters, batch 32, 600 steps (60),
256 windows. CPU float16 autocast is emulated (its matrix products ran ~10x slower than float32 on the
test machine), so the default CPU run (4 tasks x 4 arms x 3 seeds + 2 LR-tuning runs) takes about
35 minutes on 2 cores. ``--quick`` is a smoke test (a tiny model, 40 steps, 1 seed, under a minute on CPU).

**Method.** Every run is a Lightning ``Trainer`` (no logger, checkpointing, progress bar, model summary
or sanity validation; validation once, after training), one torch thread, seeded with
``lightning.seed_everything(seed)``; seeds 0..N-1, and for each task and seed the four arms run back
to back, so a slow phase of a shared machine hits every arm alike (fp32 first, then the fp16 arms in an
order that rotates with the seed). A callback measures:

* *skipped steps*: training steps in which the optimizer's ``step`` did not run (a post-step hook on
  the torch optimizer): ``GradScaler`` skips inside ``scaler.step``, GEO does not call it. For
  ``16-mixed`` this is the count of scale drops at ``scaler.update()`` (read with ``get_scale()`` at the
  start and end of each step, also recorded) as long as the scale is above 0; GEO's own
  ``plugin.skipped_steps`` is checked against it.
* *underflow*: on sampled steps (every 25th from step 25; every 10th with ``--quick``) a separate
  ``lightning_geo.precision.UnderflowProbe`` on the LightningModule, armed only on those steps,
  records the share of exactly-zero elements in the fp16 gradient arriving at each Linear's output;
  each layer's share is averaged over the samples, then the mean over layers and the worst layer are
  reported. It is measured the same way in every fp16 arm. Caveat: ``UnderflowProbe`` counts exact
  zeros of the fp16 output gradients of Linear layers, so structural zeros count too, equally in every
  arm: the query gradient at position 0 of causal attention is zero (a softmax over one key is
  constant), 1/(3 x seq_len) of each ``attn.qkv`` output gradient, and a saturated GELU passes exact
  zeros to ``mlp.0``. Compare arms, not absolute values; the per-layer table shows where the zeros are.
  In the fp32 arm the same probe counts zeros of the float32 gradients, for reference (structural
  zeros, though roundoff leaves some of the attention ones as tiny non-zero values in fp32).
  Step 0 is not sampled: GEO's first step runs at ``init_scale=1`` before any amax is known.
* *step time*: wall time from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward,
  unscaling, optimizer step; ``torch.cuda.synchronize()`` before each clock read on CUDA), median over
  the steps from step 10 on, sampled steps left out.

**Reading the table.** One row per task and arm. *skipped*: median over seeds [per seed]. *uf mean* /
*uf worst*: sampled underflow share, mean over Linear layers and worst layer, median over seeds
(fp32 row: zeros of its float32 gradients). *val loss*: final validation loss, median and min..max over seeds;
*vs fp32*: the median's relative gap to fp32's median (+ is worse). *step ms*: median over seeds of
the per-run median step time; *x 16-mixed*: median over seeds of the ratio to the 16-mixed run of the
same seed (back-to-back runs). *log2 scale*: the loss scale at the end of seed 0's run, log2 (per-block:
head scale | block scales min..max). After the table: the LR tuning, the zero share of every layer,
the modules GEO promoted to fp32 on task c, and each target as MET or MISSED with its numbers. The
validation target counts a GEO arm as within 0.5% when its median is at most 0.5% *worse* than fp32's.
The step-time target is judged on the median of the per-seed ratios of tasks a, a_high and b together
(3 per task are too few on a shared machine; on c, 16-mixed skips every optimizer step, so its steps
are shorter); the thread CPU time ratio is printed beside it as a check on machine load.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from bench_common import (
    Transcript,
    by_seed,
    code_version,
    command_line,
    keep_freed_memory,
    median,
    quiet_lightning,
    quiet_trainer,
    spread,
    verdict,
    worse_by,
    write_results,
)
from bench_harness import rotated, run_seeds, tune_lr
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from lightning_geo.demo.corpus import Corpus, load_corpus
from lightning_geo.demo.data import CharDataModule
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.precision import LossScaleCollapseError, PredictiveScalingPrecision, UnderflowProbe
from lightning_geo.precision.underflow import summarize_underflow
from lightning_geo.utils.table import format_table

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FP32, MIXED, GEO_GLOBAL, GEO_BLOCK = "fp32", "16-mixed", "GEO global", "GEO per-block"
ARMS = (FP32, MIXED, GEO_GLOBAL, GEO_BLOCK)
GEO_ARMS = (GEO_GLOBAL, GEO_BLOCK)
TASKS = ("a", "a_high", "b", "c")
TASK_TITLES = {
    "a": "char LM, mean loss, normal LR",
    "a_high": "char LM, mean loss, high LR",
    "b": "char LM, token-summed loss, normal LR",
    "c": "char LM with a Linear whose fp16 output overflows (gain 2**18, then LayerNorm), normal LR",
}
LR_GRID = (1e-3, 3e-3, 1e-2)
HIGH_LR = 0.02
HOT_GAIN = 2.0**18
THREADS = 1
TIMING_SKIP = 10  # first steps left out of the step-time median
# Targets
UNDERFLOW_FACTOR = 5.0
VAL_TOLERANCE = 0.005
VAL_TOLERANCE_C = 0.01
OVERHEAD_TARGET = 0.05


@dataclass(frozen=True)
class Config:
    n_layer: int
    n_head: int
    n_embd: int
    seq_len: int
    batch_size: int
    steps: int
    warmup: int
    val_samples: int
    sample_every: int  # underflow sample interval, in steps

    def describe(self) -> str:
        return (
            f"CharGPT {self.n_layer} blocks x width {self.n_embd} ({self.n_head} heads), context {self.seq_len}, "
            f"batch {self.batch_size}, {self.steps} steps (warmup {self.warmup}), {self.val_samples} val windows, "
            f"underflow sampled every {self.sample_every} steps"
        )


CONFIGS = {
    "cpu": Config(n_layer=2, n_head=4, n_embd=64, seq_len=64, batch_size=16, steps=250, warmup=25, val_samples=128,
                  sample_every=25),
    "cuda": Config(n_layer=4, n_head=4, n_embd=128, seq_len=128, batch_size=32, steps=600, warmup=60,
                   val_samples=256, sample_every=25),
}  # fmt: skip
QUICK = Config(n_layer=2, n_head=2, n_embd=32, seq_len=32, batch_size=8, steps=40, warmup=5, val_samples=16,
               sample_every=10)  # fmt: skip


# ------------------------------------------------------------------------------------------ model
class HotLinear(nn.Linear):
    """A Linear whose output is multiplied by a fixed gain: activations far beyond fp16's range."""

    def __init__(self, in_features: int, out_features: int, gain: float) -> None:
        super().__init__(in_features, out_features)
        self.gain = gain
        nn.init.normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.gain


class BenchLM(CharLanguageModel):
    """The demo model, optionally with a token-summed training loss (task b) or an overflowing Linear (task c)."""

    def __init__(self, vocab: str, *, sum_loss: bool = False, hot_gain: float | None = None, **kwargs: Any) -> None:
        super().__init__(vocab, **kwargs)
        self.sum_loss = sum_loss
        if hot_gain is not None:
            block = self.model.blocks[0]
            width = block.mlp[0].out_features
            hot = HotLinear(self.config.n_embd, width, hot_gain)
            block.mlp = nn.Sequential(hot, nn.LayerNorm(width), *list(block.mlp)[1:])

        self.val_sums = torch.zeros(2)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum" if self.sum_loss else "mean")

    # Validation: a plain sum, so a NaN stays a NaN (torchmetrics' MeanMetric would drop it with a warning).
    def on_validation_epoch_start(self) -> None:
        self.val_sums = torch.zeros(2, device=self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        loss = F.cross_entropy(self(x).float().flatten(0, 1), y.flatten(), reduction="sum")
        self.val_sums += torch.stack([loss.detach(), loss.new_tensor(float(y.numel()))])

    def on_validation_epoch_end(self) -> None:
        pass

    @property
    def final_val_loss(self) -> float:
        total, count = self.val_sums.tolist()
        return total / count if count else math.nan


# ------------------------------------------------------------------------------------ measurement
class Recorder(pl.Callback):
    """Step times, skipped steps (optimizer.step not run), GradScaler scale drops and sampled underflow."""

    def __init__(self, arm: str, sample_every: int, cuda: bool) -> None:
        self.arm = arm
        self.sample_every = sample_every
        self.cuda = cuda
        self.step_seconds: list[float] = []
        self.step_cpu_seconds: list[float] = []  # this thread's CPU time (less sensitive to a loaded machine)
        self.samples: list[dict[str, float]] = []
        self.skipped = 0
        self.skipped_at: list[int] = []
        self.scale_drops = 0
        self.batches = 0
        self._probe: UnderflowProbe | None = None
        self._stepped = 0
        self._stepped_before = 0
        self._scale_before: float | None = None
        self._sampled = False
        self._start = 0.0
        self._start_cpu = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dtype = torch.float32 if self.arm == FP32 else torch.float16
        self._probe = UnderflowProbe(pl_module, dtype=dtype)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(self._on_optimizer_step)

    def _on_optimizer_step(self, *args: Any) -> None:
        self._stepped += 1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._probe is not None:
            self._probe.remove()

    @staticmethod
    def _scaler(trainer: pl.Trainer) -> Any:
        return getattr(trainer.precision_plugin, "scaler", None)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        scaler = self._scaler(trainer)
        self._scale_before = float(scaler.get_scale()) if scaler is not None else None
        self._stepped_before = self._stepped
        self._sampled = i > 0 and i % self.sample_every == 0
        if self._probe is not None:
            self._probe.armed = self._sampled
        if self.cuda:
            torch.cuda.synchronize()
        self._start_cpu = time.thread_time()
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._start
        elapsed_cpu = time.thread_time() - self._start_cpu
        self.batches += 1
        if i >= TIMING_SKIP and not self._sampled:
            self.step_seconds.append(elapsed)
            self.step_cpu_seconds.append(elapsed_cpu)
        if self._stepped == self._stepped_before:
            self.skipped += 1
            self.skipped_at.append(i)
        scaler = self._scaler(trainer)
        if scaler is not None and self._scale_before is not None and float(scaler.get_scale()) < self._scale_before:
            self.scale_drops += 1
        if self._sampled and self._probe is not None:
            self._probe.armed = False
            fractions = self._probe.take()
            if fractions:
                self.samples.append(fractions)

    def underflow_layers(self) -> dict[str, float]:
        """Each layer's zero share, averaged over the samples."""
        layers = sorted({name for sample in self.samples for name in sample})
        return {name: statistics.fmean(s[name] for s in self.samples if name in s) for name in layers}


# ------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    task: str
    arm: str
    seed: int
    lr: float
    val_loss: float = math.nan
    skipped: int = 0
    skipped_at: list[int] = field(default_factory=list)
    scale_drops: int = 0
    plugin_skipped: int | None = None
    batches: int = 0
    underflow_mean: float = math.nan
    underflow_worst: float = math.nan
    worst_layer: str = ""
    underflow_layers: dict[str, float] = field(default_factory=dict)
    step_ms: float = math.nan
    step_cpu_ms: float = math.nan
    log2_scale: str = "-"
    promoted: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


def _log2(value: float) -> str:
    if value <= 0:
        return "-inf"
    exponent = math.log2(value)
    return f"{exponent:.0f}" if exponent == round(exponent) else f"{exponent:.2f}"


def make_plugin(arm: str, device: str) -> MixedPrecision | None:
    if arm == MIXED:
        return MixedPrecision("16-mixed", device)
    if arm == GEO_GLOBAL:
        return PredictiveScalingPrecision("16-mixed", device=device, per_block=False)
    if arm == GEO_BLOCK:
        return PredictiveScalingPrecision("16-mixed", device=device)
    return None


def _final_scale(arm: str, plugin: MixedPrecision | None) -> str:
    if isinstance(plugin, PredictiveScalingPrecision):
        scales = plugin.block_scales
        head = _log2(plugin.scale)
        blocks = [s for name, s in scales.items() if name != "head"]
        if arm == GEO_BLOCK and blocks:
            return f"{head} | {_log2(min(blocks))}..{_log2(max(blocks))}"
        return head
    if plugin is not None and plugin.scaler is not None:
        return _log2(float(plugin.scaler.get_scale()))
    return "-"


class Bench:
    def __init__(self, corpus: Corpus, config: Config, device: str) -> None:
        self.corpus = corpus
        self.config = config
        self.device = device

    def run(self, task: str, arm: str, seed: int, lr: float) -> Run:
        cfg = self.config
        started = time.perf_counter()
        pl.seed_everything(seed, verbose=False)
        model = BenchLM(
            self.corpus.vocab,
            sum_loss=task == "b",
            hot_gain=HOT_GAIN if task == "c" else None,
            seq_len=cfg.seq_len,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
            lr=lr,
            warmup_steps=cfg.warmup,
            max_steps=cfg.steps,
        )
        data = CharDataModule(self.corpus, seq_len=cfg.seq_len, batch_size=cfg.batch_size, val_samples=cfg.val_samples)
        plugin = make_plugin(arm, self.device)
        recorder = Recorder(arm, cfg.sample_every, cuda=self.device == "cuda")
        precision: dict[str, Any] = {"plugins": [plugin]} if plugin is not None else {"precision": "32-true"}
        trainer = quiet_trainer(accelerator="gpu" if self.device == "cuda" else "cpu", max_steps=cfg.steps,
                                callbacks=[recorder], **precision)
        result = Run(task=task, arm=arm, seed=seed, lr=lr)
        try:
            trainer.fit(model, train_dataloaders=data.train_dataloader())
            trainer.validate(model, dataloaders=data.val_dataloader(), verbose=False)
            result.val_loss = model.final_val_loss
        except LossScaleCollapseError as error:
            result.error = f"LossScaleCollapseError: {error}"
        result.skipped = recorder.skipped
        result.skipped_at = recorder.skipped_at
        result.scale_drops = recorder.scale_drops
        result.batches = recorder.batches
        if recorder.step_seconds:
            result.step_ms = 1000 * statistics.median(recorder.step_seconds)
            result.step_cpu_ms = 1000 * statistics.median(recorder.step_cpu_seconds)
        result.underflow_layers = recorder.underflow_layers()
        result.underflow_mean, result.underflow_worst, result.worst_layer = summarize_underflow(result.underflow_layers)
        result.log2_scale = _final_scale(arm, plugin)
        if isinstance(plugin, PredictiveScalingPrecision):
            result.plugin_skipped = plugin.skipped_steps
            result.promoted = list(plugin.promoted_modules)
        result.seconds = time.perf_counter() - started
        return result


# ---------------------------------------------------------------------------------------- summary
def _fmt(value: float, digits: int = 4) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _pct(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.{digits}f}%"


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Run]]  # (task, arm) -> runs by seed

    def of(self, task: str, arm: str) -> list[Run]:
        return self.runs.get((task, arm), [])

    def val(self, task: str, arm: str) -> float:
        return median([r.val_loss for r in self.of(task, arm)])

    def gap(self, task: str, arm: str) -> float:
        return worse_by(self.val(task, arm), self.val(task, FP32), higher_is_better=False)

    def skipped(self, task: str, arm: str) -> float:
        return statistics.median(r.skipped for r in self.of(task, arm))

    def underflow(self, task: str, arm: str) -> tuple[float, float]:
        runs = self.of(task, arm)
        return median([r.underflow_mean for r in runs]), median([r.underflow_worst for r in runs])

    def step_ms(self, task: str, arm: str) -> float:
        return median([r.step_ms for r in self.of(task, arm)])

    def step_ratios(self, task: str, arm: str, cpu_time: bool = False) -> list[float]:
        """Per seed: this arm's step time / the same seed's 16-mixed step time (wall or thread CPU time)."""
        key = "step_cpu_ms" if cpu_time else "step_ms"
        base = {r.seed: getattr(r, key) for r in self.of(task, MIXED)}
        return [getattr(r, key) / base[r.seed] for r in self.of(task, arm) if r.seed in base]

    def step_ratio(self, task: str, arm: str, cpu_time: bool = False) -> float:
        """Median over seeds of :meth:`step_ratios`."""
        ratios = self.step_ratios(task, arm, cpu_time)
        return median(ratios) if ratios else math.nan

    def layer_table(self, task: str) -> str:
        """Each Linear layer's zero share (averaged over samples), median over seeds, one column per arm."""
        arms = [arm for arm in ARMS if self.of(task, arm)]
        layers = sorted({name for arm in arms for r in self.of(task, arm) for name in r.underflow_layers})
        rows = []
        for name in layers:
            cells = []
            for arm in arms:
                values = [r.underflow_layers.get(name, math.nan) for r in self.of(task, arm)]
                cells.append(_pct(median(values)))
            rows.append([name, *cells])
        return format_table(["layer", *arms], rows)

    def table(self, tasks: Sequence[str]) -> str:
        headers = ["task", "arm", "LR", "skipped", "uf mean", "uf worst", "val loss", "min..max", "vs fp32",
                   "step ms", "x 16-mixed", "log2 scale"]  # fmt: skip
        rows = []
        for task in tasks:
            for arm in ARMS:
                runs = self.of(task, arm)
                if not runs:
                    continue
                losses = [r.val_loss for r in runs]
                uf_mean, uf_worst = self.underflow(task, arm)
                skipped = "-" if arm == FP32 else f"{self.skipped(task, arm):g} [{_skips_text(runs)}]"
                gap = self.gap(task, arm)
                rows.append([
                    task,
                    arm,
                    f"{runs[0].lr:g}",
                    skipped,
                    _pct(uf_mean),
                    _pct(uf_worst),
                    _fmt(self.val(task, arm)),
                    spread(losses),
                    "-" if arm == FP32 else ("nan" if math.isnan(gap) else f"{100 * gap:+.2f}%"),
                    _fmt(self.step_ms(task, arm), 2),
                    _fmt(self.step_ratio(task, arm), 3),
                    runs[0].log2_scale,
                ])  # fmt: skip
        return format_table(headers, rows)


def _skips_text(runs: Sequence[Run]) -> str:
    return by_seed(r.skipped for r in runs)


def _skipped_where(runs: Sequence[Run]) -> str:
    where = [f"seed {r.seed}: {r.skipped_at[:6]}{'...' if len(r.skipped_at) > 6 else ''}" for r in runs if r.skipped_at]
    return f" [at steps {'; '.join(where)}]" if where else ""


def _worst_layer(runs: Sequence[Run]) -> str:
    return runs[0].worst_layer.removeprefix("model.") if runs and runs[0].worst_layer else "-"


def target_report(res: Results, tasks: Sequence[str], config: Config, device: str) -> list[str]:
    """One MET/MISSED line per target, each followed by the numbers it was judged on."""
    lines: list[str] = []
    ab = [t for t in ("a", "a_high", "b") if t in tasks]

    # 1. no skipped steps
    details, ok = [], True
    for task in ab:
        ours = {arm: [r.skipped for r in res.of(task, arm)] for arm in GEO_ARMS}
        mixed = [r.skipped for r in res.of(task, MIXED)]
        ok &= all(max(v) == 0 for v in ours.values())
        note = "" if max(mixed) > 0 else " (16-mixed skips none here either)"
        details.append(
            f"task {task}: 16-mixed {_skips_text(res.of(task, MIXED))} (median {statistics.median(mixed):g}){note}"
            f"{_skipped_where(res.of(task, MIXED))}; "
            + "; ".join(f"{arm} {_skips_text(res.of(task, arm))}{_skipped_where(res.of(task, arm))}" for arm in ours)
        )
    lines += verdict(ok if ab else None, "zero skipped steps on tasks a, a_high and b for both GEO arms "
                      "(per seed), where 16-mixed skips several", details)  # fmt: skip

    # 2. underflow
    details, ok = [], True
    a_tasks = [t for t in ("a", "a_high") if t in tasks]
    for task in a_tasks:
        _, ours = res.underflow(task, GEO_BLOCK)
        _, mixed = res.underflow(task, MIXED)
        _, glob = res.underflow(task, GEO_GLOBAL)
        _, fp32 = res.underflow(task, FP32)
        factor = mixed / ours if ours > 0 else math.inf
        ok &= factor >= UNDERFLOW_FACTOR
        details.append(
            f"task {task}: worst layer 16-mixed {_pct(mixed)} ({_worst_layer(res.of(task, MIXED))}), GEO per-block "
            f"{_pct(ours)} ({_worst_layer(res.of(task, GEO_BLOCK))}): {factor:.2f}x lower; GEO global {_pct(glob)}; "
            f"fp32's exact zeros {_pct(fp32)} ({_worst_layer(res.of(task, FP32))})"
        )
    if a_tasks:
        details.append(
            f"structural zeros alone: 1/(3 x seq_len) = {_pct(1 / (3 * config.seq_len))} of each attn.qkv output "
            "gradient (the query gradient at position 0); see the per-layer table"
        )
    lines += verdict(ok if a_tasks else None, f"worst-layer underflow at least {UNDERFLOW_FACTOR:g}x lower than "
                      "16-mixed with per-block scaling (tasks a, a_high)", details)  # fmt: skip

    # 3. validation loss
    details, ok = [], True
    for task in ab:
        parts = []
        for arm in (MIXED, *GEO_ARMS):
            gap = res.gap(task, arm)
            if arm in GEO_ARMS:
                ok &= not math.isnan(gap) and gap <= VAL_TOLERANCE
            parts.append(f"{arm} {_fmt(res.val(task, arm))} ({100 * gap:+.2f}%)")
        details.append(f"task {task}: fp32 {_fmt(res.val(task, FP32))}; " + ", ".join(parts))
    if ab:
        spread = [max(r.val_loss for r in res.of(t, FP32)) / min(r.val_loss for r in res.of(t, FP32)) - 1 for t in ab]
        details.append(f"(for scale: fp32's own max/min over seeds differs by {100 * max(spread):.2f}% at most)")
    lines += verdict(ok if ab else None, f"validation loss within {100 * VAL_TOLERANCE:g}% of fp32: median over "
                      "seeds at most that much worse, on tasks a, a_high and b, both GEO arms", details)  # fmt: skip

    # 4. forward overflow
    if "c" in tasks:
        mixed_gap = res.gap("c", MIXED)
        mixed_runs = res.of("c", MIXED)
        mixed_failed = math.isnan(mixed_gap) or mixed_gap > VAL_TOLERANCE_C
        ours_ok = all(not math.isnan(res.gap("c", arm)) and res.gap("c", arm) <= VAL_TOLERANCE_C for arm in GEO_ARMS)
        details = [
            f"fp32 {_fmt(res.val('c', FP32))}; 16-mixed {_fmt(res.val('c', MIXED))}, skipped "
            f"{_skips_text(mixed_runs)} of {mixed_runs[0].batches} steps, final log2 scale "
            f"{mixed_runs[0].log2_scale} (seed 0)",
            *(
                f"{arm}: {_fmt(res.val('c', arm))} ({100 * res.gap('c', arm):+.2f}% vs fp32), skipped "
                f"{_skips_text(res.of('c', arm))}"
                for arm in GEO_ARMS
            ),
        ]
        lines += verdict(mixed_failed and ours_ok, f"task c: 16-mixed fails or degrades (> {100 * VAL_TOLERANCE_C:g}% "
                          f"worse than fp32) while both GEO arms end within {100 * VAL_TOLERANCE_C:g}% of fp32",
                          details)  # fmt: skip
    else:
        lines += verdict(None, "task c: 16-mixed fails while GEO trains within 1% of fp32", [])

    # 5. step time: judged on every paired ratio of tasks a, a_high and b together (3 per task are too few)
    details, ok = [], True
    for arm in GEO_ARMS:
        pooled = [v for task in ab for v in res.step_ratios(task, arm)]
        pooled_median = median(pooled) if pooled else math.nan
        ok &= not math.isnan(pooled_median) and pooled_median <= 1 + OVERHEAD_TARGET
        cpu = [v for task in ab for v in res.step_ratios(task, arm, cpu_time=True)]
        cpu_text = f"; thread CPU time x{_fmt(median(cpu), 3)}" if device == "cpu" and cpu else ""
        details.append(
            f"{arm}: median of {len(pooled)} paired ratios x{_fmt(pooled_median, 3)} (range "
            f"{_fmt(min(pooled, default=math.nan), 3)}..{_fmt(max(pooled, default=math.nan), 3)}){cpu_text}"
        )
    for task in ab:
        ratios = {arm: res.step_ratio(task, arm) for arm in GEO_ARMS}
        cpu = ""
        if device == "cpu":
            cpu = "; thread CPU time: " + ", ".join(
                f"{arm} x{_fmt(res.step_ratio(task, arm, cpu_time=True), 3)}" for arm in GEO_ARMS
            )
        details.append(
            f"task {task}: 16-mixed {_fmt(res.step_ms(task, MIXED), 2)} ms; "
            + ", ".join(f"{arm} {_fmt(res.step_ms(task, arm), 2)} ms (x{_fmt(v, 3)})" for arm, v in ratios.items())
            + cpu
        )
    lines += verdict(ok if ab else None, f"step-time overhead at most {100 * OVERHEAD_TARGET:g}% vs 16-mixed for "
                      "both GEO arms (per-seed ratios of tasks a, a_high and b, median)", details)  # fmt: skip
    return lines


LEGEND = """Columns: skipped = training steps without an optimizer step, median [per seed]; uf mean / uf worst = share
of exactly-zero elements in the gradient at each Linear's output on sampled steps (every fp16 arm measured alike),
mean over layers / worst layer, median over seeds; the fp32 row counts zeros of its float32 gradients (structural
zeros; roundoff leaves some of those non-zero in fp32, so it can be below fp16's structural share); val loss =
final validation loss (nats/char, under the arm's own precision), median and min..max over seeds; vs fp32 = the
median's relative gap to fp32's (+ = worse); step ms = median step wall time (steps >= 10, sampled steps left
out), median over seeds; x 16-mixed = that / the same seed's 16-mixed run, median over seeds; log2 scale = the
final loss scale of seed 0 (GEO per-block: head | blocks min..max)."""


# -------------------------------------------------------------------------------------------- main
def _device_text(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"CPU, {THREADS} torch thread(s) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: per device)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument("--lr", type=float, default=None, help="normal LR (default: tuned for fp32 on seed 0)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny model, 40 steps, 1 seed")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/precision_<device>.txt; "
                        "with --quick nothing is written unless --out is given)")  # fmt: skip
    args = parser.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        parser.error(f"--tasks must be a comma-separated subset of {','.join(TASKS)}, got {args.tasks!r}")
    tasks = [t for t in TASKS if t in tasks]
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    config = QUICK if args.quick else CONFIGS[args.device]
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if args.steps is not None:
        if args.steps <= TIMING_SKIP:
            parser.error(f"--steps must be > {TIMING_SKIP}")
        config = replace(config, steps=args.steps, warmup=min(config.warmup, args.steps // 10))
    out = Path(args.out) if args.out else (None if args.quick else RESULTS_DIR / f"precision_{args.device}.txt")

    quiet_lightning(
        ".*lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`.*",
        ".*PredictiveScalingPrecision: the float16 forward.*",
        ".*You defined a `validation_step` but have no `val_dataloader`.*",
        ".*GPU available but not used.*",
    )
    keep_freed_memory()
    torch.set_num_threads(THREADS)
    version = code_version()
    started = time.perf_counter()
    log = Transcript()

    corpus = load_corpus(None)
    bench = Bench(corpus, config, args.device)
    log(f"{config.describe()}; {args.device}; seeds {seeds}; tasks {','.join(tasks)}")

    def record(run: Run) -> Run:
        extra = f", promoted {run.promoted}" if run.promoted else ""
        if run.skipped_at:
            shown = run.skipped_at[:8]
            extra += f", skipped at {shown}" + ("..." if len(run.skipped_at) > len(shown) else "")
        error = f", {run.error.split(':')[0]}" if run.error else ""
        log(
            f"  {run.task} seed {run.seed} {run.arm:<13} lr {run.lr:g}: val {_fmt(run.val_loss)}, "
            f"skipped {run.skipped}, step {_fmt(run.step_ms, 2)} ms, log2 scale {run.log2_scale}{extra}{error} "
            f"({run.seconds:.0f} s)"
        )
        return run

    def tuning_run(lr: float) -> Run:
        run = bench.run("a", FP32, 0, lr)
        log(f"  lr {lr:g}: val {_fmt(run.val_loss)} ({run.seconds:.0f} s)")
        return run

    # The normal LR: tuned for fp32 on seed 0 of task a (that run is reused).
    tuning: dict[float, float] = {}
    reused: Run | None = None
    normal_lr = args.lr
    needs_normal = any(t in tasks for t in ("a", "b", "c"))
    if needs_normal and normal_lr is None:
        log("LR tuning (fp32, task a, seed 0):")
        tuned = tune_lr(tuning_run, LR_GRID, score=lambda run: -math.inf if math.isnan(run.val_loss) else -run.val_loss)
        normal_lr, reused = tuned.best, tuned.runs[tuned.best]
        tuning = {lr: run.val_loss for lr, run in tuned.runs.items()}
        log(f"  chosen: {normal_lr:g}")

    def task_runs(task: str, lr: float) -> dict[str, list[Run]]:
        def run(arm: str, seed: int) -> Run:
            if task == "a" and arm == FP32 and seed == 0 and reused is not None:
                return record(reused)
            return record(bench.run(task, arm, seed, lr))

        # Arms back to back, so slow phases of a shared machine hit every arm alike; the fp16 arms' order
        # rotates with the seed, so no arm always runs right after fp32.
        return run_seeds(ARMS, range(seeds), run, order=lambda seed: (FP32, *rotated(ARMS[1:], seed)))

    runs: dict[tuple[str, str], list[Run]] = {}
    for task in tasks:
        lr = HIGH_LR if task == "a_high" else normal_lr
        assert lr is not None
        task_started = time.perf_counter()
        log(f"task {task}: {TASK_TITLES[task]}, LR {lr:g}")
        runs.update({(task, arm): arm_runs for arm, arm_runs in task_runs(task, lr).items()})
        log(f"  ({time.perf_counter() - task_started:.0f} s)")

    elapsed = time.perf_counter() - started
    results = Results(runs)
    command = command_line(__file__)
    report_start = log.mark()
    log()
    log(f"$ {command}")
    log(
        f"{version}; torch {torch.__version__}, lightning {pl.__version__}; {_device_text(args.device)}; "
        f"{seeds} seed(s); whole run {elapsed / 60:.1f} min"
    )
    log(config.describe())
    for task in tasks:
        lr = HIGH_LR if task == "a_high" else normal_lr
        log(f"  {task}: {TASK_TITLES[task]} (LR {lr:g})")
    log()
    log(results.table(tasks))
    if tuning:
        log()
        log(
            "LR tuning (fp32, task a, seed 0, final val loss): "
            + "  ".join(f"{lr:g}: {_fmt(v)}" for lr, v in tuning.items())
            + f"  -> {normal_lr:g}"
        )
    log()
    log(LEGEND)
    for task in tasks:
        log()
        log(
            f"Underflow per layer, task {task} (zero share of the output gradient, mean over samples, "
            "median over seeds):"
        )
        log(results.layer_table(task))
    if "c" in tasks:
        log()
        log("Task c, modules GEO promoted to fp32 (per seed):")
        for arm in GEO_ARMS:
            for run in results.of("c", arm):
                log(f"  {arm} seed {run.seed}: {', '.join(run.promoted) or 'none'}")
    mismatches = [
        r for rs in runs.values() for r in rs if r.plugin_skipped is not None and r.plugin_skipped != r.skipped
    ]
    mixed_mismatch = [r for rs in runs.values() for r in rs if r.arm == MIXED and r.scale_drops != r.skipped]
    errors = [r for rs in runs.values() for r in rs if r.error]
    if mismatches or mixed_mismatch or errors:
        log()
        log("Notes:")
        for r in mismatches:
            log(f"  {r.task} {r.arm} seed {r.seed}: plugin.skipped_steps={r.plugin_skipped}, but optimizer.step did "
                f"not run on {r.skipped} steps")  # fmt: skip
        for r in mixed_mismatch:
            log(f"  {r.task} 16-mixed seed {r.seed}: {r.scale_drops} scale drops, {r.skipped} steps without "
                f"optimizer.step (the scale stops dropping once it has underflowed to 0)")  # fmt: skip
        for r in errors:
            log(f"  {r.task} {r.arm} seed {r.seed}: {r.error}")
    log()
    log("Targets:")
    for line in target_report(results, tasks, config, args.device):
        log(line)
    if out is not None:
        write_results(out, log.since(report_start), version=version)


if __name__ == "__main__":
    main()
