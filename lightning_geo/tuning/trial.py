"""One trial of a study: its config, its intermediate reports, its pruning decision and where it logs.

A [`Trial`][lightning_geo.tuning.Trial] is handed to the user's ``train_fn(config, trial)``. It is a small picklable
object, so it travels to a subprocess, to the spawned ranks of ``ddp_spawn`` or to a Ray worker. Its reports are
appended to ``<trial log_dir>/reports.jsonl`` (by global rank 0 only, see
[`TrialReporter`][lightning_geo.tuning.TrialReporter]), and the tuner reads them back from there when the trial ends:
that file is what lets a report made inside a spawned process reach the study.
"""

from __future__ import annotations

import enum
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_geo.tuning.pruners import FinishedCurve, PruningRule
from lightning_geo.tuning.reporter import TrialReporter

if TYPE_CHECKING:
    from lightning.pytorch.loggers import TensorBoardLogger


REPORTS_FILE = "reports.jsonl"


class TrialState(str, enum.Enum):
    """How a trial ended (``RUNNING`` while it runs)."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAILED = "FAILED"


class TrialPruned(Exception):  # named for what happened, as Optuna's is
    """Raise it from ``train_fn`` to end a trial as pruned (``TrialReporter`` stops the Trainer without it)."""


@dataclass
class Trial:
    """A running trial, as ``train_fn(config, trial)`` receives it.

    Attributes:
        number: The trial's number in the study (0-based, never reused).
        params: The config to train with (the same dict as ``config``).
        monitor: The metric names the study optimises (``callback_metrics`` keys), first one used for pruning.
        mode: ``"min"`` or ``"max"`` for each monitored metric.
        log_dir: The trial's folder: its TensorBoard run and its reports.
        pruner: The study's pruning rule (``None``: never prune): a ``Pruner``, or the study's Optuna pruner
            bound to this trial.
        finished: The study's finished trials when this one started (what the pruner compares with).
    """

    number: int
    params: dict[str, Any]
    monitor: tuple[str, ...]
    mode: tuple[str, ...]
    log_dir: str
    pruner: PruningRule | None = None
    finished: tuple[FinishedCurve, ...] = ()
    reports: list[tuple[int, float]] = field(default_factory=list)
    pruned: bool = False

    @property
    def reports_path(self) -> Path:
        """``<log_dir>/reports.jsonl``: one JSON line per report (and one when the trial is pruned)."""
        return Path(self.log_dir) / REPORTS_FILE

    def report(self, value: float, step: int) -> None:
        """Record an intermediate value of the first monitored metric at ``step`` (e.g. after a validation).

        Call it on one process only (``TrialReporter`` does so on global rank 0).
        """
        value = float(value)
        self.reports.append((int(step), value))
        self._append({"step": int(step), "value": value if math.isfinite(value) else repr(value)})

    def should_prune(self) -> bool:
        """Whether the pruner says to stop now (and from then on). A non-finite report (a diverged run) stops the
        trial at once, pruner or not; multi-objective trials are not pruned otherwise."""
        if self.pruned:
            return True
        if self.reports and not math.isfinite(self.reports[-1][1]):
            return self._mark_pruned()
        if self.pruner is None or len(self.monitor) > 1:
            return False
        finite = [(s, v) for s, v in self.reports if math.isfinite(v)]
        if self.pruner.should_prune(finite, self.finished, self.mode[0]):
            return self._mark_pruned()
        return False

    def _mark_pruned(self) -> bool:
        self.pruned = True
        self._append({"pruned": True, "step": self.reports[-1][0] if self.reports else 0})
        return True

    def _append(self, record: dict[str, Any]) -> None:
        self.reports_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.reports_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def load_reports(self) -> None:
        """Read the reports and the pruned mark back from [`reports_path`][lightning_geo.tuning.Trial.reports_path]
        (made by any process)."""
        if not self.reports_path.exists():
            return
        reports, pruned = [], False
        for line in self.reports_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            if record.get("pruned"):
                pruned = True
            elif "step" in record:
                reports.append((int(record["step"]), float(record["value"])))
        self.reports, self.pruned = reports, pruned or self.pruned

    def reporter(self) -> TrialReporter:
        """A [`TrialReporter`][lightning_geo.tuning.TrialReporter] callback for this trial's Trainer."""
        return TrialReporter(self)

    def logger(self, **kwargs: Any) -> TensorBoardLogger:
        """A ``TensorBoardLogger`` that writes this trial's run to ``log_dir`` (the study shows it beside the
        other trials, and the tuner adds the trial's hyperparameters and result to its HParams tab).

        Keyword arguments go to ``TensorBoardLogger`` (e.g. ``log_graph``)."""
        from lightning.pytorch.loggers import TensorBoardLogger

        path = Path(self.log_dir)
        kwargs.setdefault("default_hp_metric", False)
        return TensorBoardLogger(save_dir=str(path.parent), name="", version=path.name, **kwargs)


@dataclass
class TrialRecord:
    """A finished trial as the study keeps it (and writes to its storage).

    Attributes:
        number: The trial's number.
        params: Its config.
        state: ``COMPLETE``, ``PRUNED`` or ``FAILED``.
        values: The monitored metrics at the end (``None`` for a failed trial); for a pruned trial, the last
            report.
        reports: Intermediate ``(step, value)`` reports.
        seconds: Wall time of the trial.
        error: The error message and traceback of a failed trial.
    """

    number: int
    params: dict[str, Any]
    state: TrialState
    values: tuple[float, ...] | None
    reports: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def value(self) -> float | None:
        """The first monitored value (``None`` for a failed trial)."""
        return None if self.values is None else self.values[0]

    def curve(self) -> FinishedCurve:
        """The trial as a pruner sees it."""
        return FinishedCurve(tuple(self.reports), self.value)


def values_from_result(result: Any, trial: Trial) -> tuple[float, ...]:
    """The objective values of a trial from what ``train_fn`` returned.

    ``train_fn`` may return a number, a sequence of numbers (one per monitored metric), a mapping holding the
    monitored metrics (e.g. ``trainer.callback_metrics``), or ``None``: then the last value reported for the
    (single) monitored metric is used.

    Raises:
        ValueError: if the monitored value cannot be found.
    """
    names = trial.monitor
    if result is None:
        if len(names) == 1 and trial.reports:
            return (trial.reports[-1][1],)
        raise ValueError(
            f"train_fn returned None and no value of {names[0]!r} was reported: return the metric (or "
            "trainer.callback_metrics), or add trial.reporter() to the Trainer's callbacks"
        )
    if isinstance(result, dict) or hasattr(result, "keys"):
        missing = [name for name in names if name not in result]
        if missing:
            raise ValueError(f"train_fn's result has no {missing}; it has {sorted(result.keys())}")
        return tuple(float(result[name]) for name in names)
    if isinstance(result, Sequence) and not isinstance(result, str):
        if len(result) != len(names):
            raise ValueError(f"train_fn returned {len(result)} values for {len(names)} monitored metrics {names}")
        return tuple(float(v) for v in result)
    return (float(result),)
