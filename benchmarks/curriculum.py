"""Does DynamicCurriculum reach a tuned baseline's final validation quality with fewer tokens?

    python benchmarks/curriculum.py [--tasks A,B,C] [--seeds 3] [--quick]

**The claims under test.** ``DynamicCurriculum`` reaches the final validation quality of the tuned
baseline (same model, same budget, no curriculum) with at least 1.25x fewer tokens (or samples) on at
least two of the three tasks, and never ends more than 0.5% worse than it: for a loss "0.5%" is relative
(``arm <= 1.005 * baseline``), for an accuracy it is absolute (``arm >= baseline - 0.5`` percentage
points). The script prints each as MET or MISSED with the numbers behind it.

**Tasks.**

* ``A``: the demo's character-level LM (``lightning_geo.demo``: the Python standard library's sources,
  ``CharWindows`` of 128 characters, ``CharLanguageModel`` with 2 blocks of width 64), batch 16 windows,
  a fixed budget of tokens (input characters trained on; a batch cut to length ``L`` holds ``16 * L``).
  Metric: validation loss (nats/char) on 64 held-out windows spread evenly over the held-out files,
  always at the full length 128. Arms: ``baseline`` (full length throughout); ``SLW`` =
  ``DynamicCurriculum(mode="seq_len", pacing="linear")`` with Composer's defaults (from 8 tokens in
  steps of 8, truncating) and a deadline at 30% of the budget; ``mastery`` = the same with
  ``pacing="mastery"`` and a deadline at 40% of the budget (the mastery pace is never slower than
  linear, so with the same deadline it could only shorten the warmup; the later deadline lets the
  mastery signal decide); ``random-order`` (control) = the SLW arm's per-batch lengths (the same
  multiset, so the same tokens and steps) in a shuffled order, applied by a small callback with
  ``curriculum_seq_len.shorten_batch_``. Every arm then also runs at 2x and 4x its tuned LR (seeds 0
  and 1 by default, ``--stress-seeds``); a run *diverged* when its training loss turned non-finite or
  its final validation loss is above the loss before training.
* ``B``: scikit-learn's ``digits`` (8x8 images, 10 classes); a fixed split of 1200 train / 597 held-out
  images; 40% of the *training* labels flipped to a different class uniformly at random (symmetric
  noise, one fixed draw); the held-out labels are clean. MLP 64-256-256-10, batch 32, a budget of
  ~100 epochs in samples, so the uniform arm has time to memorise the noise. Metric: held-out accuracy.
  Arms: ``uniform`` (shuffled epochs); ``curriculum(loss)`` = ``DynamicCurriculum(scorer="loss")``
  (self-paced: a sample's last training loss, lowest first; mastery pacing, start 25%, hard fraction
  0.1, deadline at 90% of the budget: noisy labels have high loss, so the later every sample must be
  admitted the less time is spent fitting them, but the callback cannot stop short of 100%);
  ``random-subset`` (control) = the same callback with ``scorer=`` a fixed random tensor (the same
  growing subset sizes, drawn at random). Their mean threshold is printed so the size schedules can be
  compared.
* ``C``: KJV verse -> book (66 classes), from ``benchmarks/sparsity.py``'s loader (the `bible` command,
  package ``bible-kjv``; ~28k train / 3.2k validation verses, split by a CRC32 of the reference).
  Model: ``EmbeddingBag(mean, d=64, padding excluded)`` + ``Linear``, batch 128, a budget in samples
  (verses). Metric: validation accuracy. Arms: ``uniform``; ``curriculum(rarity)`` (mean negative log
  unigram frequency of the verse's words, rare last) and ``curriculum(length)`` (words per verse), both
  mastery pacing with a deadline at 50% of the budget; ``random-order`` (control) = the same callback
  with random precomputed scores.

**Method.** Every run is a Lightning ``Trainer`` on CPU (no logger, checkpointing, progress bar,
summary or Lightning validation loop), one torch thread. The budget is fixed in tokens (A) or samples
(B, C), not steps: a callback counts what each batch holds (after the curriculum cut it), stops the run
once the budget is reached and evaluates the held-out set whenever another 5% of the budget has been
trained on (and once before training). The LR schedule is also defined on that count (linear warmup
over the first 5%, cosine decay to 10% of the peak at the budget), so arms with short sequences or
short batches are not penalised by a step schedule. Optimizer: AdamW (A: the demo's groups and
settings; B, C: no weight decay). LR: three neighbouring values of the ladder ..., 1e-3, 3e-3, 1e-2,
3e-2, ... per arm and task, run on seed 0, widened by one value if the best sits at an edge; the best
final validation value picks the LR, and seeds ``0..N-1`` then run at that LR (the seed-0 run is
reused; arms interleaved seed by seed). The training data order and the curriculum's sampler follow the
seed; B's noisy labels and all splits are fixed.

**Reading the tables.** *target* = the baseline's final validation value, median over seeds. *to
target*: the first evaluation at which a run is at least that good, in tokens/samples, median
[per seed] (``>budget``: never). *vs base* = the baseline's own median *to target* divided by the arm's:
above 1 means fewer tokens (1.25 = 1.25x fewer); this is the figure the target uses. It is strict when
the baseline's curve is not monotone (B: the uniform arm reaches its final accuracy early, then
memorises noise, so an arm gets no credit for what early stopping would also give). *vs budget* =
the budget divided by the arm's *to target* (the looser reading "the baseline needed the whole budget").
*final*: median and min..max over seeds. *schedule*: A: mean sequence length per batch; B, C: mean
threshold (share of the training set admitted) over the batches. Results of the default run go to
``benchmarks/results/curriculum.txt``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    quiet_lightning,
    quiet_trainer,
    spread,
    verdict,
    worse_by,
    write_results,
)
from bench_harness import Sweep, sweep
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_geo.callbacks import DynamicCurriculum
from lightning_geo.callbacks.curriculum_pacing import fixed_pace
from lightning_geo.callbacks.curriculum_seq_len import shorten_batch_
from lightning_geo.demo.corpus import load_corpus
from lightning_geo.demo.data import CharWindows
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.utils.table import format_table

RESULTS = Path(__file__).resolve().parent / "results" / "curriculum.txt"
THREADS = 1  # one torch thread: the 2-core test machine is shared, two threads were several times slower
LR_BOUNDS = (1e-4, 3e-1)  # the ends of the LR ladder the grids are widened along
EVAL_EVERY = 0.05  # share of the budget between held-out evaluations
WARMUP = 0.05  # share of the budget with a linear LR warmup
MIN_LR_RATIO = 0.1  # the cosine decays to this share of the peak LR at the budget
SPEEDUP_TARGET = 1.25
LOSS_TOLERANCE = 0.005  # relative, for losses
ACC_TOLERANCE = 0.005  # absolute (0.5 percentage points), for accuracies
STRESS = (2, 4)  # task A: multiples of the tuned LR


def lr_factor(progress: float) -> float:
    """LR multiplier at ``progress`` (share of the budget trained on): warmup, then cosine to MIN_LR_RATIO."""
    if progress < WARMUP:
        return (progress + 1e-3) / WARMUP
    p = min(1.0, (progress - WARMUP) / (1.0 - WARMUP))
    return MIN_LR_RATIO + (1.0 - MIN_LR_RATIO) * 0.5 * (1.0 + math.cos(math.pi * p))


def fmt_count(n: float) -> str:
    if not math.isfinite(n):
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.0f}k"
    return f"{n:.0f}"


def fmt_lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


# ------------------------------------------------------------------------------------- shared pieces
class BudgetMixin:
    """A LightningModule that counts what it trains on (``seen``) and sets its LR from ``seen / budget``."""

    budget: int
    peak_lr: float
    seen: int

    def init_budget(self, budget: int, lr: float) -> None:
        self.budget, self.peak_lr, self.seen = budget, lr, 0

    def take(self, units: int) -> None:
        """Called in ``training_step`` before the forward pass: set this step's LR, then count the batch."""
        factor = lr_factor(self.seen / self.budget)
        for optimizer in self.trainer.optimizers:  # type: ignore[attr-defined]
            for group in optimizer.param_groups:
                group["lr"] = self.peak_lr * factor
        self.seen += units

    def evaluate(self) -> float:
        raise NotImplementedError


