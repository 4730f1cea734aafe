"""``CurriculumSampler``: the training sampler that [`DynamicCurriculum`][lightning_geo.callbacks.DynamicCurriculum]
drives.

Every batch is drawn when the DataLoader asks for it, from the state the callback set after the previous
batch: the samples whose difficulty rank is under the threshold ("admitted"), plus a share of harder
ones. Draws are deterministic in ``(seed, epoch, batch number, threshold, hard share, scores)``:

- Each epoch has one seeded permutation of all samples per pool. The admitted part of a batch is the
  next admitted samples along the first permutation, the hard part the next non-admitted samples along
  the second; so within a pool no sample repeats before every other one has been drawn.
- All ranks draw the same global batch (their states are identical: the callback agrees on every
  update across ranks) and each takes its own contiguous slice: shards are disjoint within a step and
  every rank gets ``ceil(N / world_size)`` samples per epoch, so no rank waits on another (no hang).
- Batches drawn but not yet trained on (a DataLoader with workers reads ahead) are kept in the state, so
  a run resumed from a mid-epoch checkpoint replays them and then draws exactly what the uninterrupted
  run drew.

It subclasses ``DistributedSampler`` only so that Lightning recognises it as already sharded and does not
wrap it in a second sampler; it does its own sharding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, IterableDataset

_PERMUTATION_STREAMS = 2  # one per pool: admitted (easy) and above the threshold (hard)


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for key in keys:  # a fixed mix of the keys (hash() of ints would do too, but is not documented as stable)
        seed = (seed * 1_000_003 + int(key) + 0x9E3779B9) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _per_rank_size(num_samples: int, batch_size: int, batch: int, head: tuple[int, int] | None) -> int:
    """Samples per rank in batch number ``batch`` of an epoch of ``num_samples`` per rank; ``head`` is
    ``(batch, samples)``: that batch's first samples per rank were trained before a re-shard."""
    per_rank = min(batch_size, num_samples - batch * batch_size)
    if head is not None and head[0] == batch:
        per_rank -= head[1]
    return per_rank


def _saved_head(state: dict[str, Any]) -> tuple[int, int] | None:
    """The ``head`` of a saved state as ``(batch, samples)``; ``None`` when absent (and in older checkpoints)."""
    head = state.get("head")
    return (int(head[0]), int(head[1])) if head else None


