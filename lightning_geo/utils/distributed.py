"""Rank-safe reductions of small tensors through the Trainer's strategy.

GEO parts must agree across ranks on what they decide (a loss scale, a skip, a curriculum threshold);
otherwise ranks diverge or, worse, take different code paths and hang. These helpers reduce through
``trainer.strategy.reduce`` (DDP, FSDP, ModelParallel, ...; a no-op on a single device), so no GEO part
writes its own collective.

Every rank must call them at the same point, with a tensor of the same shape and dtype: they are
collectives. [`local_part`][lightning_geo.utils.local_part] is the one non-collective helper: it reads this rank's shard
of a sharded (FSDP2 / tensor-parallel) tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

import torch

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import Strategy

ReduceOp = Literal["sum", "mean", "max", "min"]
_REDUCE_OPS: tuple[str, ...] = ("sum", "mean", "max", "min")


def _strategy(trainer_or_strategy: pl.Trainer | Strategy) -> Strategy:
    return cast("Strategy", getattr(trainer_or_strategy, "strategy", trainer_or_strategy))


def reduce_tensor(
    trainer_or_strategy: pl.Trainer | Strategy,
    tensor: torch.Tensor | float,
    op: ReduceOp = "sum",
) -> torch.Tensor:
    """All-reduce a small tensor over all ranks and return the result; the input is left untouched.

    Args:
        trainer_or_strategy: The Trainer (its ``strategy`` is used) or a Lightning strategy.
        tensor: A tensor (any shape, typically a handful of numbers) or a Python number.
        op: ``"sum"`` (default), ``"mean"``, ``"max"`` or ``"min"``, element-wise over ranks.

    Returns:
        A new tensor on the input's device (CPU for a Python number) with the reduced values.
        Without a process group (one device), a copy of the input.

    Raises:
        ValueError: if ``op`` is not one of the four above.
        TypeError: if ``tensor`` is neither a tensor nor a Python number.

    Example:
        ```python
        overflow = reduce_tensor(trainer, torch.tensor(float(found_inf)), op="max")
        ```
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"op={op!r} is not supported; expected one of {list(_REDUCE_OPS)}")
    strategy = _strategy(trainer_or_strategy)
    if isinstance(tensor, str) or not isinstance(tensor, torch.Tensor | int | float):
        raise TypeError(f"reduce_tensor: tensor={tensor!r} must be a tensor or a Python number")
    value = torch.as_tensor(tensor)
    # Lightning's reduce is in place and NCCL needs the tensor on the rank's own device.
    work = value.detach().to(strategy.root_device, copy=True)
    reduced = strategy.reduce(work, reduce_op=op)
    return reduced.to(value.device)


def any_rank(trainer_or_strategy: pl.Trainer | Strategy, flag: bool) -> bool:
    """Return ``True`` on every rank if ``flag`` is ``True`` on at least one rank.

    Use it where one rank's observation must change what all ranks do (e.g. a non-finite gradient
    found on one rank makes every rank skip the step).
    """
    return bool(reduce_tensor(trainer_or_strategy, torch.tensor(float(flag)), op="max").item() > 0)


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor``: the local shard of a ``DTensor`` (FSDP2, tensor parallel), else ``tensor``.

    The result shares storage with the input, so in-place changes (unscaling a gradient) reach the
    ``DTensor``. Statistics computed on it are per rank; reduce them across ranks (``reduce_tensor``)
    where the whole tensor's value is needed.
    """
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) and hasattr(tensor, "placements") else tensor