class Budget(Callback):
    """Evaluates every ``EVAL_EVERY`` of the budget (and before training), stops at the budget or on a
    non-finite training loss."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.curve: list[tuple[int, float]] = []
        self.non_finite = False
        self._next = 0
        self.steps = 0

    def _evaluate(self, pl_module: Any) -> None:
        pl_module.eval()
        with torch.no_grad():
            value = pl_module.evaluate()
        pl_module.train()
        self.curve.append((pl_module.seen, value))
        while self._next <= pl_module.seen:
            self._next += max(1, round(EVAL_EVERY * self.budget))

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._evaluate(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.steps += 1
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not torch.isfinite(loss).all():
            self.non_finite = True
            trainer.should_stop = True
            return
        if pl_module.seen >= min(self._next, self.budget):
            self._evaluate(pl_module)
        if pl_module.seen >= self.budget:
            trainer.should_stop = True


class ThresholdProbe(Callback):
    """Records the curriculum's threshold in effect for every training batch (put after the curriculum)."""

    def __init__(self, curriculum: DynamicCurriculum) -> None:
        self.curriculum = curriculum
        self.thresholds: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.thresholds.append(self.curriculum.threshold)


@dataclass
class Run:
    arm: str
    lr: float
    seed: int
    curve: list[tuple[int, float]]
    non_finite: bool
    wall_s: float
    steps: int
    schedule: float  # A: mean sequence length per batch; B, C: mean threshold
    higher_better: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> float:
        return math.nan if self.non_finite else self.curve[-1][1]

    @property
    def diverged(self) -> bool:
        """Non-finite training loss, or (a loss metric) a final value above the value before training."""
        if self.non_finite or not math.isfinite(self.final):
            return True
        return not self.higher_better and self.final > self.curve[0][1]

    def reach(self, target: float) -> float:
        """Tokens/samples at the first evaluation at least as good as ``target`` (``inf``: never)."""
        for seen, value in self.curve[1:]:
            if (value >= target) if self.higher_better else (value <= target):
                return float(seen)
        return math.inf

    def score(self) -> float:
        """For picking the LR: higher is better, a diverged run is worst."""
        if self.non_finite or not math.isfinite(self.final):
            return -math.inf
        return self.final if self.higher_better else -self.final