class CurriculumSampler(DistributedSampler):
    """A deterministic, resumable, DDP-sharded sampler whose pool grows with the curriculum's threshold.

    Pass it to your training DataLoader (``DataLoader(ds, batch_size=32, sampler=CurriculumSampler(ds))``)
    or let ``DynamicCurriculum`` put one into a plain DataLoader. The callback binds it: sets the world
    size, rank and batch size from the Trainer and the DataLoader, the scores, and after every batch the
    threshold and the hard share. Unbound, it samples uniformly (a shuffle per epoch), like
    ``RandomSampler``.

    Args:
        dataset: The training dataset (map-style, with ``len``).
        seed: Seeds every permutation and draw; with the epoch it fixes the whole sequence. Default ``None``: the
            run's global seed, as Lightning seeds its own samplers (the ``PL_GLOBAL_SEED`` that
            ``seed_everything`` sets, read here at construction; 0 without one). Resuming from a checkpoint keeps
            the checkpoint's seed unless one is given here.
        num_replicas: Ranks sharing the data; default: the process group's world size, else 1.
        rank: This process's rank; default: the process group's rank, else 0.

    Raises:
        TypeError: for a dataset without a length (an ``IterableDataset``) or a seed that is not an integer.
        ValueError: for an empty dataset or a rank outside ``[0, num_replicas)``.
    """

    def __init__(
        self, dataset: Dataset, *, seed: int | None = None, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"CurriculumSampler: dataset={type(dataset).__name__} has no length; it samples a map-style dataset "
                "(with __len__ and __getitem__), not an IterableDataset"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"CurriculumSampler: seed={seed!r} must be an integer or None (the run's global seed)")
        initialized = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if initialized else 1)
        rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
        self.dataset = dataset
        self._explicit_seed = seed is not None  # an explicit seed must match a checkpoint's; the global one follows it
        self.seed = int(seed) if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.shuffle = True
        self.drop_last = False
        self.batch_size = 1
        self.epoch = 0
        self._size = len(dataset)
        if self._size < 1:
            raise ValueError("CurriculumSampler needs a non-empty dataset")
        self.set_world(num_replicas, rank)
        self.threshold = 1.0
        self.hard_share = 0.0
        self._scores: torch.Tensor | None = None
        self._order: torch.Tensor | None = None  # sample indices, easiest first
        self._rank_of: torch.Tensor | None = None  # difficulty rank of each sample (0 = easiest)
        self._consumed = 0  # batches of this epoch trained on
        self._pending: list[list[int]] = []  # global batches drawn but not trained on yet
        self._cursors = [0] * _PERMUTATION_STREAMS
        self._permutations: tuple[int, list[torch.Tensor]] | None = None
        self._order_list: tuple[int, list[int]] | None = None  # (epoch, first permutation as a list)
        self._iteration = 0
        self._head: tuple[int, int] | None = None  # (batch, samples per rank already trained): after a re-shard
        self.resharded_from: tuple[int, int] | None = None  # (num_replicas, batch_size) of the checkpoint, if other
        self.reshard_batch_shift = 0  # this run's batches of the epoch trained, less the checkpoint's

    # -- binding -----------------------------------------------------------------------------------------
    def set_world(self, num_replicas: int, rank: int) -> None:
        """Set the number of ranks and this rank (the callback does this from the Trainer).

        Raises:
            ValueError: if ``rank`` is not in ``[0, num_replicas)``.
        """
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.num_samples = math.ceil(self._size / self.num_replicas)  # per rank and epoch
        self.total_size = self.num_samples * self.num_replicas

    def set_batch_size(self, batch_size: int) -> None:
        """Samples per batch and rank: the unit in which the callback changes the threshold."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be positive")
        self.batch_size = int(batch_size)

    def set_scores(self, scores: torch.Tensor) -> None:
        """Set (or refresh) the difficulty scores, ``(N,)``; higher is harder. Ties break in a seeded order."""
        if scores.shape != (self._size,):
            raise ValueError(f"scores must have shape ({self._size},), got {tuple(scores.shape)}")
        self._scores = scores
        self._order = None

    @property
    def num_batches(self) -> int:
        """Batches per epoch and rank (the last may be short)."""
        return math.ceil(self.num_samples / self.batch_size)

    # -- what the curriculum reads -----------------------------------------------------------------------
    def _difficulty(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sample indices easiest first, difficulty rank of each sample), cached until the scores change."""
        if self._order is None:
            if self._scores is None:
                self._order = torch.arange(self._size)
            else:
                tiebreak = torch.randperm(self._size, generator=_generator(self.seed, -1))
                self._order = tiebreak[torch.sort(self._scores[tiebreak], stable=True).indices]
            self._rank_of = torch.empty_like(self._order)
            self._rank_of[self._order] = torch.arange(self._size)
        assert self._rank_of is not None
        return self._order, self._rank_of

    def admitted_count(self, global_batch: int | None = None) -> int:
        """Samples under the threshold (at least one global batch, so ranks never share a sample in a step)."""
        global_batch = global_batch if global_batch is not None else self.batch_size * self.num_replicas
        return min(self._size, max(math.ceil(self.threshold * self._size - 1e-9), global_batch))

    def admitted_indices(self) -> torch.Tensor:
        """Dataset indices of the admitted samples, easiest first."""
        return self._difficulty()[0][: self.admitted_count()]

    # -- drawing -----------------------------------------------------------------------------------------
    def _epoch_permutations(self) -> list[torch.Tensor]:
        if self._permutations is None or self._permutations[0] != self.epoch:
            perms = [
                torch.randperm(self._size, generator=_generator(self.seed, self.epoch, s))
                for s in range(_PERMUTATION_STREAMS)
            ]
            self._permutations = (self.epoch, perms)
        return self._permutations[1]

    def _walk(self, stream: int, mask: torch.Tensor, count: int) -> torch.Tensor:
        """The next ``count`` samples with ``mask`` along permutation ``stream``, advancing its cursor."""
        perm = self._epoch_permutations()[stream]
        picked: list[torch.Tensor] = []
        cursor = self._cursors[stream]
        while count > 0:
            chunk = perm[cursor : cursor + max(4 * count, 256)]
            hits = torch.nonzero(mask[chunk]).flatten()
            if len(hits) >= count:
                picked.append(chunk[hits[:count]])
                cursor += int(hits[count - 1]) + 1
                count = 0
            else:
                picked.append(chunk[hits])
                count -= len(hits)
                cursor += len(chunk)
            cursor %= self._size
        self._cursors[stream] = cursor
        return torch.cat(picked) if picked else torch.empty(0, dtype=torch.long)

    def _batch_sizes(self, batch: int) -> tuple[int, int]:
        """(samples per rank, global samples) of batch number ``batch`` of the epoch."""
        per_rank = _per_rank_size(self.num_samples, self.batch_size, batch, self._head)
        return per_rank, per_rank * self.num_replicas

    def _draw(self, batch: int) -> list[int]:
        return self._draw_count(self._batch_sizes(batch)[1], batch)

    def _draw_count(self, global_size: int, batch: int) -> list[int]:
        """The next ``global_size`` samples: the admitted ones along the first permutation, the hard share along
        the second, shuffled together (deterministically in ``batch``)."""
        admitted = self.admitted_count(global_size)
        if admitted >= self._size:
            return self._draw_all_admitted(global_size)
        easy_mask = self._difficulty()[1] < admitted
        num_hard = min(round(self.hard_share * global_size), self._size - admitted)
        easy = self._walk(0, easy_mask, global_size - num_hard)
        hard = self._walk(1, ~easy_mask, num_hard) if num_hard > 0 else easy.new_empty(0)
        drawn = torch.cat([easy, hard])
        drawn = drawn[torch.randperm(len(drawn), generator=_generator(self.seed, self.epoch, batch, 7))]
        return drawn.tolist()

    def _draw_all_admitted(self, count: int) -> list[int]:
        """With every sample admitted, the next ``count`` samples along the first permutation: the same
        samples as the masked walk, drawn on the host from a list made once per epoch (no tensor op per batch)."""
        if self._order_list is None or self._order_list[0] != self.epoch:
            self._order_list = (self.epoch, self._epoch_permutations()[0].tolist())
        order, cursor = self._order_list[1], self._cursors[0]
        drawn: list[int] = []
        while len(drawn) < count:
            take = order[cursor : cursor + count - len(drawn)]
            drawn.extend(take)
            cursor = (cursor + len(take)) % self._size
        self._cursors[0] = cursor
        return drawn

    def _rank_slice(self, global_batch: list[int], batch: int) -> list[int]:
        per_rank, _ = self._batch_sizes(batch)
        return global_batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[int]:
        self._iteration += 1
        iteration = self._iteration
        if self._consumed >= self.num_batches:  # iterated again without set_epoch: next epoch
            self.set_epoch(self.epoch + 1)
        batch = self._consumed
        for global_batch in list(self._pending):  # drawn before a checkpoint or a new iterator: replay
            yield from self._rank_slice(global_batch, batch)
            batch += 1
        while batch < self.num_batches and iteration == self._iteration:
            global_batch = self._draw(batch)
            self._pending.append(global_batch)
            yield from self._rank_slice(global_batch, batch)
            batch += 1

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (Lightning calls this); the same epoch again keeps the position (a resume)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._consumed = 0
            self._pending = []
            self._cursors = [0] * _PERMUTATION_STREAMS
            self._head = None

    def mark_consumed(self) -> list[int] | None:
        """Record that the oldest drawn batch was trained on; returns its global indices (rank slices in
        rank order), or ``None`` if no batch was drawn (nothing to record)."""
        if not self._pending:
            return None
        self._consumed += 1
        return self._pending.pop(0)

    # -- checkpointing -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Position and drawing state in plain types (the scores are saved by the callback)."""
        return {
            "epoch": self.epoch,
            "consumed": self._consumed,
            "pending": [list(b) for b in self._pending],
            "cursors": list(self._cursors),
            "threshold": self.threshold,
            "hard_share": self.hard_share,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "batch_size": self.batch_size,
            "head": list(self._head) if self._head is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore [`state_dict`][lightning_geo.callbacks.CurriculumSampler.state_dict]'s output.

        A sampler built without an explicit seed takes the checkpoint's (the resumed run continues the saved
        run's order whatever its global seed). A run resumed on another number of processes, or with another
        batch size per process, continues the saved epoch with the samples it had not trained on yet: the samples
        the checkpoint had drawn but not trained on come first, regrouped into this run's global batches, then
        the draws continue along the same permutations; no sample of the epoch is repeated or skipped.
        ``resharded_from`` then holds the checkpoint's ``(num_replicas, batch_size)`` and the callback moves
        Lightning's batch count of the epoch to this run's batches.

        Raises:
            ValueError: if the run is resumed with an explicit seed other than the checkpoint's, or on a number of
                processes that cannot share the epoch's remaining samples evenly (the samples already trained in
                this run's first batch must split evenly over its processes).
        """
        if not self._explicit_seed and int(state["seed"]) != self.seed:
            self.seed = int(state["seed"])
            self._order = self._permutations = self._order_list = None  # drawn from the other seed
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"cannot resume the curriculum's sampler: the checkpoint has seed={state['seed']}, "
                f"this run has seed={self.seed}; resume with the same setting to continue its batches"
            )
        self.epoch = int(state["epoch"])
        self._cursors = [int(c) for c in state["cursors"]]
        self.threshold = float(state["threshold"])
        self.hard_share = float(state["hard_share"])
        self._iteration += 1  # an iterator made before the restore must not draw any more
        saved_world = (int(state["num_replicas"]), int(state["batch_size"]))
        if saved_world == (self.num_replicas, self.batch_size):
            self._consumed = int(state["consumed"])
            self._pending = [list(b) for b in state["pending"]]
            self._head = _saved_head(state)
            self.resharded_from, self.reshard_batch_shift = None, 0
            return
        self.resharded_from = saved_world
        self._reshard(state, *saved_world)

    def _reshard(self, state: dict[str, Any], num_replicas: int, batch_size: int) -> None:
        """Continue the checkpoint's epoch, drawn for ``num_replicas`` x ``batch_size``, in this run's batches."""
        saved_head = _saved_head(state)
        saved_samples = math.ceil(self._size / num_replicas)  # per rank and epoch, in the saved run
        saved_consumed = int(state["consumed"])
        trained = sum(_per_rank_size(saved_samples, batch_size, b, saved_head) * num_replicas
                      for b in range(saved_consumed))
        queue = [i for batch in state["pending"] for i in batch]
        self._pending, self._head = [], None
        global_batch = self.batch_size * self.num_replicas
        consumed, already = divmod(trained, global_batch)
        if saved_consumed >= math.ceil(saved_samples / batch_size) or consumed >= self.num_batches:
            self._consumed = self.num_batches  # the saved epoch was over: the next one starts afresh
            self.reshard_batch_shift = self.num_batches - saved_consumed
            return
        if already % self.num_replicas:
            raise ValueError(
                f"cannot resume the curriculum's sampler on {self.num_replicas} processes: the checkpoint's epoch "
                f"has {trained} samples trained, which leaves {already} of this run's batch of {global_batch} that "
                f"cannot be split evenly over its processes; resume with a batch size per process of "
                f"{batch_size * num_replicas // self.num_replicas or 1} (the same global batch) or on "
                f"{num_replicas} processes"
            )
        self._consumed = consumed
        self.reshard_batch_shift = consumed - saved_consumed
        if already:
            self._head = (consumed, already // self.num_replicas)
        batch = consumed
        while queue:  # drawn but not trained: first, in this run's batches; the last one filled by new draws
            size = self._batch_sizes(batch)[1]
            group, queue = queue[:size], queue[size:]
            if len(group) < size:
                group += self._draw_count(size - len(group), batch)
            self._pending.append(group)
            batch += 1
