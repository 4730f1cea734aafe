"""Token-budget batches of similar length, and each rank's balanced share of them.

``token_budget_batches`` sorts the samples by length and fills batches in that order while
``samples x longest sample <= max_tokens`` (the padded size of the batch, as fairseq's ``max_tokens``):
short samples come in large batches, long ones in small ones, and no batch pads more than a sample or
two's worth. ``shard_batches`` gives every rank the same number of batches with about the same padded
tokens. ``BucketBatchSampler`` yields one rank's batches; [`LengthBucketing`][lightning_geo.callbacks.LengthBucketing]
builds it for you.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def padded_tokens(batch: Sequence[int], lengths: Sequence[int]) -> int:
    """Tokens of ``batch`` once padded to its longest sample: ``len(batch) * max(length)``."""
    return len(batch) * max(lengths[i] for i in batch) if batch else 0


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, *, max_batch_size: int | None = None
) -> tuple[list[list[int]], list[int]]:
    """Group sample indices into batches of similar length under a padded-token budget.

    Samples are sorted by length (ties by index, so the result is deterministic) and batches are filled
    greedily in that order. A sample longer than ``max_tokens`` gets a batch of its own.

    Args:
        lengths: Length of each sample, in tokens (``>= 0``).
        max_tokens: Most padded tokens per batch (batch size x longest sample in it), ``>= 1``.
        max_batch_size: Most samples per batch; ``None`` (default) for no limit beyond ``max_tokens``.

    Returns:
        ``(batches, oversized)``: lists of sample indices, shortest samples first, and the indices of
        samples longer than ``max_tokens`` (each alone in its batch).
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    oversized: list[int] = []
    batch: list[int] = []
    for i in order:
        # ascending order: the sample being added is the batch's longest, so its length sets the padding
        length = max(int(lengths[i]), 1)
        full = (len(batch) + 1) * length > max_tokens or (max_batch_size is not None and len(batch) >= max_batch_size)
        if batch and full:
            batches.append(batch)
            batch = []
        batch.append(i)
        if length > max_tokens:
            oversized.append(i)
    if batch:
        batches.append(batch)
    return batches, oversized


def shard_batches(
    batches: list[list[int]], lengths: Sequence[int], *, num_replicas: int, rank: int
) -> list[list[int]]:
    """This rank's share of ``batches``: disjoint across ranks, equal in count and close in padded tokens.

    So that every rank runs the same number of steps (a rank that finishes early would wait in the next
    collective, or Lightning refuses an empty loader), the largest batches are halved until the count
    divides ``num_replicas``. Batches are then dealt in rounds of ``num_replicas``, most tokens first, the
    largest of each round going to the rank with the fewest tokens so far. Each rank's batches run
    longest first, so an out-of-memory error shows at its first step.

    Args:
        batches: Every rank's batches (the same list on every rank).
        lengths: Length of each sample, in tokens.
        num_replicas: Ranks sharing the work, ``>= 1``.
        rank: This rank, in ``[0, num_replicas)``.

    Returns:
        This rank's batches. Fewer than another rank's only when every batch holds a single sample and their
        number does not divide ``num_replicas``.
    """
    if num_replicas == 1:
        return [list(b) for b in batches]
    work = [list(b) for b in batches]
    while len(work) % num_replicas and any(len(b) > 1 for b in work):
        largest = max(range(len(work)), key=lambda k: (padded_tokens(work[k], lengths), len(work[k])))
        if len(work[largest]) == 1:  # the most tokens sit in one sample: split the largest splittable batch
            largest = max((k for k in range(len(work)) if len(work[k]) > 1), key=lambda k: len(work[k]))
        half = len(work[largest]) // 2
        work[largest : largest + 1] = [work[largest][:half], work[largest][half:]]
    work.sort(key=lambda b: (-padded_tokens(b, lengths), b[0]))
    load = [0] * num_replicas
    shares: list[list[list[int]]] = [[] for _ in range(num_replicas)]
    for start in range(0, len(work), num_replicas):
        ranks = sorted(range(num_replicas), key=lambda r: (load[r], r))
        for r, batch in zip(ranks, work[start : start + num_replicas], strict=False):
            shares[r].append(batch)
            load[r] += padded_tokens(batch, lengths)
    return shares[rank]


class BucketBatchSampler:
    """A batch sampler of one rank's token-budget batches (see ``token_budget_batches``).

    Pass it as ``DataLoader(dataset, batch_sampler=...)``. The batches are fixed at construction: every
    epoch yields the same ones in the same order (for evaluation and prediction, not training).

    Args:
        lengths: Length of each sample of the dataset, in tokens.
        max_tokens: Most padded tokens per batch, ``>= 1``.
        max_batch_size: Most samples per batch; ``None`` (default) for no limit.
        num_replicas: Ranks sharing the dataset. Default 1.
        rank: This process's rank. Default 0.

    Raises:
        ValueError: for ``max_tokens`` or ``max_batch_size`` below 1, or a rank outside ``[0, num_replicas)``.

    Example:
        ```python
        sampler = BucketBatchSampler([len(s) for s in texts], max_tokens=4096)
        loader = DataLoader(texts, batch_sampler=sampler, collate_fn=pad_collate)
        ```
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        *,
        max_batch_size: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens!r} must be an integer >= 1")
        if max_batch_size is not None and (not isinstance(max_batch_size, int) or max_batch_size < 1):
            raise ValueError(f"max_batch_size={max_batch_size!r} must be None or an integer >= 1")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank!r} must be in [0, num_replicas={num_replicas!r}) and num_replicas >= 1")
        self.lengths = [int(n) for n in lengths]
        self.max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        batches, self.oversized = token_budget_batches(self.lengths, max_tokens, max_batch_size=max_batch_size)
        self.num_batches_all_ranks = len(batches)
        self.batches = shard_batches(batches, self.lengths, num_replicas=num_replicas, rank=rank)
        if num_replicas == 1:
            self.batches.reverse()  # longest first: an out-of-memory error shows at the first step

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(b) for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)
