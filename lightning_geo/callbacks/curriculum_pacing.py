"""How fast [`DynamicCurriculum`][lightning_geo.callbacks.DynamicCurriculum] admits harder data.

Three pieces, each a small pure object so they are tested without a Trainer:

- ``Deadline``: when the threshold must reach 100%: a share of the training run, or a number of
  steps, epochs, samples or tokens (``"0.5"``, ``"2000 steps"``, ``"3 epochs"``, ``"2M tokens"``).
- ``fixed_pace``: the fixed pacing functions ``linear``, ``root`` (Platanios et al. 2019) and
  ``step`` (a staircase), threshold as a function of the progress towards the deadline.
- ``MasteryEstimator``: the model's mastery of the data it has, from the slope of its smoothed
  training loss: 1 when the loss has settled (improvement stalled), 0 while it still moves fast.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

PACINGS: tuple[str, ...] = ("mastery", "linear", "root", "step")
"""``mastery`` is driven by ``MasteryEstimator``, never slower than ``linear``; the others are fixed."""

DEADLINE_UNITS: tuple[str, ...] = ("steps", "epochs", "samples", "tokens", "seconds")

_LEARNED = 0.05  # relative fall of the smoothed loss below its first window before a plateau counts as mastery

_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
_DEADLINE_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbg]?)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Deadline:
    """When the curriculum must admit all data.

    Attributes:
        amount: How much of ``unit`` (a share in (0, 1] for ``unit="fraction"``).
        unit: ``"fraction"`` (of the Trainer's optimizer steps), ``"steps"``, ``"epochs"``, ``"samples"``
            (summed over ranks), ``"tokens"`` (summed over ranks) or ``"seconds"`` (spent inside training
            batches, each rank's clock).
    """

    amount: float
    unit: str

    @classmethod
    def parse(cls, value: float | int | str) -> Deadline:
        """Read ``0.5`` / ``"0.5"`` (a share of training), ``"2000 steps"``, ``"3 epochs"``, ``"50k samples"``,
        ``"2M tokens"`` (suffixes k, M, B; singular units work too) or ``"30s"`` / ``"30 seconds"`` (seconds spent
        in training batches, for runs budgeted in time).

        Raises:
            ValueError: naming ``deadline`` for anything else, a share outside (0, 1] or a count below 1.
        """
        allowed = ("a share of training in (0, 1] (e.g. 0.5) or '<N> steps|epochs|samples|tokens|seconds' "
                   "(e.g. '2M tokens', '30s')")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"deadline={value!r} is not {allowed}")
        match = _DEADLINE_PATTERN.match(str(value))
        if match is None:
            raise ValueError(f"deadline={value!r} is not {allowed}")
        amount = float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
        unit = match.group(3).lower()
        if unit in ("s", "sec", "secs"):
            unit = "seconds"
        if unit and not unit.endswith("s"):
            unit += "s"
        if not unit:
            if match.group(2) or not 0.0 < amount <= 1.0:
                raise ValueError(
                    f"deadline={value!r}: a share of training must be in (0, 1]; "
                    f"for a count name its unit, e.g. '{value} steps'"
                )
            return cls(amount, "fraction")
        if unit not in DEADLINE_UNITS:
            raise ValueError(
                f"deadline={value!r}: unknown unit {match.group(3)!r}; expected one of {list(DEADLINE_UNITS)}"
            )
        if amount < 1:
            raise ValueError(f"deadline={value!r} must be at least 1 {unit[:-1]}")
        return cls(amount, unit)

    def __str__(self) -> str:
        return f"{self.amount:g} of training" if self.unit == "fraction" else f"{self.amount:,.6g} {self.unit}"


def fixed_pace(kind: str, progress: float, start: float, *, num_stairs: int = 4) -> float:
    """Threshold (share of data admitted) at ``progress`` in [0, 1] towards the deadline.

    Args:
        kind: ``"linear"``: ``start + (1 - start) * p``; ``"root"``: ``sqrt(p * (1 - start^2) + start^2)``
            (Platanios et al. 2019, fast early); ``"step"``: ``num_stairs`` equal jumps, the last at ``p = 1``.
        progress: Share of the way to the deadline; values beyond 1 give 1.
        start: Threshold at ``progress = 0``, in (0, 1].
        num_stairs: Jumps of the ``step`` pacing. Default 4.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    p = min(max(progress, 0.0), 1.0)
    if p >= 1.0 and kind in PACINGS:
        return 1.0  # exactly: start + (1 - start) can round below 1, and a threshold under 1 means "not done"
    if kind in ("linear", "mastery"):
        return start + (1.0 - start) * p
    if kind == "root":
        return min(1.0, math.sqrt(p * (1.0 - start * start) + start * start))
    if kind == "step":
        return start + (1.0 - start) * math.floor(p * num_stairs + 1e-9) / num_stairs
    raise ValueError(f"pacing={kind!r} is not one of {list(PACINGS)}")


class MasteryEstimator:
    """Mastery in [0, 1] of the data admitted so far, from how much the smoothed training loss still moves.

    The loss is smoothed with an exponential moving average (half-life ``window / 4`` updates). Mastery
    compares the average now with the average ``window`` updates ago: a relative change ``r`` gives
    ``mastery = clip(1 - |r| / tolerance, 0, 1)``. A loss that still falls fast means the model is still
    learning what it has (0); a loss that rose because harder data was just admitted also reads as 0
    until it settles; a flat loss reads as 1 (improvement has stalled: admit more). Mastery stays 0 until
    the smoothed loss has once fallen by 5% (or ``tolerance``, if smaller) below its first full window's
    average: a model stuck at chance is flat too, and a plateau without learning is not mastery. Until
    ``window`` updates have been seen, mastery is 0.

    Args:
        window: Updates (training batches) between the two averages compared. Default 50.
        tolerance: Relative loss change per window that still counts as learning. Default 0.02 (2%).

    Raises:
        ValueError: if ``window < 2`` or ``tolerance <= 0``.
    """

    def __init__(self, window: int = 50, tolerance: float = 0.02) -> None:
        if not isinstance(window, int) or window < 2:
            raise ValueError(f"mastery_window={window!r} must be an integer >= 2")
        if not tolerance > 0:
            raise ValueError(f"mastery_tolerance={tolerance!r} must be positive")
        self.window = window
        self.tolerance = tolerance
        self._beta = 0.5 ** (4.0 / window)
        self._average = 0.0
        self._updates = 0
        self._history: deque[float] = deque(maxlen=window + 1)
        self._first: float | None = None  # the smoothed loss one window in: the reference for "has learned"
        self._learned = False  # the loss has once fallen enough below _first; stays True
        self.mastery = 0.0

    def update(self, loss: float) -> float:
        """Take one training loss (a non-finite loss is ignored) and return the new mastery."""
        if not math.isfinite(loss):
            return self.mastery
        self._updates += 1
        self._average = self._beta * self._average + (1.0 - self._beta) * loss
        smoothed = self._average / (1.0 - self._beta**self._updates)  # bias-corrected, as in Adam
        self._history.append(smoothed)
        if len(self._history) <= self.window:
            return self.mastery
        before = self._history[0]
        if self._first is None:
            self._first = before
        change = abs(before - smoothed) / max(abs(before), 1e-12)
        fall = (self._first - smoothed) / max(abs(self._first), 1e-12)
        self._learned = self._learned or fall >= min(self.tolerance, _LEARNED)
        self.mastery = min(1.0, max(0.0, 1.0 - change / self.tolerance)) if self._learned else 0.0
        return self.mastery

    def state_dict(self) -> dict[str, Any]:
        """Plain-typed state for the checkpoint."""
        return {
            "average": self._average,
            "updates": self._updates,
            "history": list(self._history),
            "first": self._first,
            "learned": self._learned,
            "mastery": self.mastery,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``'s output."""
        self._average = float(state["average"])
        self._updates = int(state["updates"])
        self._history = deque((float(v) for v in state["history"]), maxlen=self.window + 1)
        self._first = None if state["first"] is None else float(state["first"])
        self._learned = bool(state["learned"])
        self.mastery = float(state["mastery"])


def next_threshold(
    pacing: str,
    *,
    threshold: float,
    start: float,
    progress: float,
    progress_step: float,
    mastery: float,
    max_speedup: float,
) -> float:
    """The threshold after one training batch.

    Fixed pacings return ``fixed_pace`` at ``progress``. ``"mastery"`` grows the threshold by
    ``mastery * max_speedup`` times the linear pace's growth over this batch (``progress_step``), and
    never lets it fall behind the linear pace, so it reaches 1 by the deadline at the latest. The
    threshold never decreases.
    """
    floor = fixed_pace(pacing, progress, start)
    if pacing != "mastery":
        return max(threshold, floor)
    grown = threshold + mastery * max_speedup * (1.0 - start) * max(progress_step, 0.0)
    return min(1.0, max(floor, grown))
