"""Find a training batch's token sequence and shorten it to the curriculum's current length, in place.

What is a token sequence is read from the batch's keys and dtypes, never from "a dimension that is long":

- A mapping (a Hugging Face batch): the ``(batch, time)`` shape of integer ``input_ids``, else of float
  ``inputs_embeds`` (``(batch, time, hidden)``), else of a 2-D ``attention_mask``, or of integer 2-D ``labels``,
  ``position_ids`` or ``token_type_ids``; a mapping with none of these is read like any other container.
- Any other container (a tensor, tuple, list, dataclass, a mapping without those keys): the shape of its first
  2-D integer tensor (token ids).

Every tensor of the batch whose leading shape is exactly that ``(batch, time)`` is shortened along the time
axis: token ids, masks, labels, position ids, ``inputs_embeds``, per-token weights. Float features
``(batch, features)``, images ``(batch, channels, height, width)``, labels ``(batch,)`` and anything else are
never touched, and a batch with no token sequence is left as it is
([`batch_seq_len`][lightning_geo.callbacks.curriculum_seq_len.batch_seq_len] returns 0).

Lightning has no callback hook that may *replace* a batch (the batch object given to
``on_train_batch_start`` is the one ``training_step`` receives, Lightning-AI/pytorch-lightning#21448),
so [`shorten_batch_`][lightning_geo.callbacks.curriculum_seq_len.shorten_batch_] changes the batch's tensors
themselves with ``Tensor.set_``: each sequence tensor becomes its shortened copy while staying the same Python
object, whatever container holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection

SEQ_LEN_MODES: tuple[str, ...] = ("truncate", "reshape")
"""``truncate`` keeps the first ``L`` positions of each row (the batch size stays); ``reshape`` cuts each
row into rows of ``L`` positions (the tokens per batch stay; a remainder shorter than ``L`` is dropped)."""

SEQ_DIMS: tuple[int, ...] = (1, 0)
"""The time axis of the token tensors: 1 for ``(batch, time)`` batches, 0 for time-major ``(time, batch)``."""

TOKEN_KEYS: tuple[str, ...] = (
    "input_ids", "inputs_embeds", "attention_mask", "labels", "position_ids", "token_type_ids"
)
"""Keys of a mapping batch that name its token sequence, in the order their shape is trusted."""

MODEL_LENGTH_ATTRIBUTES: tuple[str, ...] = ("max_position_embeddings", "n_positions", "max_seq_length", "block_size")
"""Attributes of a model (or its ``config``) that declare the longest sequence it takes."""


def batch_tensors(batch: Any) -> list[torch.Tensor]:
    """Every tensor in ``batch`` (any nesting of tuples, lists, dicts, dataclasses), in order."""
    found: list[torch.Tensor] = []
    apply_to_collection(batch, torch.Tensor, found.append)
    return found


def _is_token_ids(tensor: torch.Tensor) -> bool:
    return tensor.ndim == 2 and not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def token_shape(batch: Any, seq_dim: int = 1) -> tuple[int, int] | None:
    """The ``(batch, time)`` shape (``(time, batch)`` for time-major data, ``seq_dim=0``) of the batch's token
    sequence, or ``None`` if it holds none (see the module docstring for what counts; an unnamed integer tensor
    counts only with more than one position along ``seq_dim``: a ``(batch, 1)`` integer label is no sequence)."""
    if isinstance(batch, Mapping):
        for key in TOKEN_KEYS:
            value = batch.get(key)
            if not isinstance(value, torch.Tensor):
                continue
            if key == "inputs_embeds":
                found = value.ndim == 3 and value.is_floating_point()  # (B, T, hidden)
            else:  # a mask may be bool or float; ids, labels and positions are integers
                found = value.ndim == 2 if key == "attention_mask" else _is_token_ids(value)
            if found:
                return int(value.shape[0]), int(value.shape[1])
    first = next((t for t in batch_tensors(batch) if _is_token_ids(t) and t.shape[seq_dim] > 1), None)
    return None if first is None else (int(first.shape[0]), int(first.shape[1]))


def sequence_tensors(batch: Any, seq_dim: int = 1) -> list[torch.Tensor]:
    """The tensors of ``batch`` that hold its token sequence: those whose leading shape is its
    [`token_shape`][lightning_geo.callbacks.curriculum_seq_len.token_shape] (each tensor once)."""
    shape = token_shape(batch, seq_dim)
    if shape is None:
        return []
    found: dict[int, torch.Tensor] = {}
    for tensor in batch_tensors(batch):
        if tensor.ndim >= 2 and tuple(tensor.shape[:2]) == shape:
            found.setdefault(id(tensor), tensor)
    return list(found.values())


def batch_seq_len(batch: Any, seq_dim: int = 1) -> int:
    """The length of the batch's token sequence along ``seq_dim`` (0 if it holds no token sequence)."""
    shape = token_shape(batch, seq_dim)
    return 0 if shape is None else shape[seq_dim]


