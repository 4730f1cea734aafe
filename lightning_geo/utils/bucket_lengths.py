"""The length of every sample of a dataset, for length bucketing: read once, from one of three sources.

1. ``length_fn(sample)``: a user callable, given each sample (``dataset[i]``) once.
2. ``dataset.lengths``: a sequence of one int per sample (no sample is loaded).
3. ``sample["attention_mask"]``: the mask's sum, for samples that are mappings with that key (the form
   Hugging Face tokenizers return).

A dataset with none of these is refused with a ``ValueError`` that says how to give the lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

LengthFn = Callable[[Any], int]
"""A callable returning a sample's length in tokens."""


def _mask_length(mask: Any) -> int:
    return int(torch.as_tensor(mask).sum().item())


def sample_length(sample: Any) -> int:
    """One sample's length in tokens: its ``attention_mask``'s sum, else its ``input_ids``' first dimension.

    A sample is a mapping with either key (what Hugging Face tokenizers return) or a tensor (its first
    dimension); this is the rule ``LengthBucketing`` and GEO's serving layer read lengths by.

    Raises:
        ValueError: for any other sample, saying what it is.
    """
    if isinstance(sample, Mapping):
        if "attention_mask" in sample:
            return _mask_length(sample["attention_mask"])
        if "input_ids" in sample:
            sample = sample["input_ids"]
    if isinstance(sample, torch.Tensor) and sample.dim() >= 1:
        return int(sample.shape[0])
    raise ValueError(
        f"cannot tell the length of a {type(sample).__name__}: give a tensor, a mapping with an 'attention_mask' or "
        "'input_ids', or a length_fn"
    )


def dataset_lengths(dataset: Dataset, length_fn: LengthFn | None = None) -> list[int]:
    """Each sample's length in tokens, from ``length_fn``, ``dataset.lengths`` or an ``attention_mask``.

    Args:
        dataset: A map-style dataset (``len`` and ``dataset[i]``).
        length_fn: Called with each sample; returns its length (an int ``>= 0``). Default ``None``: use
            ``dataset.lengths``, else each sample's ``"attention_mask"``.

    Returns:
        One int per sample, in index order.

    Raises:
        ValueError: if the dataset has no ``lengths`` attribute and its samples no ``attention_mask``
            (and no ``length_fn`` is given), if ``dataset.lengths`` has the wrong size, or a length is negative.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if length_fn is not None:
        lengths = [int(length_fn(dataset[i])) for i in range(size)]
    elif getattr(dataset, "lengths", None) is not None:
        lengths = [int(n) for n in dataset.lengths]  # type: ignore[attr-defined]
        if len(lengths) != size:
            raise ValueError(
                f"{type(dataset).__name__}.lengths has {len(lengths)} entries for {size} samples: it must hold one "
                "length per sample"
            )
    else:
        first = dataset[0] if size else None
        if not (isinstance(first, Mapping) and "attention_mask" in first):
            raise ValueError(
                f"LengthBucketing cannot tell the length of the samples of {type(dataset).__name__} "
                f"(a sample is a {type(first).__name__}). Give the dataset a `lengths` attribute (one int per "
                "sample), return samples as mappings with an 'attention_mask', or pass "
                "LengthBucketing(length_fn=...) (e.g. length_fn=lambda sample: len(sample[0]))."
            )
        lengths = [_mask_length(dataset[i]["attention_mask"]) for i in range(size)]
    negative = [n for n in lengths if n < 0]
    if negative:
        raise ValueError(f"sample lengths must be >= 0; found {negative[0]}")
    return lengths


def cached_lengths(
    cache: dict[int, tuple[Dataset, list[int]]], dataset: Dataset, length_fn: LengthFn | None
) -> Sequence[int]:
    """``dataset_lengths``, computed once per dataset object (``cache`` maps ``id(dataset)``)."""
    hit = cache.get(id(dataset))
    if hit is not None and hit[0] is dataset:
        return hit[1]
    lengths = dataset_lengths(dataset, length_fn)
    cache[id(dataset)] = (dataset, lengths)
    return lengths