def make_trainer(callbacks: list[Callback], max_steps: int) -> pl.Trainer:
    return quiet_trainer(max_steps=max_steps, max_epochs=-1, limit_val_batches=0, callbacks=callbacks)


def fit(
    arm: str,
    lr: float,
    seed: int,
    module: Any,
    loader: DataLoader,
    budget: int,
    max_steps: int,
    extra_callbacks: Sequence[Callback],
    higher_better: bool,
    schedule: Callable[[], float],
    extra: Callable[[], dict[str, Any]] | None = None,
) -> Run:
    budget_cb = Budget(budget)
    trainer = make_trainer([*extra_callbacks, budget_cb], max_steps)
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    wall = time.perf_counter() - started
    return Run(
        arm=arm,
        lr=lr,
        seed=seed,
        curve=budget_cb.curve,
        non_finite=budget_cb.non_finite,
        wall_s=wall,
        steps=budget_cb.steps,
        schedule=schedule(),
        higher_better=higher_better,
        extra=extra() if extra else {},
    )


# ------------------------------------------------------------------------------- task A: char LM
class TokenBudgetLM(BudgetMixin, CharLanguageModel):
    """The demo's model and optimizer; the LR follows the tokens trained on instead of a step schedule."""

    def __init__(self, vocab: str, val: Tensor, budget: int, lr: float, **kwargs: Any) -> None:
        super().__init__(vocab, lr=lr, **kwargs)
        self.init_budget(budget, lr)
        self.val = val  # (N, seq_len + 1) held-out windows
        self.lengths: list[int] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:  # type: ignore[override]
        x, y = batch
        self.take(x.numel())
        self.lengths.append(x.shape[1])
        logits = self(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    def configure_optimizers(self) -> Any:  # type: ignore[override]
        return super().configure_optimizers()["optimizer"]  # the demo's AdamW groups; no step scheduler

    def evaluate(self) -> float:
        total = 0.0
        for chunk in self.val.split(64):
            logits = self(chunk[:, :-1])
            total += float(F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"))
        return total / self.val[:, 1:].numel()


class ShuffledSeqLen(Callback):
    """The random-order control: cut batch ``i`` to ``lengths[i]`` (full length once the list runs out)."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths
        self.step = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.step < len(self.lengths):
            shorten_batch_(batch, self.lengths[self.step])
        self.step += 1


def slw_lengths(budget: int, deadline: int, batch: int, full: int, min_len: int, step: int) -> list[int]:
    """Per-batch lengths of linear sequence-length warmup to ``deadline`` tokens, as DynamicCurriculum does it
    (threshold ``start + (1 - start) * tokens / deadline``, length floored to a multiple of ``step``)."""
    start = min(1.0, min_len / full)
    threshold, tokens, lengths = start, 0, []
    while tokens < budget:
        length = full if threshold >= 1.0 else max(min_len, min(full, int(threshold * full // step) * step))
        lengths.append(length)
        tokens += batch * length
        threshold = max(threshold, fixed_pace("linear", min(1.0, tokens / deadline), start))
    return lengths


@dataclass
class CharTask:
    budget: int
    grid: tuple[float, ...]
    seq_len: int = 128
    batch: int = 16
    n_layer: int = 2
    n_embd: int = 64
    val_windows: int = 64
    slw_deadline: float = 0.3
    mastery_deadline: float = 0.4
    mastery_window: int = 25

    key = "A"
    title = "A: char-level LM (demo corpus), CharGPT 2x64, context 128, batch 16"
    unit = "tokens"
    metric = "val loss"
    higher_better = False
    arms = ("baseline", "SLW", "mastery", "random-order")
    geo_arms = ("SLW", "mastery")
    baseline = "baseline"

    def __post_init__(self) -> None:
        self.corpus = load_corpus()
        num_val = (len(self.corpus.val) - 1) // self.seq_len
        count = min(self.val_windows, num_val)
        self.train_set = CharWindows(self.corpus.train, self.seq_len)
        val = CharWindows(self.corpus.val, self.seq_len, indices=[i * num_val // count for i in range(count)])
        self.val = torch.stack([torch.cat([x, y[-1:]]) for x, y in (val[i] for i in range(len(val)))])
        self.shuffle_lengths = slw_lengths(
            self.budget, int(self.slw_deadline * self.budget), self.batch, self.seq_len, 8, 8
        )
        self.slw_recorded: list[int] | None = None

    def describe(self) -> str:
        return (
            f"{len(self.corpus.train):,} train / {len(self.corpus.val):,} val characters "
            f"({self.corpus.vocab_size} ids); {len(self.train_set):,} train windows, {len(self.val)} val windows; "
            f"budget {fmt_count(self.budget)} tokens ({self.budget // (self.batch * self.seq_len)} full-length batches)"
        )

    def run(self, arm: str, lr: float, seed: int) -> Run:
        pl.seed_everything(seed, verbose=False)
        module = TokenBudgetLM(
            self.corpus.vocab,
            self.val,
            self.budget,
            lr,
            seq_len=self.seq_len,
            n_layer=self.n_layer,
            n_head=4,
            n_embd=self.n_embd,
        )
        loader = DataLoader(self.train_set, batch_size=self.batch, shuffle=True, drop_last=True)
        callbacks: list[Callback] = []
        if arm in ("SLW", "mastery"):
            deadline = self.slw_deadline if arm == "SLW" else self.mastery_deadline
            callbacks.append(
                DynamicCurriculum(
                    mode="seq_len",
                    pacing="linear" if arm == "SLW" else "mastery",
                    deadline=f"{int(deadline * self.budget)} tokens",
                    min_seq_len=8,
                    seq_len_step=8,
                    mastery_window=self.mastery_window,
                    seed=seed,
                )
            )
        elif arm == "random-order":
            lengths = list(self.shuffle_lengths)
            random.Random(seed).shuffle(lengths)
            callbacks.append(ShuffledSeqLen(lengths))
        max_steps = self.budget // (self.batch * 8) + 10  # enough for the shortest sequences throughout
        run = fit(
            arm,
            lr,
            seed,
            module,
            loader,
            self.budget,
            max_steps,
            callbacks,
            False,
            lambda: statistics.fmean(module.lengths),
            lambda: {"lengths": list(module.lengths), "last short at": self._last_short(module.lengths)},
        )
        if arm == "SLW" and not run.non_finite:
            self.slw_recorded = run.extra["lengths"]
        return run

    def _last_short(self, lengths: list[int]) -> float:
        """Share of the budget trained on when the last batch shorter than the full length ended."""
        tokens, last = 0, 0
        for n in lengths:
            tokens += self.batch * n
            if n < self.seq_len:
                last = tokens
        return last / self.budget

    def notes(self) -> list[str]:
        lines = [
            f"SLW deadline {fmt_count(self.slw_deadline * self.budget)} tokens "
            f"({self.slw_deadline:.0%} of the budget); mastery deadline "
            f"{fmt_count(self.mastery_deadline * self.budget)} ({self.mastery_deadline:.0%}), "
            f"mastery_window {self.mastery_window} batches"
        ]
        short = [n for n in self.shuffle_lengths if n < self.seq_len]
        lines.append(
            f"random-order control: the SLW schedule's {len(self.shuffle_lengths)} batch lengths "
            f"({len(short)} shortened, {sum(short) * self.batch / self.budget:.1%} of the tokens) shuffled per seed"
        )
        if self.slw_recorded is not None:
            same = self.slw_recorded == self.shuffle_lengths[: len(self.slw_recorded)]
            lines.append(
                "check: the SLW arm's recorded per-batch lengths "
                + ("equal" if same else "DIFFER FROM")
                + " the simulated schedule the control shuffles"
            )
        return lines


# ------------------------------------------------------------------------- task B: noisy digits
class DigitsModule(BudgetMixin, pl.LightningModule):
    def __init__(self, val_x: Tensor, val_y: Tensor, flipped: Tensor, budget: int, lr: float, hidden: int) -> None:
        super().__init__()
        self.init_budget(budget, lr)
        self.flipped = flipped
        self.noisy_seen = 0
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )
        self.val_x, self.val_y = val_x, val_y

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y, index = batch
        self.take(len(y))
        self.noisy_seen += int(self.flipped[index].sum())
        per_sample = F.cross_entropy(self.net(x), y, reduction="none")
        return {"loss": per_sample.mean(), "sample_loss": per_sample.detach()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.peak_lr, weight_decay=0.0)

    def evaluate(self) -> float:
        return float((self.net(self.val_x).argmax(1) == self.val_y).float().mean())


@dataclass
class DigitsTask:
    budget: int
    grid: tuple[float, ...]
    noise: float = 0.4
    n_train: int = 1200
    batch: int = 64
    hidden: int = 256
    deadline: float = 0.9
    mastery_window: int = 50

    key = "B"
    title = "B: digits with 40% symmetric label noise, MLP 64-256-256-10, batch 64"
    unit = "samples"
    metric = "clean acc"
    higher_better = True
    arms = ("uniform", "curriculum(loss)", "random-subset")
    geo_arms = ("curriculum(loss)",)
    baseline = "uniform"

    def __post_init__(self) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32) / 16.0
        y = torch.tensor(data.target, dtype=torch.long)
        generator = torch.Generator().manual_seed(1234)
        order = torch.randperm(len(y), generator=generator)
        train, val = order[: self.n_train], order[self.n_train :]
        self.train_x, self.clean_y = x[train], y[train]
        self.val_x, self.val_y = x[val], y[val]
        flip = torch.randperm(self.n_train, generator=generator)[: round(self.noise * self.n_train)]
        noisy = self.clean_y.clone()
        noisy[flip] = (noisy[flip] + torch.randint(1, 10, (len(flip),), generator=generator)) % 10  # another class
        self.train_y = noisy
        self.flipped = torch.zeros(self.n_train, dtype=torch.bool)
        self.flipped[flip] = True

    def describe(self) -> str:
        return (
            f"{self.n_train} train images ({int(self.flipped.sum())} labels flipped) / {len(self.val_y)} clean "
            f"held-out images; budget {fmt_count(self.budget)} samples ({self.budget / self.n_train:.0f} epochs)"
        )

    def run(self, arm: str, lr: float, seed: int) -> Run:
        pl.seed_everything(seed, verbose=False)
        module = DigitsModule(self.val_x, self.val_y, self.flipped, self.budget, lr, self.hidden)
        dataset = TensorDataset(self.train_x, self.train_y, torch.arange(self.n_train))
        loader = DataLoader(dataset, batch_size=self.batch, shuffle=True)
        callbacks: list[Callback] = []
        probe = None
        curriculum = None
        if arm != "uniform":
            scorer: Any = (
                "loss"
                if arm == "curriculum(loss)"
                else torch.rand(self.n_train, generator=torch.Generator().manual_seed(1000 + seed))
            )
            curriculum = DynamicCurriculum(
                scorer=scorer,
                pacing="mastery",
                deadline=f"{int(self.deadline * self.budget)} samples",
                mastery_window=self.mastery_window,
                seed=seed,
            )
            probe = ThresholdProbe(curriculum)
            callbacks += [curriculum, probe]

        return fit(
            arm,
            lr,
            seed,
            module,
            loader,
            self.budget,
            2 * self.budget // self.batch + 10,
            callbacks,
            True,
            lambda: statistics.fmean(probe.thresholds) if probe else 1.0,
            lambda: {"noisy share": module.noisy_seen / module.seen},
        )

    def notes(self) -> list[str]:
        return [
            f"curriculum deadline {fmt_count(self.deadline * self.budget)} samples "
            f"({self.deadline:.0%} of the budget), "
            f"mastery_window {self.mastery_window} batches, other settings at their defaults"
        ]


# ---------------------------------------------------------------------- task C: KJV verse -> book
class Verses(Dataset):
    """Unpadded word ids per verse (``(ids, book)``); the collate function pads with 0.

    Unpadded, because the ``rarity`` scorer has no ``pad_id``: on padded rows it counts the padding as the
    most frequent word, which makes short verses look "common" (rarity would be a length proxy).
    """

    def __init__(self, padded: Tensor, labels: Tensor) -> None:
        lengths = (padded != 0).sum(1)
        self.rows = [row[:n] for row, n in zip(padded, lengths.tolist(), strict=True)]
        self.labels = labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.rows[i], self.labels[i]


def pad_collate(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    rows, labels = zip(*batch, strict=True)
    return nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=0), torch.stack(labels)


class BagModule(BudgetMixin, pl.LightningModule):
    def __init__(self, vocab: int, classes: int, val_x: Tensor, val_y: Tensor, budget: int, lr: float) -> None:
        super().__init__()
        self.init_budget(budget, lr)
        self.bag = nn.EmbeddingBag(vocab, 64, mode="mean", padding_idx=0)
        self.head = nn.Linear(64, classes)
        self.val_x, self.val_y = val_x, val_y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self.take(len(y))
        return F.cross_entropy(self.head(self.bag(x)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.peak_lr, weight_decay=0.0)

    def evaluate(self) -> float:
        return float((self.head(self.bag(self.val_x)).argmax(1) == self.val_y).float().mean())


@dataclass
class VerseTask:
    budget: int
    grid: tuple[float, ...]
    batch: int = 128
    deadline: float = 0.5

    key = "C"
    title = "C: KJV verse -> book (66 classes), EmbeddingBag(mean, d=64) + Linear, batch 128"
    unit = "samples"
    metric = "val acc"
    higher_better = True
    arms = ("uniform", "curriculum(rarity)", "curriculum(length)", "random-order")
    geo_arms = ("curriculum(rarity)", "curriculum(length)")
    baseline = "uniform"

    def __post_init__(self) -> None:
        from sparsity import load_classification  # same folder: scripts run with benchmarks/ on sys.path

        data = load_classification()
        self.data = data
        self.train_set = Verses(data.train_x, data.train_y)
        self.val_x = data.val_x[:, : int((data.val_x != 0).sum(1).max())]

    def describe(self) -> str:
        n = len(self.train_set)
        return f"{self.data.describe()}; budget {fmt_count(self.budget)} samples ({self.budget / n:.1f} epochs)"

    def run(self, arm: str, lr: float, seed: int) -> Run:
        pl.seed_everything(seed, verbose=False)
        module = BagModule(self.data.vocab_size, self.data.num_classes, self.val_x, self.data.val_y, self.budget, lr)
        loader = DataLoader(self.train_set, batch_size=self.batch, shuffle=True, collate_fn=pad_collate)
        callbacks: list[Callback] = []
        probe = None
        if arm != "uniform":
            scorer: Any = {
                "curriculum(rarity)": "rarity",
                "curriculum(length)": "length",
            }.get(arm) or torch.rand(len(self.train_set), generator=torch.Generator().manual_seed(1000 + seed))
            curriculum = DynamicCurriculum(
                scorer=scorer, pacing="mastery", deadline=f"{int(self.deadline * self.budget)} samples", seed=seed
            )
            probe = ThresholdProbe(curriculum)
            callbacks += [curriculum, probe]
        return fit(
            arm,
            lr,
            seed,
            module,
            loader,
            self.budget,
            2 * self.budget // self.batch + 10,
            callbacks,
            True,
            lambda: statistics.fmean(probe.thresholds) if probe else 1.0,
        )

    def notes(self) -> list[str]:
        return [
            f"curriculum deadline {fmt_count(self.deadline * self.budget)} samples "
            f"({self.deadline:.0%} of the budget), "
            "other settings at their defaults; the training set is unpadded (see Verses)"
        ]


Task = CharTask | DigitsTask | VerseTask


# ------------------------------------------------------------------------------------ the protocol
@dataclass
class Outcome:
    task: Any
    sweep: Sweep[Run]  # the LR tuning and the runs at each arm's chosen LR
    stress: dict[str, dict[int, list[Run]]]
    wall_s: float

    @property
    def target(self) -> float:
        return statistics.median(r.final for r in self.sweep.runs[self.task.baseline])

    def reach(self, arm: str) -> tuple[float, list[float]]:
        per_seed = [r.reach(self.target) for r in self.sweep.runs[arm]]
        return statistics.median(per_seed), per_seed

    def final(self, arm: str) -> float:
        values = [r.final for r in self.sweep.runs[arm]]
        return statistics.median(values) if all(math.isfinite(v) for v in values) else math.nan

    def baseline_reach(self) -> float:
        """The baseline's median to-target, at most the budget (with an even number of seeds the median
        final can lie between two seeds' curves, so the median reach can be "never")."""
        return min(self.reach(self.task.baseline)[0], float(self.task.budget))

    def speedup(self, arm: str) -> float:
        base = self.baseline_reach()
        mine, _ = self.reach(arm)
        return base / mine if math.isfinite(mine) else 0.0

    def worse_by(self, arm: str) -> float:
        """How much worse the arm's final median is: relative for a loss, absolute for an accuracy."""
        base, mine = self.final(self.task.baseline), self.final(arm)
        if not math.isfinite(mine):
            return math.inf
        higher_better = self.task.higher_better
        return worse_by(mine, base, higher_is_better=higher_better, relative=not higher_better)

    def table(self) -> str:
        t = self.task
        headers = ["arm", "LR", f"{t.unit} to target", "vs base", "vs budget", f"final {t.metric}", "min..max"]
        headers += ["diverged", "mean seq len" if t.key == "A" else "mean threshold"]
        extras = [k for k, v in self.sweep.runs[t.baseline][0].extra.items() if isinstance(v, float)]
        headers += [*extras, "s/run"]
        rows = []
        for arm in t.arms:
            runs = self.sweep.runs[arm]
            median, per_seed = self.reach(arm)
            seeds = by_seed(per_seed, lambda v: fmt_count(v) if math.isfinite(v) else f">{fmt_count(t.budget)}")
            finals = [r.final for r in runs]
            rows.append(
                [
                    arm + ("*" if arm == t.baseline else ""),
                    fmt_lr(self.sweep.chosen[arm]) + (" edge" if self.sweep.at_edge[arm] else ""),
                    f"{fmt_count(median) if math.isfinite(median) else '>' + fmt_count(t.budget)} [{seeds}]",
                    f"{self.speedup(arm):.2f}" if math.isfinite(median) else "-",
                    f"{t.budget / median:.2f}" if math.isfinite(median) else "-",
                    f"{self.final(arm):.4f}",
                    spread(finals),
                    f"{sum(r.diverged for r in runs)}/{len(runs)}",
                    f"{statistics.median(r.schedule for r in runs):.3f}",
                    *(f"{statistics.median(r.extra[k] for r in runs):.3f}" for k in extras),
                    f"{statistics.median(r.wall_s for r in runs):.0f}",
                ]
            )
        return format_table(headers, rows)

    def tuning_table(self) -> str:
        return self.sweep.tuning_table(
            self.task.metric, lambda run: "diverged" if run.non_finite else f"{run.final:.4f}", lr_text=fmt_lr
        )

    def stress_table(self) -> str:
        headers = ["arm", "tuned LR"]
        for k in (1, *STRESS):
            headers += [f"{k}x LR final val loss [per seed]", f"{k}x diverged"]
        rows = []
        for arm in self.task.arms:
            row = [arm, fmt_lr(self.sweep.chosen[arm])]
            for k in (1, *STRESS):
                runs = self.sweep.runs[arm] if k == 1 else self.stress[arm][k]
                vals = by_seed(runs, lambda r: "nan" if r.non_finite else f"{r.final:.3f}")
                row += [vals, f"{sum(r.diverged for r in runs)}/{len(runs)}"]
            rows.append(row)
        return format_table(headers, rows)


def run_task(task: Any, seeds: int, widen: int, stress_seeds: int, log: Callable[[str], None]) -> Outcome:
    started = time.perf_counter()
    log(f"task {task.title}")
    log(f"  data: {task.describe()}")

    def run(arm: str, lr: float, seed: int) -> Run:
        r = task.run(arm, lr, seed)
        if seed == 0:  # the LR tuning
            log(f"    tune {arm:<20} lr {fmt_lr(lr):>5}: final {r.final:.4f}  ({r.wall_s:.0f} s, {r.steps} steps)")
        else:
            log(f"    seed {seed} {arm:<20} final {r.final:.4f}  ({r.wall_s:.0f} s)")
        return r

    result = sweep(
        task.arms,
        run,
        grids=dict.fromkeys(task.arms, task.grid),
        score=Run.score,
        seeds=seeds,
        widen=widen,
        bounds=LR_BOUNDS,
    )
    stress: dict[str, dict[int, list[Run]]] = {arm: {k: [] for k in STRESS} for arm in task.arms}
    if task.key == "A":
        for seed in range(stress_seeds):
            for k in STRESS:
                for arm in task.arms:
                    stress[arm][k].append(task.run(arm, k * result.chosen[arm], seed))
                    r = stress[arm][k][-1]
                    log(f"    {k}x LR seed {seed} {arm:<14} final {r.final:.4f} diverged {r.diverged}")
    wall = time.perf_counter() - started
    log(f"  ({wall:.0f} s)")
    return Outcome(task, result, stress, wall)


def target_report(outcomes: list[Outcome], all_tasks: bool) -> list[str]:
    details, hits = [], 0
    for o in outcomes:
        best = max(o.task.geo_arms, key=o.speedup)
        ok = o.speedup(best) >= SPEEDUP_TARGET
        hits += ok
        median, _ = o.reach(best)
        base = o.baseline_reach()
        details.append(
            f"task {o.task.key}: best curriculum arm {best}: "
            f"{fmt_count(median) if math.isfinite(median) else 'never, in'} "
            f"{o.task.unit} to the baseline's final {o.task.metric} {o.target:.4f} vs the baseline's "
            f"{fmt_count(base)} -> {o.speedup(best):.2f}x ({'>=' if ok else '<'} {SPEEDUP_TARGET}); vs the whole "
            f"budget {fmt_count(o.task.budget)}: "
            + (f"{o.task.budget / median:.2f}x" if math.isfinite(median) else "-")
        )
    met: bool | None = hits >= 2 if (all_tasks or hits >= 2) else None
    lines = verdict(
        met,
        f"a curriculum arm reaches the baseline's final validation quality with >= {SPEEDUP_TARGET}x fewer "
        f"tokens/samples (median over seeds, vs the baseline's own median) on >= 2 of 3 tasks: {hits} of "
        f"{len(outcomes)} run",
        details,
    )
    details, ok_all = [], True
    for o in outcomes:
        for arm in o.task.geo_arms:
            worse = o.worse_by(arm)
            if o.task.higher_better:
                ok = worse <= ACC_TOLERANCE
                what = f"worse by {100 * worse:+.2f} pp (negative = better; limit 0.50 pp)"
            else:
                ok = worse <= LOSS_TOLERANCE
                what = f"worse by {100 * worse:+.2f}% (negative = better; limit 0.50%, relative)"
            ok_all &= ok
            details.append(
                f"task {o.task.key} {arm}: final {o.task.metric} {o.final(arm):.4f} vs baseline "
                f"{o.final(o.task.baseline):.4f}: {what} {'ok' if ok else 'FAIL'}"
            )
    lines += verdict(
        ok_all if all_tasks or not ok_all else None,
        "no curriculum arm ends worse than the baseline by more than 0.5% (median final; relative for a loss, "
        "absolute percentage points for an accuracy)",
        details,
    )
    return lines


LEGEND = """\
Columns: LR = chosen on seed 0 ("edge": the best LR still at the grid's edge after widening); to target = first
evaluation (every 5% of the budget) at or past the target (the baseline's median final value), median [per seed]
(>N: never within the budget N); vs base = the baseline's median to-target / the arm's (above 1 = fewer
tokens/samples; the target is 1.25); vs budget = budget / the arm's median to-target; final = median over seeds,
min..max = spread; diverged = runs with a non-finite training loss or (loss) a final value above the value before
training; schedule = mean sequence length per batch (A) or mean threshold = share of the training set admitted
(B, C); s/run = median wall time per run. * = baseline (sets the target)."""


# ------------------------------------------------------------------------------------------ main
def build_tasks(keys: list[str], quick: bool) -> list[Any]:
    tasks: list[Any] = []
    for key in keys:
        if key == "A":
            tasks.append(CharTask(budget=120_000, grid=(3e-3,)) if quick else CharTask(1_000_000, (1e-3, 3e-3, 1e-2)))
        elif key == "B":
            tasks.append(DigitsTask(budget=12_000, grid=(3e-4,)) if quick else DigitsTask(120_000, (1e-4, 3e-4, 1e-3)))
        elif key == "C":
            tasks.append(VerseTask(budget=15_000, grid=(1e-2,)) if quick else VerseTask(80_000, (1e-2, 3e-2, 1e-1)))
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="A,B,C", help="comma-separated subset of A,B,C")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm at the chosen LR (>= 1)")
    parser.add_argument("--stress-seeds", type=int, default=2, help="task A: seeds per arm at 2x and 4x the LR")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (1-2 minutes)")
    args = parser.parse_args()
    keys = [k.strip().upper() for k in args.tasks.split(",") if k.strip()]
    if not keys or any(k not in ("A", "B", "C") for k in keys):
        parser.error("--tasks takes a comma-separated subset of A,B,C")
    if args.seeds < 1 or args.stress_seeds < 0:
        parser.error("--seeds must be >= 1 and --stress-seeds >= 0")
    seeds = min(args.seeds, 2) if args.quick else args.seeds
    stress_seeds = min(args.stress_seeds, 1) if args.quick else args.stress_seeds
    quiet_lightning(
        ".*the training DataLoader does not shuffle.*",
        ".*`training_step` returned `None`.*",
        ".*You defined a `validation_step` but have no `val_dataloader`.*",
    )
    keep_freed_memory()
    torch.set_num_threads(THREADS)
    version = code_version()
    started = time.perf_counter()
    log = Transcript()

    outcomes = []
    for task in build_tasks(keys, args.quick):
        outcomes.append(run_task(task, seeds, 0 if args.quick else 1, stress_seeds, log))
        log()
    elapsed = time.perf_counter() - started

    command = command_line(__file__)
    report_start = log.mark()
    log(f"$ {command}")
    log(
        f"{version}; torch {torch.__version__}, lightning {pl.__version__}; {THREADS} thread on "
        f"{os.cpu_count()} CPU cores (shared), no GPU; {time.strftime('%Y-%m-%d %H:%M %Z')}; {seeds} seeds; "
        f"whole run {elapsed / 60:.1f} min"
    )
    for o in outcomes:
        log()
        log(f"Task {o.task.title}")
        log(f"data: {o.task.describe()}")
        for note in o.task.notes():
            log(note)
        log(f"target: {o.task.metric} {o.target:.4f} = final median of the baseline ({o.task.baseline}, *)")
        log(o.table())
        if o.task.key == "A" and stress_seeds:
            log()
            log(f"LR stress (seeds 0..{stress_seeds - 1} at 2x and 4x the tuned LR; 1x = the main runs):")
            log(o.stress_table())
        log()
        log("LR tuning (seed 0, final value per LR):")
        log(o.tuning_table())
        log(f"wall time of task {o.task.key}: {o.wall_s / 60:.1f} min")
    log()
    log(LEGEND)
    log()
    log("Targets:")
    for line in target_report(outcomes, all_tasks=set(keys) == {"A", "B", "C"}):
        log(line)
    if not args.quick and set(keys) == {"A", "B", "C"}:
        write_results(RESULTS, log.since(report_start), version=version)


if __name__ == "__main__":
    main()
