"""Put bucketed predictions back in dataset order: split each batch's output per sample, sort, regroup.

A batch's output is split along its first dimension into one output per sample: a tensor whose first
dimension is the batch size, or a mapping, tuple or list of such tensors (recursively); a list or tuple
with one item per sample also splits. The per-sample outputs are sorted by dataset index and regrouped
into consecutive batches of the original DataLoader's ``batch_size``: equal-shaped tensors are stacked,
so an output like ``(B,)`` losses or ``(B, C)`` logits comes back exactly as a plain loop returns it;
tensors of different shapes (per-token outputs of different lengths) stay a list of per-sample tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


class Unsplittable(ValueError):
    """A batch's output has no per-sample structure (e.g. a scalar, or a tensor not led by the batch size)."""


def split_per_sample(output: Any, size: int) -> list[Any]:
    """``output`` of a batch of ``size`` samples as ``size`` per-sample outputs.

    Raises:
        Unsplittable: if some part of ``output`` is not led by a dimension of ``size``.
    """
    if isinstance(output, torch.Tensor):
        if output.dim() == 0 or output.shape[0] != size:
            raise Unsplittable(f"a tensor of shape {tuple(output.shape)} in a batch of {size} samples")
        return list(output.unbind(0))
    if isinstance(output, Mapping):
        parts = {key: split_per_sample(value, size) for key, value in output.items()}
        return [{key: part[i] for key, part in parts.items()} for i in range(size)]
    if isinstance(output, (tuple, list)) and not isinstance(output, str):
        try:
            fields = [split_per_sample(value, size) for value in output]
        except Unsplittable:
            if len(output) == size:  # one item per sample
                return list(output)
            raise
        if isinstance(output, tuple) and hasattr(output, "_fields"):  # namedtuple
            return [type(output)(*values) for values in zip(*fields, strict=True)]
        rebuilt = [list(values) for values in zip(*fields, strict=True)] if fields else [[] for _ in range(size)]
        return rebuilt if isinstance(output, list) else [tuple(v) for v in rebuilt]
    raise Unsplittable(f"an output of type {type(output).__name__}")


def merge_samples(samples: Sequence[Any]) -> Any:
    """The inverse of ``split_per_sample`` for one regrouped batch (stacking equal-shaped tensors)."""
    first = samples[0]
    if isinstance(first, torch.Tensor):
        if all(isinstance(s, torch.Tensor) and s.shape == first.shape for s in samples):
            return torch.stack(list(samples))
        return list(samples)
    if isinstance(first, Mapping):
        return {key: merge_samples([s[key] for s in samples]) for key in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(merge_samples(field) for field in zip(*samples, strict=True)))
    if isinstance(first, (tuple, list)) and not isinstance(first, str) and first:
        merged = [merge_samples(field) for field in zip(*samples, strict=True)]
        return merged if isinstance(first, list) else tuple(merged)
    return list(samples)


def restore_order(
    indexed: Sequence[tuple[int, Any]], batch_size: int
) -> tuple[list[Any], list[list[int]]]:
    """Sort ``(dataset index, per-sample output)`` pairs by index and regroup them into batches.

    Args:
        indexed: Per-sample outputs with their dataset indices, in any order.
        batch_size: Samples per regrouped batch (the last one may be smaller), ``>= 1``.

    Returns:
        ``(batches, batch_indices)``: the merged outputs of each regrouped batch and its dataset indices.
    """
    ordered = sorted(indexed, key=lambda pair: pair[0])
    batches: list[Any] = []
    indices: list[list[int]] = []
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        indices.append([i for i, _ in chunk])
        batches.append(merge_samples([sample for _, sample in chunk]))
    return batches, indices
