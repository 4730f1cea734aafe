"""Gradient sparsity statistics per parameter: row density, element density and per-row hit counts.

A *row* is an index along dim 0 (a token's embedding row, an output unit of a ``Linear``); a row
is *touched* in a step when any element of its gradient is non-zero (for a sparse gradient: when
the gradient lists it). For 0-D and 1-D parameters every element is its own row.

The tracker is pure torch (no Lightning): ``SparsityAwareLR`` drives it, and it can be used in a
plain training loop too:

```python
tracker = GradientSparsityTracker(model.named_parameters(), hit_count_names={"emb.weight"})
loss.backward()
tracker.update(tracker.measure())
tracker.row_density["emb.weight"]  # EMA of the share of rows touched per step
```

Without a host read per step:
[`GradientSparsityTracker.accumulate`][lightning_geo.callbacks.GradientSparsityTracker.accumulate] adds each step's
touched rows on the device, and [`GradientSparsityTracker.flush`][lightning_geo.callbacks.GradientSparsityTracker.flush]
reads the steps since the last flush in one host sync.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from typing import Any

import torch
from torch import Tensor

from lightning_geo.utils.distributed import local_part
from lightning_geo.utils.rows import touched_rows


def gradient_densities(
    grad: Tensor, *, count_elements: bool = True, touched: Tensor | None = None
) -> tuple[float, float, Tensor]:
    """``(row_density, element_density, touched_rows)`` of one gradient, densities in [0, 1].

    Cost: two row reductions over the gradient (none when the caller knows the ``touched`` row
    mask already, e.g. from an embedding's looked-up indices), plus (``count_elements``) a non-zero
    count over the touched rows only. Without ``count_elements`` the element density is NaN.
    ``grad`` may be one rank's shard of a larger gradient while ``touched`` covers all rows (looked-up
    indices under FSDP2): the row density is then the whole parameter's, the element density the shard's.
    """
    if grad.is_sparse:
        grad = grad.coalesce()
    if touched is None:
        touched = touched_rows(grad)
    num_touched = int(touched.sum())
    if not count_elements:
        elements = float("nan")
    elif grad.is_sparse:
        elements = int(grad.values().count_nonzero())
    elif grad.dim() >= 2 and num_touched < touched.numel() and touched.numel() == grad.shape[0]:
        elements = int(torch.count_nonzero(grad[touched]))
    elif grad.dim() >= 2:
        elements = int(torch.count_nonzero(grad))
    else:
        elements = num_touched
    return num_touched / max(touched.numel(), 1), elements / max(grad.numel(), 1), touched


class GradientSparsityTracker:
    """Exponential moving averages of the gradient density of every parameter, and row hit counts.

    Args:
        named_parameters: ``(name, parameter)`` pairs, e.g. ``model.named_parameters()``; frozen
            parameters (``requires_grad=False``) are skipped.
        ema: weight of the old value in the moving averages, in [0, 1) (default 0.9: roughly the
            last 10 measurements). The first measurement initialises the average.
        hit_count_names: names of the parameters whose per-row hit counts are kept (int64,
            ``[rows]``); usually the embedding-like ones. Default: none.

    Attributes:
        row_density: ``{name: EMA of the share of rows touched per step}``.
        element_density: ``{name: EMA of the share of non-zero gradient elements}``.
        hit_counts: ``{name: int64 tensor [rows]}`` steps in which each row was touched.
        measurements: how many times ``update`` ran.
    """

    def __init__(
        self,
        named_parameters: Iterable[tuple[str, Tensor]],
        *,
        ema: float = 0.9,
        hit_count_names: Collection[str] = (),
    ) -> None:
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 <= ema < 1.0:
            raise ValueError(f"`ema` must be a number in [0, 1), got {ema!r}")
        self.ema = float(ema)
        self.parameters: dict[str, Tensor] = {n: p for n, p in named_parameters if p.requires_grad}
        unknown = sorted(set(hit_count_names) - set(self.parameters))
        if unknown:
            raise ValueError(f"`hit_count_names` names parameters that do not exist or are frozen: {unknown}")
        self.hit_count_names = tuple(hit_count_names)
        self.row_density: dict[str, float] = {}
        self.element_density: dict[str, float] = {}
        self.hit_counts: dict[str, Tensor] = {}
        self.measurements = 0
        self.last_touched: dict[str, Tensor] = {}
        self._pending_rows: dict[str, Tensor] = {}  # name -> rows touched, summed over the pending steps (device)
        self._pending_total: dict[str, int] = {}  # name -> rows per step
        self.pending_steps = 0

    def accumulate(self, touched: dict[str, Tensor]) -> None:
        """Add one step's touched-row masks ``{name: bool [rows]}``: row counts and hit counts stay on the
        device (two small kernels per parameter, no host read) until
        [`flush`][lightning_geo.callbacks.GradientSparsityTracker.flush]."""
        for name, mask in touched.items():
            count = mask.sum()
            pending = self._pending_rows.get(name)
            self._pending_rows[name] = count if pending is None else pending + count
            self._pending_total[name] = mask.numel()
        self.last_touched = dict(touched)
        self._add_hits()
        self.pending_steps += 1

    def flush(self, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Fold the steps accumulated since the last flush into the row-density averages: their mean share of
        rows touched per step enters the moving average with weight ``1 - ema ** steps`` (for one step, as
        [`update`][lightning_geo.callbacks.GradientSparsityTracker.update]). One host read for all parameters;
        ``reduce`` as in [`update`][lightning_geo.callbacks.GradientSparsityTracker.update]."""
        if not self.pending_steps or not self._pending_rows:
            self.pending_steps = 0
            return
        names = sorted(self._pending_rows)
        counts = torch.stack([self._pending_rows[n] for n in names]).to(torch.float64)
        counts = counts / torch.tensor([float(self._pending_total[n]) for n in names], dtype=torch.float64,
                                       device=counts.device)
        if reduce is not None:
            counts = reduce(counts).to(torch.float64)
        shares = counts.tolist()  # the one host read
        decay = self.ema**self.pending_steps
        for name, share in zip(names, shares, strict=True):
            rows = share / self.pending_steps
            old = self.row_density.get(name)
            self.row_density[name] = rows if old is None else decay * old + (1.0 - decay) * rows
        self._pending_rows.clear()
        self.pending_steps = 0
        self.measurements += 1

    def measure(
        self,
        names: Iterable[str] | None = None,
        *,
        count_elements: bool = True,
        touched: dict[str, Tensor] | None = None,
    ) -> dict[str, tuple[float, float]]:
        """This step's ``{name: (row_density, element_density)}`` of every parameter with a gradient.

        Args:
            names: measure only these parameters (e.g. those of one optimizer); default all.
            count_elements: also count non-zero elements (default True); otherwise the element
                density is NaN and [`update`][lightning_geo.callbacks.GradientSparsityTracker.update] keeps the previous
                average.
            touched: ``{name: row mask}`` known without reading the gradient (looked-up rows).

        Also remembers each hit-counted parameter's touched-row mask for
        [`update`][lightning_geo.callbacks.GradientSparsityTracker.update].
        """
        current: dict[str, tuple[float, float]] = {}
        self.last_touched = {}
        for name in self.parameters if names is None else names:
            param = self.parameters.get(name)
            if param is None or param.grad is None:
                continue
            rows, elements, mask = gradient_densities(
                local_part(param.grad), count_elements=count_elements, touched=(touched or {}).get(name)
            )
            current[name] = (rows, elements)
            if name in self.hit_count_names:
                self.last_touched[name] = mask
        return current

    def update(
        self,
        current: dict[str, tuple[float, float]],
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Fold one step's measurement into the moving averages and the hit counts.

        Args:
            current: the output of [`measure`][lightning_geo.callbacks.GradientSparsityTracker.measure].
            reduce: optional cross-rank mean of a 1-D float tensor (under DDP, so every rank keeps
                the same statistics even if its local gradients differed); called once per update
                with all densities stacked. Every rank must call ``update`` with the same names.
        """
        self._fold(current, reduce)
        self._add_hits()
        self.measurements += 1

    def update_diagnostics(
        self,
        current: dict[str, tuple[float, float]],
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Fold a diagnostic measurement ([`measure`][lightning_geo.callbacks.GradientSparsityTracker.measure] on
        logging steps) into the averages; a NaN entry keeps its average. Hit counts and ``measurements`` are left to
        [`accumulate`][lightning_geo.callbacks.GradientSparsityTracker.accumulate]/[`flush`][lightning_geo.callbacks.GradientSparsityTracker.flush]."""
        self._fold(current, reduce)

    def _fold(self, current: dict[str, tuple[float, float]], reduce: Callable[[Tensor], Tensor] | None) -> None:
        names = sorted(current)
        if reduce is not None and names:
            stacked = torch.tensor([v for n in names for v in current[n]], dtype=torch.float64)
            reduced = reduce(stacked).to(torch.float64).tolist()
            current = {n: (reduced[2 * i], reduced[2 * i + 1]) for i, n in enumerate(names)}
        decay = self.ema
        for name in names:
            for averages, value in zip((self.row_density, self.element_density), current[name], strict=True):
                if not math.isnan(value):  # NaN: not measured this time
                    old = averages.get(name)
                    averages[name] = value if old is None else decay * old + (1.0 - decay) * value

    def _add_hits(self) -> None:
        for name, touched in self.last_touched.items():
            if name not in self.hit_count_names:
                continue
            counts = self.hit_counts.get(name)
            if counts is None:
                counts = torch.zeros(touched.numel(), dtype=torch.int64, device=touched.device)
            counts = counts.to(touched.device)
            counts += touched
            self.hit_counts[name] = counts

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly after a resume (hit counts on CPU)."""
        return {
            "ema": self.ema,
            "row_density": dict(self.row_density),
            "element_density": dict(self.element_density),
            "hit_counts": {n: c.detach().cpu().clone() for n, c in self.hit_counts.items()},
            "measurements": self.measurements,
            "pending_rows": {n: c.detach().cpu().clone() for n, c in self._pending_rows.items()},
            "pending_total": dict(self._pending_total),
            "pending_steps": self.pending_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore [`state_dict`][lightning_geo.callbacks.GradientSparsityTracker.state_dict]; hit counts move to their
        parameter's device."""
        self.row_density = dict(state["row_density"])
        self.element_density = dict(state["element_density"])
        self.hit_counts = {}
        for name, counts in state["hit_counts"].items():
            device = self.parameters[name].device if name in self.parameters else counts.device
            self.hit_counts[name] = counts.to(device)
        self.measurements = int(state["measurements"])
        self._pending_total = dict(state.get("pending_total", {}))
        self.pending_steps = int(state.get("pending_steps", 0))
        self._pending_rows = {}
        for name, count in state.get("pending_rows", {}).items():
            device = self.parameters[name].device if name in self.parameters else count.device
            self._pending_rows[name] = count.to(device)
