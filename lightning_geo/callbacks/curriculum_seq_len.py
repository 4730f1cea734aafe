"""Shorten a training batch to the curriculum's current sequence length, in place.

Lightning has no callback hook that may *replace* a batch (the batch object given to
``on_train_batch_start`` is the one ``training_step`` receives, Lightning-AI/pytorch-lightning#21448),
so :func:`shorten_batch_` changes the batch's tensors themselves with ``Tensor.set_``: each sequence
tensor becomes its shortened copy while staying the same Python object, whatever container holds it
(tuple, list, dict, dataclass).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection

SEQ_LEN_MODES: tuple[str, ...] = ("truncate", "reshape")
"""``truncate`` keeps the first ``L`` positions of each row (the batch size stays); ``reshape`` cuts each
row into rows of ``L`` positions (the tokens per batch stay; a remainder shorter than ``L`` is dropped)."""


def batch_tensors(batch: Any) -> list[torch.Tensor]:
    """Every tensor in ``batch`` (any nesting of tuples, lists, dicts, dataclasses), in order."""
    found: list[torch.Tensor] = []
    apply_to_collection(batch, torch.Tensor, found.append)
    return found


def batch_seq_len(batch: Any, seq_dim: int = 1) -> int:
    """The longest size along ``seq_dim`` among the batch's tensors (0 if none has that dimension)."""
    return max((t.shape[seq_dim] for t in batch_tensors(batch) if t.ndim > seq_dim), default=0)


def shorten_batch_(batch: Any, length: int, *, how: str = "truncate", seq_dim: int = 1) -> int:
    """Shorten every tensor of ``batch`` whose size along ``seq_dim`` is the batch's full length.

    Args:
        batch: Any collection of tensors; changed in place.
        length: The new sequence length, ``>= 1``; a length at or beyond the full length changes nothing.
        how: One of :data:`SEQ_LEN_MODES`. ``"reshape"`` needs ``seq_dim == 1``.
        seq_dim: The sequence dimension (1 for ``(batch, time, ...)`` tensors). Default 1.

    Returns:
        The batch's sequence length afterwards.

    Raises:
        ValueError: for an unknown ``how`` or ``reshape`` with ``seq_dim != 1``.
    """
    if how not in SEQ_LEN_MODES:
        raise ValueError(f"seq_len_mode={how!r} is not one of {list(SEQ_LEN_MODES)}")
    if how == "reshape" and seq_dim != 1:
        raise ValueError(f"seq_len_mode='reshape' needs seq_dim=1, got seq_dim={seq_dim}")
    full = batch_seq_len(batch, seq_dim)
    if length >= full:
        return full
    for tensor in batch_tensors(batch):
        if tensor.ndim <= seq_dim or tensor.shape[seq_dim] != full:
            continue
        if how == "truncate":
            short = tensor.narrow(seq_dim, 0, length).contiguous()
        else:
            rows = full // length
            short = tensor.narrow(1, 0, rows * length).reshape(tensor.shape[0] * rows, length, *tensor.shape[2:])
            short = short.contiguous()  # (B * rows, length, ...)
        with torch.no_grad():
            tensor.set_(short)  # type: ignore[call-overload]  # set_(Tensor) is torch API; its stubs miss it
    return length
