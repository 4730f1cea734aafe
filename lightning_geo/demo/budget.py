"""Training budgets in what a user pays for: wall-clock seconds or tokens (or, still, optimizer steps).

``Budget.parse("60s")``, ``Budget.parse("2M")`` (tokens) or ``Budget.parse("300 steps")``; ``BudgetedTraining``
is the callback that spends it: it tracks the run's progress through the budget (which drives the learning-rate
schedule), validates at evenly spaced points of it, and stops the run when it is spent, with a last validation.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

BUDGET_UNITS: tuple[str, ...] = ("seconds", "tokens", "steps")
"""What a budget counts: seconds spent in training batches (forward, backward and optimizer step, from the first
``on_train_batch_start`` hook to the last ``on_train_batch_end``: not validation, set-up or data loading from
memory), training tokens (all ranks), or optimizer steps."""

_MULTIPLIERS = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
_UNIT_WORDS = {
    "": "tokens", "token": "tokens", "tokens": "tokens", "tok": "tokens",
    "s": "seconds", "sec": "seconds", "secs": "seconds", "second": "seconds", "seconds": "seconds",
    "min": "minutes", "mins": "minutes", "minute": "minutes", "minutes": "minutes",
    "step": "steps", "steps": "steps",
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbg]?)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """How much training a run may spend.

    Attributes:
        amount: How many ``unit``; positive.
        unit: One of ``BUDGET_UNITS``.
    """

    amount: float
    unit: str

    def __post_init__(self) -> None:
        if self.unit not in BUDGET_UNITS:
            raise ValueError(f"budget unit {self.unit!r} is not one of {list(BUDGET_UNITS)}")
        if not (self.amount > 0 and math.isfinite(self.amount)):
            raise ValueError(f"budget amount must be a positive number, got {self.amount!r}")

    @classmethod
    def parse(cls, value: str | int | float) -> Budget:
        """Read ``"60s"``, ``"90 seconds"``, ``"2 min"`` (wall-clock), ``"2M"``, ``"500k tokens"`` (tokens; a bare
        number is tokens, suffixes k, M, B) or ``"300 steps"``.

        Raises:
            ValueError: naming ``budget`` for anything else or a non-positive amount.
        """
        allowed = "e.g. '60s', '2 min', '2M' (tokens), '500k tokens' or '300 steps'"
        match = _PATTERN.match(str(value)) if not isinstance(value, bool) else None
        if match is None:
            raise ValueError(f"budget={value!r} is not a budget: {allowed}")
        amount, multiplier, word = float(match.group(1)), match.group(2).lower(), match.group(3).lower()
        if multiplier and (multiplier + word) in _UNIT_WORDS and word not in _UNIT_WORDS:
            multiplier, word = "", multiplier + word  # "2 min": the m starts the unit, not a million
        unit = _UNIT_WORDS.get(word)
        if unit is None:
            raise ValueError(f"budget={value!r}: unknown unit {word!r}; {allowed}")
        if multiplier and unit != "tokens":
            raise ValueError(f"budget={value!r}: the suffix {match.group(2)!r} is for token counts; {allowed}")
        amount *= _MULTIPLIERS[multiplier]
        if unit == "minutes":
            unit, amount = "seconds", amount * 60.0
        if amount <= 0:
            raise ValueError(f"budget={value!r} must be positive")
        return cls(amount, unit)

    def scaled(self, factor: float) -> Budget:
        """This budget times ``factor`` (steps rounded to whole steps)."""
        amount = self.amount * factor
        return Budget(float(max(1, round(amount))) if self.unit == "steps" else amount, self.unit)

    def __str__(self) -> str:
        if self.unit == "seconds":
            return f"{self.amount:g} s"
        if self.unit == "tokens":
            return f"{self.amount:,.0f} tokens"
        return f"{self.amount:,.0f} steps"


@dataclass(frozen=True)
class ValidationPoint:
    """One validation of a budgeted run: when it ran and what it measured."""

    seconds: float  # seconds spent in training batches so far (see BUDGET_UNITS)
    tokens: int  # training tokens so far, all ranks
    steps: int  # optimizer steps so far
    loss: float  # mean validation loss, nats per token


class BudgetedTraining(Callback):
    """Spend a ``Budget``: progress, evenly spaced validations, and a stop with a last validation.

    Progress (the share of the budget spent, in [0, 1]) is written to ``pl_module.training_progress`` after each
    training batch, for a learning-rate schedule that follows the budget rather than a step count. Validations run
    on ``trainer.datamodule.val_dataloader()`` in float32 without autocast (the same for every arm of a
    comparison), each time progress passes one of ``val_points`` evenly spaced marks, and always at the end;
    Lightning's own validation loop should be off (``limit_val_batches=0``). Each is logged as ``val/loss`` and
    kept in ``curve``. Under several processes a seconds budget follows rank 0's clock (one broadcast per
    step), so every rank stops after the same step. Seconds are those spent in training batches (see
    ``BUDGET_UNITS``), so that validations cost no budget and arms that validate alike compare alike.

    Args:
        budget: What the run may spend.
        val_points: Validations over the budget, the last at its end. Default 12.
        loss_fn: ``(pl_module, batch) -> mean loss tensor``; default ``pl_module._loss``.
    """

    def __init__(self, budget: Budget, *, val_points: int = 12, loss_fn: Any = None) -> None:
        if not isinstance(val_points, int) or val_points < 1:
            raise ValueError(f"val_points must be a positive integer, got {val_points!r}")
        self.budget = budget
        self.val_points = val_points
        self.loss_fn = loss_fn
        self.curve: list[ValidationPoint] = []
        self.tokens = 0
        self.progress = 0.0
        self.train_seconds = 0.0  # time inside training batches (forward, backward, step): the seconds budget
        self._batch_started = 0.0
        self._next_mark = 1

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.training_progress = 0.0  # type: ignore[assignment]

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_started = time.perf_counter()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.train_seconds += time.perf_counter() - self._batch_started
        self.tokens += batch[0].numel() * trainer.world_size  # after any curriculum shortened it
        pl_module.log("train/tokens", float(self.tokens), rank_zero_only=True)
        self.progress = self._progress(trainer)
        pl_module.training_progress = self.progress  # type: ignore[assignment]
        while self._next_mark < self.val_points and self.progress >= self._next_mark / self.val_points:
            self._next_mark += 1
            self._validate(trainer, pl_module)
        if self.progress >= 1.0:
            self._validate(trainer, pl_module)
            trainer.should_stop = True

    def _progress(self, trainer: pl.Trainer) -> float:
        unit, amount = self.budget.unit, self.budget.amount
        if unit == "tokens":
            spent = float(self.tokens)
        elif unit == "steps":
            spent = float(trainer.global_step)
        else:
            spent = self.train_seconds
            if trainer.world_size > 1:
                spent = float(trainer.strategy.broadcast(spent, src=0))
        return min(1.0, spent / amount)

    @torch.no_grad()
    def _validate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.datamodule.val_dataloader()  # type: ignore[attr-defined]
        loss_fn = self.loss_fn or (lambda module, batch: module._loss(batch))
        was_training = pl_module.training
        pl_module.eval()
        total, count = 0.0, 0
        for batch in loader:
            batch = [t.to(pl_module.device) for t in batch]
            n = batch[0].numel()
            total += float(loss_fn(pl_module, batch)) * n
            count += n
        pl_module.train(was_training)
        loss = total / max(count, 1)
        self.curve.append(ValidationPoint(self.train_seconds, self.tokens, trainer.global_step, loss))
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics({"val/loss": loss, "val/seconds": self.curve[-1].seconds},
                                       step=trainer.global_step)
