"""The loss-scale rule: predict the next gradient amax from its history and pick the power of two that fits.

GradScaler finds its scale by overflowing on purpose. Here the scale follows from a prediction instead
(the rule of Transformer Engine's delayed scaling, applied to fp16 loss scaling):

```python
scale = 2 ** floor(log2(FP16_MAX / (predicted_amax * headroom)))
```

clamped to ``[min_scale, max_scale]``. A power of two keeps scaling and unscaling exact.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

FP16_MAX = 65504.0
"""Largest finite float16 value."""


def power_of_two_scale(amax: float, headroom: float, min_scale: float, max_scale: float) -> float:
    """The largest power of two ``s`` with ``amax * s * headroom <= FP16_MAX``, clamped to the bounds.

    Args:
        amax: Predicted largest absolute unscaled gradient value. ``0`` (nothing measured, or every
            gradient zero) gives ``max_scale``.
        headroom: Factor (>= 1) of room kept between the scaled prediction and the fp16 maximum.
        min_scale: Lower bound of the result; a result below it is returned as is, so the caller can
            tell a collapse (see [`PredictiveScalingPrecision`][lightning_geo.precision.PredictiveScalingPrecision]).
        max_scale: Upper bound of the result.
    """
    if not math.isfinite(amax):
        raise ValueError(f"amax={amax!r} must be finite")
    if amax <= 0.0:
        return max_scale
    exponent = math.floor(math.log2(FP16_MAX / (amax * headroom)))
    return min(max_scale, 2.0**exponent)


class AmaxPredictor:
    """Predicts the next step's gradient amax as the largest of the last ``window`` observations.

    The maximum over a window (Transformer Engine's ``amax_compute_algo="max"``) reacts at once to a
    rise and forgets a spike after ``window`` steps. Because the next amax does exceed the recent
    maximum now and then (by more than 2x on ~1% of steps in our pilot), the caller keeps a headroom
    and the overflow check as a safety net.

    Args:
        window: Observations kept. Default 16.
    """

    def __init__(self, window: int = 16) -> None:
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window={window!r} must be a positive integer")
        self.window = window
        self.history: deque[float] = deque(maxlen=window)

    def observe(self, amax: float) -> None:
        """Record a finite, positive unscaled amax; zeros and non-finite values carry no information."""
        if math.isfinite(amax) and amax > 0.0:
            self.history.append(float(amax))

    def predict(self) -> float | None:
        """The predicted amax, or ``None`` before the first observation."""
        return max(self.history) if self.history else None

    def state_dict(self) -> dict[str, Any]:
        """The history, for checkpoints."""
        return {"window": self.window, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore [`state_dict`][lightning_geo.precision.AmaxPredictor.state_dict]'s output (the window may differ: the
        newest entries are kept)."""
        self.history = deque((float(v) for v in state["history"]), maxlen=self.window)
