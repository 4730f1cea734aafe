"""The padding rule of length bucketing, for datasets whose DataLoader uses PyTorch's default collate.

``pad_collate`` collates like ``torch.utils.data.default_collate``, except that tensors of different
lengths are padded instead of refused: in every field of a sample (a tensor, or a tensor inside a
mapping, tuple or list), tensors whose first dimension differs across the batch are right-padded along
that dimension with ``padding_value`` to the batch's longest. So each batch is padded to its own longest
sample. An ``attention_mask`` field is always padded with 0.

A DataLoader with its own ``collate_fn`` keeps it: that function decides the padding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import default_collate

MASK_KEY = "attention_mask"


def _pad_or_stack(tensors: Sequence[torch.Tensor], padding_value: float) -> torch.Tensor:
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(list(tensors))
    if tensors[0].dim() == 0 or any(t.shape[1:] != tensors[0].shape[1:] for t in tensors):
        raise ValueError(
            f"pad_collate pads along the first dimension only; got shapes {sorted({tuple(t.shape) for t in tensors})}"
        )
    return pad_sequence(list(tensors), batch_first=True, padding_value=padding_value)


def _collate(samples: Sequence[Any], padding_value: float) -> Any:
    first = samples[0]
    if isinstance(first, torch.Tensor):
        return _pad_or_stack(samples, padding_value)
    if isinstance(first, Mapping):
        return {
            key: _collate([s[key] for s in samples], 0 if key == MASK_KEY else padding_value) for key in first
        }
    if isinstance(first, tuple) and hasattr(first, "_fields"):  # namedtuple
        return type(first)(*(_collate(field, padding_value) for field in zip(*samples, strict=True)))
    if isinstance(first, (tuple, list)) and not isinstance(first, str):
        fields = [_collate(field, padding_value) for field in zip(*samples, strict=True)]
        return fields if isinstance(first, list) else tuple(fields)
    return default_collate(list(samples))


def pad_collate(samples: Sequence[Any], padding_value: float = 0) -> Any:
    """Collate ``samples`` into a batch, right-padding tensors of different first dimension.

    Args:
        samples: The batch's samples: tensors, numbers, or mappings/tuples/lists of them.
        padding_value: Value of the padding. Default 0. ``attention_mask`` fields are padded with 0.

    Returns:
        The batch, structured like one sample, every tensor with a new leading batch dimension.

    Raises:
        ValueError: if tensors of one field differ in a dimension other than the first.

    Example:
        ```python
        pad_collate([torch.tensor([5, 6, 7]), torch.tensor([8])])  # tensor([[5, 6, 7], [8, 0, 0]])
        ```
    """
    return _collate(samples, padding_value)


def padding_collate_fn(padding_value: float) -> Callable[[Sequence[Any]], Any]:
    """``pad_collate`` with ``padding_value`` bound (picklable, for DataLoader workers)."""
    return functools.partial(pad_collate, padding_value=padding_value)
