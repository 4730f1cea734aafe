"""Per-sample complexity scores for [`DynamicCurriculum`][lightning_geo.callbacks.DynamicCurriculum].

A score is a float per training sample: higher means harder. The built-in scorers are

- ``"length"``: the sample's length in tokens (an ``attention_mask``'s sum, else the element count of its
  token tensor, minus ``pad_id`` entries); a dataset with a ``lengths`` attribute is read directly.
- ``"rarity"``: the mean negative log unigram frequency of the sample's tokens, with the frequencies
  counted once over the whole training set (Platanios et al. 2019's "word rarity").
- ``"loss"``: the sample's own training loss, refreshed each time it is seen (self-paced learning,
  Kumar et al. 2010); the callback fills these in, so they start as "not seen yet".

and any callable ``sample -> float`` or a precomputed tensor with one score per sample. Static scores
are computed once, in batches of samples, on global rank 0 and broadcast to the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

SCORERS: tuple[str, ...] = ("length", "rarity", "loss")
"""The names of the built-in scorers."""

Scorer = str | Callable[[Any], float] | torch.Tensor | Sequence[float]
"""What ``DynamicCurriculum(scorer=...)`` accepts."""

UNSEEN = -math.inf
"""The ``loss`` score of a sample not seen yet: it ranks first, so every sample is seen once before
the loss ranking decides (a loss cannot rank what has not been measured)."""

_SCORE_CHUNK = 1024  # samples read per chunk while scoring


def validate_scorer(scorer: object) -> None:
    """Raise early (in ``__init__``) for a scorer that cannot work.

    Raises:
        ValueError: for an unknown scorer name or a precomputed score tensor that is not 1-D and finite.
        TypeError: for anything that is not a name, a callable, a tensor or a sequence of numbers.
    """
    if isinstance(scorer, str):
        if scorer not in SCORERS:
            raise ValueError(
                f"scorer={scorer!r} is not a built-in scorer; expected one of {list(SCORERS)}, "
                "a callable `sample -> float` or a tensor of precomputed scores"
            )
        return
    if callable(scorer):
        return
    if isinstance(scorer, (torch.Tensor, Sequence)):
        scores = torch.as_tensor(scorer, dtype=torch.float64)
        if scores.ndim != 1 or not torch.isfinite(scores).all():
            raise ValueError(
                f"scorer: precomputed scores must be a 1-D tensor of finite numbers, got shape "
                f"{tuple(scores.shape)}" + ("" if scores.ndim != 1 else " with non-finite values")
            )
        return
    raise TypeError(
        f"scorer must be one of {list(SCORERS)}, a callable `sample -> float` or a tensor of scores, "
        f"got {type(scorer).__name__}"
    )


def _iter_samples(dataset: Dataset) -> Iterator[Any]:
    """Every sample in order, read ``_SCORE_CHUNK`` at a time (a dataset with ``__getitems__`` fetches each
    chunk in one call)."""
    for chunk in DataLoader(dataset, batch_size=_SCORE_CHUNK, collate_fn=list):
        yield from chunk


def token_tensor(sample: Any) -> torch.Tensor | None:
    """The token ids of one sample: ``sample["input_ids"]``, else the first integer tensor in it (depth first).

    Returns ``None`` if the sample holds no integer tensor.
    """
    if isinstance(sample, Mapping) and isinstance(sample.get("input_ids"), torch.Tensor):
        return sample["input_ids"]
    if isinstance(sample, torch.Tensor):
        return None if sample.is_floating_point() or sample.is_complex() else sample
    items = sample.values() if isinstance(sample, Mapping) else sample if isinstance(sample, (list, tuple)) else ()
    for item in items:
        found = token_tensor(item)
        if found is not None:
            return found
    return None


def sample_length(sample: Any, pad_id: int | None = None) -> int | None:
    """Tokens in one sample: ``attention_mask.sum()`` if the sample is a mapping with one, else the token
    tensor's element count without ``pad_id`` entries; ``None`` if the sample has no token tensor."""
    if isinstance(sample, Mapping) and isinstance(sample.get("attention_mask"), torch.Tensor):
        return int(sample["attention_mask"].sum())
    tokens = token_tensor(sample)
    if tokens is None:
        return None
    return int(tokens.numel() if pad_id is None else (tokens != pad_id).sum())


