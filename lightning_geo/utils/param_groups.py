"""Split an optimizer's param groups without losing settings, state or the LR schedulers' view of them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

# Per-group lists that torch's LR schedulers keep (base_lrs, _last_lr: every scheduler; lr_lambdas:
# LambdaLR/MultiplicativeLR; max_lrs, base/max_momentums: CyclicLR; min_lrs: ReduceLROnPlateau).
# A split group must get an entry equal to its source group's.
_PER_GROUP_SCHEDULER_LISTS = (
    "base_lrs",
    "_last_lr",
    "lr_lambdas",
    "max_lrs",
    "min_lrs",
    "base_momentums",
    "max_momentums",
)


def isolate_parameters(
    optimizer: Optimizer,
    params: Sequence[Tensor],
    schedulers: Iterable[Any] = (),
) -> dict[int, int]:
    """Give each of ``params`` its own param group, copied from the group it was in.

    A parameter that already is alone in its group keeps that group. Split-off groups are
    appended after the existing ones, so indices of existing groups do not change. Optimizer
    state is keyed by the parameter, so it is kept as is; every other key of the source group
    (``lr``, ``betas``, ``weight_decay``, ``initial_lr``, ...) is copied. For every scheduler in
    ``schedulers`` that drives ``optimizer`` (chained and sequential schedulers included), the
    per-group lists (``base_lrs``, ``lr_lambdas``, ...) get the source group's entry, so
    the scheduler keeps scheduling the new groups exactly as it did their source group.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        params: the parameters to isolate; ones the optimizer does not hold are ignored.
        schedulers: LR schedulers, e.g. ``[c.scheduler for c in trainer.lr_scheduler_configs]``.

    Returns:
        ``{id(param): group index}`` for every isolated parameter the optimizer holds.
    """
    placement: dict[int, int] = {}
    sources: list[int] = []  # source group index of each appended group
    for param in params:
        where = next((i for i, g in enumerate(optimizer.param_groups) if any(p is param for p in g["params"])), None)
        if where is None:
            continue
        group = optimizer.param_groups[where]
        if len(group["params"]) == 1:
            placement[id(param)] = where
            continue
        group["params"] = [p for p in group["params"] if p is not param]
        settings = {k: v for k, v in group.items() if k != "params"}
        optimizer.add_param_group({"params": [param], **settings})
        placement[id(param)] = len(optimizer.param_groups) - 1
        sources.append(where)
    if sources:
        n_before = len(optimizer.param_groups) - len(sources)
        for scheduler in schedulers:
            _extend_scheduler(scheduler, optimizer, n_before, sources)
    return placement


def _extend_scheduler(scheduler: Any, optimizer: Optimizer, n_before: int, sources: list[int]) -> None:
    for child in getattr(scheduler, "_schedulers", ()):
        _extend_scheduler(child, optimizer, n_before, sources)
    if getattr(scheduler, "optimizer", None) is not optimizer:
        return
    for name in _PER_GROUP_SCHEDULER_LISTS:
        values = getattr(scheduler, name, None)
        if isinstance(values, list) and len(values) == n_before:
            values.extend(values[i] for i in sources)
