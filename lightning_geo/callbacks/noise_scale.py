"""The gradient noise scale ``B_simple = tr(Σ) / |G|²`` from gradient norms measured at two batch sizes.

McCandlish et al. (2018), "An Empirical Model of Large-Batch Training", appendix A. For a batch of ``B`` samples
drawn independently, the expected squared norm of the mean gradient is ``E|g_B|² = |G|² + tr(Σ) / B``, where ``G``
is the true gradient and ``Σ`` the per-sample gradient covariance. Two batch sizes ``B_small < B_big`` give two
equations, hence unbiased estimates of both terms:

```text
|G|²  ≈ (B_big |g_big|² - B_small |g_small|²) / (B_big - B_small)
tr(Σ) ≈ (|g_small|² - |g_big|²) / (1 / B_small - 1 / B_big)
```

Each single estimate is very noisy (either may be negative), and the ratio of two noisy numbers is biased, so, as
the paper recommends, the numerator and the denominator are averaged separately (exponential moving averages) and
divided only when the noise scale is read. Both averages share one weight, so their bias towards the zero start
cancels in the ratio; ``gradient_sq`` and ``trace_sigma`` divide it out.

The batch sizes may be in any unit (samples, sequences, micro-batches); the noise scale comes out in the same unit.
This module is plain arithmetic on Python floats: measuring the norms, and agreeing on them across ranks, is the
caller's work (see [BatchSizeSchedule][lightning_geo.callbacks.BatchSizeSchedule]).
"""

from __future__ import annotations

import math
from typing import Any


def noise_scale_terms(small_sq: float, big_sq: float, b_small: float, b_big: float) -> tuple[float, float]:
    """One unbiased estimate of ``(|G|², tr(Σ))`` from squared gradient norms at two batch sizes.

    Args:
        small_sq: ``|g_small|²``, the squared norm of the mean gradient over a batch of ``b_small`` samples.
        big_sq: ``|g_big|²``, the same over a batch of ``b_big`` samples.
        b_small, b_big: The two batch sizes, ``0 < b_small < b_big`` (any unit, the same for both).

    Returns:
        ``(gradient_sq, trace_sigma)``: the estimates of ``|G|²`` and ``tr(Σ)`` (per unit of batch size).

    Raises:
        ValueError: if not ``0 < b_small < b_big``.

    Example:
        ```python
        gradient_sq, trace_sigma = noise_scale_terms(small_sq=2.0, big_sq=1.2, b_small=8, b_big=16)
        ```
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"the batch sizes must satisfy 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}")
    gradient_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace_sigma = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return gradient_sq, trace_sigma


class GradientNoiseScale:
    """Moving averages of ``|G|²`` and ``tr(Σ)`` and their ratio, the simple noise scale ``B_simple``.

    Args:
        ema: Weight of the old value in both moving averages, in ``[0, 1)`` (default 0.9; 0 keeps the last
            estimate only).

    Raises:
        ValueError: if ``ema`` is not in ``[0, 1)``.

    Example:
        ```python
        estimator = GradientNoiseScale(ema=0.9)
        estimator.update(small_sq=2.0, big_sq=1.2, b_small=8, b_big=16)
        estimator.noise_scale  # in the unit of b_small and b_big (here samples)
        ```
    """

    def __init__(self, ema: float = 0.9) -> None:
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 <= ema < 1.0:
            raise ValueError(f"GradientNoiseScale: `ema` must be a number in [0, 1), got {ema!r}")
        self.ema = float(ema)
        self._gradient_sq = 0.0  # EMA of the |G|² estimates, not yet divided by the weight
        self._trace_sigma = 0.0  # EMA of the tr(Σ) estimates, same weight
        self._weight = 0.0  # 1 - ema ** num_updates: the bias of both averages towards their zero start
        self.num_updates = 0

    def update(self, small_sq: float, big_sq: float, b_small: float, b_big: float) -> None:
        """Fold one measurement into the averages (arguments as for ``noise_scale_terms``).

        Non-finite norms (an overflowing fp16 step) are ignored.
        """
        if not (math.isfinite(small_sq) and math.isfinite(big_sq)):
            return
        gradient_sq, trace_sigma = noise_scale_terms(small_sq, big_sq, b_small, b_big)
        keep = self.ema
        self._gradient_sq = keep * self._gradient_sq + (1.0 - keep) * gradient_sq
        self._trace_sigma = keep * self._trace_sigma + (1.0 - keep) * trace_sigma
        self._weight = keep * self._weight + (1.0 - keep)
        self.num_updates += 1

    @property
    def gradient_sq(self) -> float:
        """The averaged estimate of ``|G|²`` (NaN before the first update)."""
        return self._gradient_sq / self._weight if self._weight > 0 else math.nan

    @property
    def trace_sigma(self) -> float:
        """The averaged estimate of ``tr(Σ)``, per unit of batch size (NaN before the first update)."""
        return self._trace_sigma / self._weight if self._weight > 0 else math.nan

    @property
    def noise_scale(self) -> float:
        """``B_simple = tr(Σ) / |G|²`` from the averages, in the unit of the batch sizes given to ``update``.

        NaN before the first update and while either average is not positive (the gradient is still lost in its
        noise: no estimate yet).
        """
        if self._weight <= 0 or self._gradient_sq <= 0 or self._trace_sigma <= 0:
            return math.nan
        return self._trace_sigma / self._gradient_sq

    def state_dict(self) -> dict[str, Any]:
        """The averages as plain floats and ints."""
        return {
            "ema": self.ema,
            "gradient_sq": self._gradient_sq,
            "trace_sigma": self._trace_sigma,
            "weight": self._weight,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (the ``ema`` setting stays the one given to ``__init__``)."""
        self._gradient_sq = float(state_dict["gradient_sq"])
        self._trace_sigma = float(state_dict["trace_sigma"])
        self._weight = float(state_dict["weight"])
        self.num_updates = int(state_dict["num_updates"])


__all__ = ["GradientNoiseScale", "noise_scale_terms"]