def length_scores(dataset: Dataset, pad_id: int | None = None) -> torch.Tensor:
    """``(N,)`` sample lengths in tokens (float64); uses ``dataset.lengths`` when the dataset has it.

    Raises:
        ValueError: if a sample has no integer token tensor, or every sample has the same length (the
            scorer could not order them).
    """
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None:
        scores = torch.as_tensor(lengths, dtype=torch.float64).reshape(-1)
    else:
        values = []
        for i, sample in enumerate(_iter_samples(dataset)):
            length = sample_length(sample, pad_id)
            if length is None:
                raise ValueError(
                    f"scorer='length' needs samples with token ids, but sample {i} holds no integer tensor "
                    f"(type {type(sample).__name__}); give the dataset a `lengths` attribute, or use a callable "
                    "scorer or precomputed scores"
                )
            values.append(length)
        scores = torch.tensor(values, dtype=torch.float64)
    if len(scores) and bool((scores == scores[0]).all()):
        raise ValueError(
            f"scorer='length': every training sample has length {int(scores[0])}, so length cannot order them "
            "(fixed-length windows?); use mode='seq_len' for sequence-length warmup, or another scorer"
        )
    return scores


def rarity_scores(dataset: Dataset, pad_id: int | None = None) -> torch.Tensor:
    """``(N,)`` mean negative log unigram frequency (nats) of each sample's tokens, frequencies counted over
    the whole dataset first; ``pad_id`` tokens are left out of both. A sample without tokens scores 0.

    Raises:
        ValueError: if a sample holds no integer token tensor or a negative token id.
    """
    samples = []
    for i, sample in enumerate(_iter_samples(dataset)):
        tokens = token_tensor(sample)
        if tokens is None:
            raise ValueError(
                f"scorer='rarity' needs samples with token ids, but sample {i} holds no integer tensor "
                f"(type {type(sample).__name__})"
            )
        tokens = tokens.reshape(-1).long()
        samples.append(tokens if pad_id is None else tokens[tokens != pad_id])
    tokens = torch.cat(samples) if samples else torch.empty(0, dtype=torch.long)
    if len(tokens) and int(tokens.min()) < 0:
        raise ValueError("scorer='rarity': token ids must be non-negative")
    counts = torch.bincount(tokens).double()
    neg_log_freq = -(counts / counts.sum().clamp_min(1)).clamp_min(1e-300).log()
    return torch.tensor([float(neg_log_freq[t].mean()) if len(t) else 0.0 for t in samples], dtype=torch.float64)


def callable_scores(dataset: Dataset, scorer: Callable[[Any], float]) -> torch.Tensor:
    """``(N,)`` scores from a user's ``scorer(sample) -> float``.

    Raises:
        ValueError: naming the first sample whose score is not a finite number.
    """
    values = []
    for i, sample in enumerate(_iter_samples(dataset)):
        value = float(scorer(sample))
        if not math.isfinite(value):
            raise ValueError(f"scorer returned {value} for sample {i}; scores must be finite numbers")
        values.append(value)
    return torch.tensor(values, dtype=torch.float64)


def compute_scores(scorer: Scorer, dataset: Dataset, *, pad_id: int | None = None) -> torch.Tensor:
    """The ``(N,)`` float64 scores of every sample of ``dataset`` under ``scorer`` (see the module docstring).

    For ``"loss"`` every score starts as ``UNSEEN``.

    Raises:
        ValueError: if precomputed scores do not have one entry per sample, or a scorer cannot score this
            dataset (see the scorer functions).
    """
    num_samples = len(dataset)  # type: ignore[arg-type]
    if isinstance(scorer, str):
        if scorer == "loss":
            return torch.full((num_samples,), UNSEEN, dtype=torch.float64)
        return length_scores(dataset, pad_id) if scorer == "length" else rarity_scores(dataset, pad_id)
    if callable(scorer):
        return callable_scores(dataset, scorer)
    scores = torch.as_tensor(scorer, dtype=torch.float64).reshape(-1).clone()
    if len(scores) != num_samples:
        raise ValueError(
            f"scorer: {len(scores)} precomputed scores for a training set of {num_samples} samples; "
            "give one score per sample, in dataset order"
        )
    return scores


def scorer_name(scorer: Scorer) -> str:
    """A short name of the scorer for logs and the callback's ``state_key``."""
    if isinstance(scorer, str):
        return scorer
    if callable(scorer):
        return getattr(scorer, "__name__", type(scorer).__name__)
    return "precomputed"
