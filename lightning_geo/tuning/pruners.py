"""Pruning rules: stop a trial early when its intermediate results say it will not win.

A rule sees the running trial's reports and the *curves of finished trials* (their intermediate reports and
final values). Both rules compare best-so-far values, which are robust to a noisy validation:

- [`MedianPruner`][lightning_geo.tuning.MedianPruner] (the rule of Google Vizier and Optuna's default): prune when the
  trial's best value so far is worse than the median of the finished trials' best values at the same step.
- [`CurvePruner`][lightning_geo.tuning.CurvePruner] (model-based): forecast the trial's final value from how much
  finished trials still improved after the same step (an additive learning-curve model), and prune when even the most
  optimistic forecast cannot beat the best final value so far. It prunes later than the median rule and kills fewer
  trials that would have won.
"""

from __future__ import annotations

import statistics
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lightning_geo.utils.checks import check_number

Curve = Sequence[tuple[int, float]]
"""Intermediate reports of one trial: ``(step, value)`` pairs in reporting order."""


@dataclass(frozen=True)
class FinishedCurve:
    """A finished trial as a pruner sees it: its reports and its final value (``None`` if it failed)."""

    reports: tuple[tuple[int, float], ...]
    final: float | None


def _best_until(curve: Curve, step: int, sign: float) -> float | None:
    """Best value (``sign=-1``: smallest) among the reports at or before ``step``; ``None`` if there is none."""
    values = [v for s, v in curve if s <= step]
    if not values:
        return None
    return min(values) if sign < 0 else max(values)


class PruningRule(Protocol):
    """What a running trial asks after a report: a [`Pruner`][lightning_geo.tuning.Pruner], or an Optuna pruner bound to
    one trial of an Optuna study (``OptunaTrialPruner``)."""

    def should_prune(self, reports: Curve, finished: Sequence[FinishedCurve], mode: str) -> bool:
        """Whether the trial with ``reports`` (its latest last) should stop."""


class Pruner(ABC):
    """Decides from intermediate reports whether a running trial should stop.

    Args:
        n_startup_trials: Finished trials needed before anything is pruned. Default 5.
        n_warmup_steps: Reports at a step below this are never pruned (training is noisy at the start).
            Default 0.

    Raises:
        ValueError: for a ``n_startup_trials`` that is not a positive integer or a ``n_warmup_steps`` that is not a
            non-negative integer.
    """

    def __init__(self, *, n_startup_trials: int = 5, n_warmup_steps: int = 0) -> None:
        if isinstance(n_startup_trials, bool) or not isinstance(n_startup_trials, int) or n_startup_trials < 1:
            raise ValueError(f"n_startup_trials={n_startup_trials!r} must be a positive integer")
        if isinstance(n_warmup_steps, bool) or not isinstance(n_warmup_steps, int) or n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps={n_warmup_steps!r} must be a non-negative integer")
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def should_prune(self, reports: Curve, finished: Sequence[FinishedCurve], mode: str) -> bool:
        """Whether the trial with ``reports`` (its latest last) should stop.

        Args:
            reports: The running trial's ``(step, value)`` reports so far.
            finished: The finished trials of the study (completed or pruned) known when the trial started.
            mode: ``"min"`` or ``"max"``.
        """
        if not reports:
            return False
        step = reports[-1][0]
        usable = [c for c in finished if c.reports and c.final is not None]
        if step < self.n_warmup_steps or len(usable) < self.n_startup_trials:
            return False
        sign = -1.0 if mode == "min" else 1.0
        best = _best_until(reports, step, sign)
        assert best is not None
        return self._prune(best, step, usable, sign)

    @abstractmethod
    def _prune(self, best: float, step: int, finished: Sequence[FinishedCurve], sign: float) -> bool:
        """The rule; ``sign * value`` is larger for better values."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_startup_trials={self.n_startup_trials}, n_warmup_steps={self.n_warmup_steps})"


class MedianPruner(Pruner):
    """Prune a trial whose best value so far is worse than the median of the finished trials' at the same step.

    Args:
        n_startup_trials: Finished trials needed before anything is pruned. Default 5.
        n_warmup_steps: Reports at a step below this are never pruned. Default 0.
    """

    def _prune(self, best: float, step: int, finished: Sequence[FinishedCurve], sign: float) -> bool:
        others = [b for c in finished if (b := _best_until(c.reports, step, sign)) is not None]
        if len(others) < self.n_startup_trials:
            return False
        return sign * best < sign * statistics.median(others)


class CurvePruner(Pruner):
    """Prune a trial when an optimistic forecast of its final value cannot beat the best final value so far.

    The forecast is the trial's best value so far plus the improvement that finished trials made after the
    same step, taking the ``optimism`` quantile of those improvements (the default 0.9: nearly the largest).

    Args:
        optimism: Quantile in ``(0, 1]`` of the finished trials' later improvements used for the forecast;
            higher prunes less. Default 0.9.
        n_startup_trials: Finished trials needed before anything is pruned. Default 5.
        n_warmup_steps: Reports at a step below this are never pruned. Default 0.

    Raises:
        TypeError: for an ``optimism`` that is not a number.
        ValueError: for an ``optimism`` outside ``(0, 1]``, and as [`Pruner`][lightning_geo.tuning.Pruner] does.
    """

    def __init__(self, *, optimism: float = 0.9, n_startup_trials: int = 5, n_warmup_steps: int = 0) -> None:
        super().__init__(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
        self.optimism = check_number("CurvePruner", "optimism", optimism, 0, 1, low_open=True)

    def _prune(self, best: float, step: int, finished: Sequence[FinishedCurve], sign: float) -> bool:
        gains = []
        for curve in finished:
            then = _best_until(curve.reports, step, sign)
            if then is not None and curve.final is not None:
                gains.append(max(0.0, sign * curve.final - sign * then))  # how much it still improved
        if len(gains) < self.n_startup_trials:
            return False
        gains.sort()
        optimistic_gain = gains[min(len(gains) - 1, int(self.optimism * len(gains)))]
        best_final = max(sign * c.final for c in finished if c.final is not None)
        return sign * best + optimistic_gain < best_final


def make_pruner(pruner: str | Pruner | None) -> Pruner | None:
    """Turn ``"median"``, ``"curve"``, ``None`` or a [`Pruner`][lightning_geo.tuning.Pruner] into a pruner (``None``:
    never prune).

    Raises:
        ValueError: for anything else; ``GeoTuner`` takes Optuna pruners before calling this.
    """
    if pruner is None or isinstance(pruner, Pruner):
        return pruner
    rules = {"median": MedianPruner, "curve": CurvePruner}
    if not isinstance(pruner, str) or pruner not in rules:
        hint = f" (a class: pass an instance, e.g. {pruner.__name__}())" if isinstance(pruner, type) else ""
        raise ValueError(f"pruner={pruner!r} is not one of {[*rules, None]}, a Pruner instance or, with an Optuna "
                         f"storage, an optuna.pruners.BasePruner instance{hint}")
    return rules[pruner]()
