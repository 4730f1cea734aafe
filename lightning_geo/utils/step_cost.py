"""Count what a training step costs a launch-bound GPU: dispatched kernels and host syncs, exactly, on any device.

A small or medium model's GPU step is launch-bound: its time follows the number of kernels launched and the
host syncs that stall the launch queue, not the arithmetic. Both are counted here with a
``TorchDispatchMode``, so the count is the same on a CPU as on a GPU and has no noise:

- *ops*: every aten op dispatched that is not a view (``OpOverload.is_view`` false; a view launches no
  kernel). Composite ops are seen after their decomposition, so one op is about one kernel launch.
- *syncs*: ops that make the host wait for the device's result: ``_local_scalar_dense`` (``.item()``,
  ``float(t)``, ``bool(t)``), ``nonzero``, ``is_nonzero``, ``equal``, ``masked_select``, the ``unique``
  family and boolean-mask indexing (``x[mask]``, ``x[mask] = v``); plus Python-level ``Tensor.tolist``,
  ``Tensor.numpy`` and ``Tensor.cpu`` calls, patched while the counter is active.

``measure_step_cost`` takes the difference of two runs of different lengths, so set-up (model
construction, the first step's state initialisation, the end of fit) cancels and what is left is the
steady-state per-step cost, periodic work (a probe every N steps) included as its average.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Op packets whose result the host must read before it can go on (names of ``torch.ops.aten`` packets).
SYNC_OPS: frozenset[str] = frozenset(
    {
        "_local_scalar_dense",
        "nonzero",
        "is_nonzero",
        "equal",
        "masked_select",
        "unique",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "unique_dim_consecutive",
    }
)
"""aten ops (overload packet names) that force a device-to-host read."""

# Indexing with a boolean mask computes the mask's nonzero positions on the host's behalf.
_MASK_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
_PATCHED_METHODS = ("tolist", "numpy", "cpu")


def _is_mask_index(name: str, args: tuple[Any, ...]) -> bool:
    if name not in _MASK_INDEX_OPS or len(args) < 2:
        return False
    indices = args[1]
    return isinstance(indices, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


class StepCostCounter(TorchDispatchMode):
    """Counts non-view aten ops and host syncs dispatched while it is active (a context manager).

    Attributes:
        ops: Non-view aten ops dispatched so far.
        syncs: Host syncs so far (sync ops, boolean-mask indexing and ``tolist``/``numpy``/``cpu`` calls).
        ops_by_name: ``Counter`` of the non-view ops by overload packet name (``"mul_"``, ``"addmm"``, ...).
        syncs_by_name: ``Counter`` of the syncs by name (an op's packet name, ``"mask_index"``, or
            ``"Tensor.tolist"`` / ``"Tensor.numpy"`` / ``"Tensor.cpu"``).

    Only the thread that enters it is counted (DataLoader worker processes are not). Nested ops (what an op
    calls inside its own implementation) are not seen: one dispatched op is one count.

    Example:
        ```python
        with StepCostCounter() as counter:
            loss = model(x).sum(); loss.backward(); optimizer.step()
        print(counter.ops, counter.syncs)
        ```
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.ops_by_name: Counter[str] = Counter()
        self.syncs_by_name: Counter[str] = Counter()
        self._originals: dict[str, Any] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if not func.is_view:
            self.ops += 1
            self.ops_by_name[name] += 1
        if name in SYNC_OPS:
            self._sync(name)
        elif _is_mask_index(name, args):
            self._sync("mask_index")
        return func(*args, **(kwargs or {}))

    def _sync(self, name: str) -> None:
        self.syncs += 1
        self.syncs_by_name[name] += 1

    def __enter__(self) -> StepCostCounter:
        for method in _PATCHED_METHODS:
            original = getattr(torch.Tensor, method)
            self._originals[method] = original
            setattr(torch.Tensor, method, self._counting(method, original))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for method, original in self._originals.items():
                setattr(torch.Tensor, method, original)
            self._originals.clear()

    def _counting(self, method: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self._sync(f"Tensor.{method}")
            return original(tensor, *args, **kwargs)

        counted.__name__ = method
        counted.__doc__ = original.__doc__
        return counted


@dataclass(frozen=True)
class StepCost:
    """Per-step cost: the difference of two counted runs divided by their difference in steps.

    Attributes:
        ops: Non-view aten ops per step.
        syncs: Host syncs per step.
        ops_by_name: Ops per step by packet name (non-zero entries only).
        syncs_by_name: Syncs per step by name (non-zero entries only).
    """

    ops: float
    syncs: float
    ops_by_name: dict[str, float] = field(default_factory=dict)
    syncs_by_name: dict[str, float] = field(default_factory=dict)


def _per_step(long: Counter[str], short: Counter[str], steps: int) -> dict[str, float]:
    names = set(long) | set(short)
    per_step = {name: (long[name] - short[name]) / steps for name in names}
    return {name: value for name, value in sorted(per_step.items()) if value}


def measure_step_cost(run: Callable[[int], Any], *, short_steps: int = 8, long_steps: int = 16) -> StepCost:
    """Count ``run(short_steps)`` and ``run(long_steps)`` and return the per-step difference.

    Args:
        run: Builds everything it needs (model, Trainer) and trains for the given number of optimizer steps,
            e.g. ``lambda n: Trainer(max_steps=n, ...).fit(make_model(), data)``. Both calls must do the same
            set-up, so that only the extra steps differ.
        short_steps: Steps of the shorter run. Default 8.
        long_steps: Steps of the longer run; must exceed ``short_steps``. Default 16.

    Returns:
        The steady-state cost of one step (work done every N steps counts as 1/N of it per step).

    Raises:
        ValueError: if ``short_steps < 1`` or ``long_steps <= short_steps``.
    """
    if short_steps < 1:
        raise ValueError(f"short_steps={short_steps!r} must be >= 1")
    if long_steps <= short_steps:
        raise ValueError(f"long_steps={long_steps!r} must be greater than short_steps={short_steps!r}")
    counts = []
    for steps in (short_steps, long_steps):
        with StepCostCounter() as counter:
            run(steps)
        counts.append(counter)
    short, long = counts
    steps = long_steps - short_steps
    return StepCost(
        ops=(long.ops - short.ops) / steps,
        syncs=(long.syncs - short.syncs) / steps,
        ops_by_name=_per_step(long.ops_by_name, short.ops_by_name, steps),
        syncs_by_name=_per_step(long.syncs_by_name, short.syncs_by_name, steps),
    )