def count_batch_tokens(batch: Any, seq_dim: int = 1) -> int | torch.Tensor:
    """Tokens in a batch, without reading the device: a mapping's ``attention_mask`` sum (a tensor), else
    ``batch x time`` of its token sequence; a batch without one counts the first tensor's leading two sizes
    (its element count if it has fewer than two dimensions). Never counts a hidden size."""
    shape = token_shape(batch, seq_dim)
    if shape is not None:
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if isinstance(mask, torch.Tensor) and tuple(mask.shape) == shape:
            return mask.sum()
        return shape[0] * shape[1]
    tensors = batch_tensors(batch)
    if not tensors:
        return 0
    first = tensors[0]
    return first.numel() if first.ndim < 2 else int(first.shape[0]) * int(first.shape[1])


def describe_batch(batch: Any, limit: int = 4) -> str:
    """A short description of the batch's tensors, e.g. ``"x: float32 (8, 64), y: int64 (8,)"``."""
    if isinstance(batch, Mapping):
        items = [(f"{key}: ", value) for key, value in batch.items() if isinstance(value, torch.Tensor)]
    else:
        items = [("", tensor) for tensor in batch_tensors(batch)]
    parts = [f"{name}{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}" for name, t in items[:limit]]
    if len(items) > limit:
        parts.append(f"... {len(items) - limit} more")
    return ", ".join(parts) if parts else "no tensors"


def declared_seq_len(model: torch.nn.Module) -> tuple[int, str] | None:
    """The longest sequence ``model`` declares it takes, and where that was read, or ``None``.

    Read from the module and its direct children, on their ``config`` first (e.g. a Hugging Face model's
    ``config.max_position_embeddings``, litgpt's ``config.block_size``), then on themselves (litgpt's
    ``max_seq_length``); see
    [`MODEL_LENGTH_ATTRIBUTES`][lightning_geo.callbacks.curriculum_seq_len.MODEL_LENGTH_ATTRIBUTES].
    Deeper modules are not searched: an attention kernel's ``block_size`` is not a sequence length.
    """
    for name, module in (("", model), *model.named_children()):
        prefix = f"{name}." if name else ""
        for owner, where in ((getattr(module, "config", None), f"{prefix}config."), (module, prefix)):
            if owner is None:
                continue
            for attribute in MODEL_LENGTH_ATTRIBUTES:
                value = getattr(owner, attribute, None)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value, f"{where}{attribute}"
    return None


def shorten_batch_(batch: Any, length: int, *, how: str = "truncate", seq_dim: int = 1) -> int:
    """Shorten the batch's token sequence to ``length`` along ``seq_dim``, in place.

    The tensors shortened are those whose leading shape is the batch's
    [`token_shape`][lightning_geo.callbacks.curriculum_seq_len.token_shape]; every other tensor stays as it is.

    Args:
        batch: Any collection of tensors; changed in place.
        length: The new sequence length, ``>= 1``; a length at or beyond the full length changes nothing.
        how: One of [`SEQ_LEN_MODES`][lightning_geo.callbacks.curriculum_seq_len.SEQ_LEN_MODES]. ``"reshape"``
            needs ``seq_dim == 1``.
        seq_dim: The time axis, one of [`SEQ_DIMS`][lightning_geo.callbacks.curriculum_seq_len.SEQ_DIMS]. Default 1.

    Returns:
        The batch's sequence length afterwards (0 if it holds no token sequence).

    Raises:
        ValueError: for an unknown ``how`` or ``seq_dim``, or ``reshape`` with ``seq_dim != 1``.
    """
    if how not in SEQ_LEN_MODES:
        raise ValueError(f"seq_len_mode={how!r} is not one of {list(SEQ_LEN_MODES)}")
    if seq_dim not in SEQ_DIMS:
        raise ValueError(f"seq_dim={seq_dim!r} is not one of {list(SEQ_DIMS)}")
    if how == "reshape" and seq_dim != 1:
        raise ValueError(f"seq_len_mode='reshape' needs seq_dim=1, got seq_dim={seq_dim}")
    full = batch_seq_len(batch, seq_dim)
    if length >= full:
        return full
    for tensor in sequence_tensors(batch, seq_dim):
        if how == "truncate":
            short = tensor.narrow(seq_dim, 0, length).contiguous()
        else:
            rows = full // length
            short = tensor.narrow(1, 0, rows * length).reshape(tensor.shape[0] * rows, length, *tensor.shape[2:])
            short = short.contiguous()  # (B * rows, length, ...)
        with torch.no_grad():
            tensor.set_(short)  # type: ignore[call-overload]  # set_(Tensor) is torch API; its stubs miss it
    return length
