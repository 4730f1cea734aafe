"""``LengthBucketing``: batches of similar length under a token budget for predict (and validate/test).

A DataLoader of fixed batch size pads every batch to its longest sample; on real text, whose lengths
spread over one or two orders of magnitude, most of the arithmetic then goes to padding. This callback
replaces the batching of the chosen loops' DataLoaders: samples are sorted by length and grouped under a
budget of ``max_tokens`` padded tokens per batch (many short samples, few long ones), each batch is
padded only to its own longest sample, and ``trainer.predict`` returns the predictions in dataset order,
batched as the original DataLoader batched them.

Lightning has no public hook between requesting a loop's DataLoaders and iterating them, nor for the
predictions it returns. So ``setup`` wraps the loop's dataloader source (``loop._data_source``), and
``on_predict_epoch_end`` reorders the loop's ``_predictions``: Lightning internals, checked against
Lightning 2.6 by the tests, which drive the real Trainer so that a change there fails loudly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.overrides.distributed import _IndexBatchSamplerWrapper
from lightning.pytorch.trainer.connectors.data_connector import _DataLoaderSource
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader, IterableDataset, default_collate
from typing_extensions import override

from lightning_geo.utils import any_rank
from lightning_geo.utils.bucket_collate import padding_collate_fn
from lightning_geo.utils.bucket_lengths import LengthFn, cached_lengths
from lightning_geo.utils.bucket_order import Unsplittable, restore_order, split_per_sample
from lightning_geo.utils.bucket_sampler import BucketBatchSampler, padded_tokens

if TYPE_CHECKING:
    import lightning.pytorch as pl

STAGES: tuple[str, ...] = ("predict", "validate", "test")
"""Loops ``LengthBucketing`` can batch: ``trainer.predict``, ``trainer.validate`` and ``trainer.test``."""

_LOOPS = {"predict": "predict_loop", "validate": "validate_loop", "test": "test_loop"}
# DataLoader settings carried over to the bucketed loader (batching, sampling and order are replaced)
_LOADER_SETTINGS = ("num_workers", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context",
                    "generator", "prefetch_factor", "persistent_workers", "pin_memory_device", "in_order")


class BucketedLoader:
    """A DataLoader over the same dataset whose batches come from a ``BucketBatchSampler``.

    Not a ``DataLoader`` subclass on purpose: Lightning would re-shard it with a ``DistributedSampler``
    (it is already sharded) or refuse its batch sampler. Iterating it iterates the inner ``loader``.

    Attributes:
        loader: The inner ``torch.utils.data.DataLoader``.
        sampler: Its ``BucketBatchSampler`` (this rank's batches).
        batch_sampler: What the inner loader draws batches from (for predict, Lightning's index recorder
            around ``sampler``, so prediction writers receive the dataset indices of each batch).
        original_batch_size: The replaced DataLoader's ``batch_size``: predictions are regrouped by it.
    """

    def __init__(self, original: DataLoader, sampler: BucketBatchSampler, *, collate_fn: Any, record: bool) -> None:
        self.dataset = original.dataset
        self.sampler = sampler
        self.original_batch_size = original.batch_size
        self.batch_sampler: Any = _IndexBatchSamplerWrapper(sampler) if record else sampler
        settings = {name: getattr(original, name) for name in _LOADER_SETTINGS if hasattr(original, name)}
        if not settings.get("num_workers"):
            settings.pop("prefetch_factor", None)
            settings.pop("persistent_workers", None)
        self.loader = DataLoader(self.dataset, batch_sampler=self.batch_sampler, collate_fn=collate_fn, **settings)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


@dataclass
class _BucketedSource(_DataLoaderSource):
    """The loop's dataloader source, with every DataLoader it returns replaced by a ``BucketedLoader``."""

    bucketing: LengthBucketing | None = None
    stage: str = "predict"

    @override
    def dataloader(self) -> Any:
        loaders = super().dataloader()
        assert self.bucketing is not None
        if isinstance(loaders, CombinedLoader):
            loaders.flattened = [self.bucketing._bucket(dl, self.stage) for dl in loaders.flattened]
            return loaders
        return apply_to_collection(loaders, DataLoader, self.bucketing._bucket, self.stage)


class LengthBucketing(Callback):
    """Length-bucketed, token-budget batching for ``trainer.predict`` (and ``validate``/``test`` if asked).

    In each chosen loop, every map-style DataLoader is replaced by one over the same dataset (same
    ``collate_fn``, workers and pinning) whose batches hold samples of similar length, with at most
    ``max_tokens`` padded tokens each (batch size x its longest sample). Short samples come in large
    batches, long ones in small ones, so memory stays bounded by the budget and little is padded.

    - **Lengths** come, once per dataset, from ``length_fn(sample)``, else the dataset's ``lengths``
      attribute (one int per sample), else each sample's ``attention_mask``; a dataset without any of
      them is refused with a ``ValueError``.
    - **Padding**: the DataLoader's own ``collate_fn`` is reused, so each batch is padded to its own
      longest sample by the user's rule. A DataLoader with PyTorch's default collate gets
      ``pad_collate`` (right-padding with ``padding_value``).
    - **Order**: ``trainer.predict`` returns the predictions in dataset order, regrouped into the original
      DataLoader's ``batch_size`` (one batch if it has none; equal-shaped per-sample tensors are stacked, as a
      plain loop returns them).
      An epoch-interval ``BasePredictionWriter`` receives them the same way with matching
      ``batch_indices``; a batch-interval writer receives each bucketed batch with its true dataset indices.
      Outputs must be led by the batch dimension (tensors, or mappings/tuples of them); otherwise they are
      left in bucket order, with one warning.
    - **DDP**: every rank gets a disjoint share of the buckets, equal in number of batches and close in
      padded tokens (no ``DistributedSampler`` padding repeats a sample). With ``gather=True`` the
      predictions of all ranks are gathered, so every rank's result holds the whole dataset in order.
    - **Metrics**: validate/test see every sample exactly once, so sample- or token-weighted metrics
      (``torchmetrics.MeanMetric`` with ``weight=``) are unchanged; a plain mean of per-batch means
      changes, as batches differ in size.

    A sample longer than ``max_tokens`` gets a batch of its own, with one warning. ``fit``'s validation
    loop is not bucketed (``"validate"`` means ``trainer.validate``). Iterable datasets cannot be
    bucketed: they are left as they are, with one warning.

    Args:
        max_tokens: Most padded tokens per batch (samples x longest sample), ``>= 1``. Default 4096.
        stages: Loops to bucket, from ``"predict"``, ``"validate"``, ``"test"``. Default ``("predict",)``.
        length_fn: Called once per sample (``dataset[i]``), returns its length in tokens. Default ``None``:
            ``dataset.lengths``, else the ``attention_mask``.
        max_batch_size: Most samples per batch, or ``None`` (default) for no limit beyond ``max_tokens``.
        padding_value: Padding of ``pad_collate``, used only for DataLoaders with the default collate.
            Default 0.
        restore_order: Return predict outputs in dataset order (default ``True``); ``False`` leaves them
            in bucket order (each writer batch still carries its dataset indices).
        gather: Under DDP, gather all ranks' predictions onto every rank (default ``True``); ``False``
            keeps each rank's own share (in dataset order within it).

    Raises:
        ValueError: for ``max_tokens`` or ``max_batch_size`` below 1, an unknown or empty ``stages``, or a
            non-callable ``length_fn``.

    Example:
        ```python
        trainer = L.Trainer(callbacks=[LengthBucketing(max_tokens=8192)])
        losses = trainer.predict(model, DataLoader(dataset, batch_size=32, collate_fn=pad))  # dataset order
        ```
    """

    def __init__(
        self,
        max_tokens: int = 4096,
        *,
        stages: Sequence[str] = ("predict",),
        length_fn: LengthFn | None = None,
        max_batch_size: int | None = None,
        padding_value: float = 0,
        restore_order: bool = True,
        gather: bool = True,
    ) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens!r} must be an integer >= 1 (padded tokens per batch)")
        if max_batch_size is not None and (
            isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1
        ):
            raise ValueError(f"max_batch_size={max_batch_size!r} must be None or an integer >= 1")
        if isinstance(stages, str) or not stages or any(s not in STAGES for s in stages):
            raise ValueError(f"stages={stages!r} must be a non-empty sequence of {list(STAGES)}")
        if length_fn is not None and not callable(length_fn):
            raise ValueError(f"length_fn={length_fn!r} must be None or a callable returning a sample's length")
        self.max_tokens = max_tokens
        self.stages = tuple(dict.fromkeys(stages))
        self.length_fn = length_fn
        self.max_batch_size = max_batch_size
        self.padding_value = padding_value
        self.restore_order = restore_order
        self.gather = gather
        self.real_tokens = 0
        """Tokens of the samples in the last bucketed loaders (this rank)."""
        self.padded_tokens = 0
        """Tokens those loaders' batches hold once padded (this rank)."""
        self._lengths: dict[int, tuple[Any, list[int]]] = {}
        self._sources: dict[str, _DataLoaderSource] = {}
        self._trainer: pl.Trainer | None = None
        self._warned: set[str] = set()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(max_tokens=self.max_tokens, stages=self.stages)

    @property
    def padding_ratio(self) -> float:
        """Padded tokens / real tokens of the last bucketed loaders (1.0: no padding at all)."""
        return self.padded_tokens / self.real_tokens if self.real_tokens else 1.0

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in self.stages:
            return
        self._trainer = trainer
        loop = getattr(trainer, _LOOPS[stage])
        source = loop._data_source
        if isinstance(source, _BucketedSource):
            source.bucketing = self
        else:
            self._sources[stage] = source
            loop._data_source = _BucketedSource(source.instance, source.name, bucketing=self, stage=stage)
        self.real_tokens = self.padded_tokens = 0
        if stage == "predict":
            self._run_before_prediction_writers(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        original = self._sources.pop(stage, None)
        if original is not None:
            loop = getattr(trainer, _LOOPS[stage])
            original.instance = loop._data_source.instance
            loop._data_source = original

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop = trainer.predict_loop
        if not self.restore_order or not loop._predictions or not any(loop._predictions):
            return
        loaders = loop._combined_loader.flattened if loop._combined_loader is not None else []
        for dataloader_idx, (loader, predictions) in enumerate(zip(loaders, loop._predictions, strict=False)):
            if not isinstance(loader, BucketedLoader):
                continue
            indexed = self._indexed_outputs(predictions, loader.sampler.batches)
            if any_rank(trainer, indexed is None):
                self._warn_once(
                    "unsplittable",
                    "LengthBucketing: a predict_step output is not led by the batch dimension (a tensor of the batch "
                    "size, or a mapping/tuple of such), so the predictions stay in bucket order. Use the "
                    "BasePredictionWriter's batch_indices to place them.",
                )
                continue
            assert indexed is not None
            if trainer.world_size > 1 and self.gather:
                gathered: list[Any] = [None] * trainer.world_size
                dist.all_gather_object(gathered, indexed)
                indexed = [pair for part in gathered for pair in part]
            batch_size = loader.original_batch_size or max(len(indexed), 1)
            batches, batch_indices = restore_order(indexed, batch_size)
            loop._predictions[dataloader_idx] = batches
            if dataloader_idx < len(getattr(loop, "epoch_batch_indices", [])):
                loop.epoch_batch_indices[dataloader_idx] = batch_indices

    # ------------------------------------------------------------------ internals

    def _run_before_prediction_writers(self, trainer: pl.Trainer) -> None:
        # Epoch-interval writers read the loop's predictions in their on_predict_epoch_end: reorder first.
        callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set on the Trainer by its callback connector
        writers = [i for i, cb in enumerate(callbacks) if isinstance(cb, BasePredictionWriter)]
        mine = callbacks.index(self) if self in callbacks else None
        if writers and mine is not None and mine > writers[0]:
            callbacks.remove(self)
            callbacks.insert(writers[0], self)

    @staticmethod
    def _indexed_outputs(predictions: list[Any], batches: list[list[int]]) -> list[tuple[int, Any]] | None:
        indexed: list[tuple[int, Any]] = []
        for output, batch in zip(predictions, batches, strict=False):
            try:
                indexed.extend(zip(batch, split_per_sample(output, len(batch)), strict=True))
            except Unsplittable:
                return None
        return indexed

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def _bucket(self, loader: DataLoader, stage: str) -> DataLoader | BucketedLoader:
        if isinstance(loader.dataset, IterableDataset):
            self._warn_once(
                "iterable",
                f"LengthBucketing: the {stage} DataLoader's dataset is an IterableDataset "
                f"({type(loader.dataset).__name__}), which cannot be sorted by length; it runs with its own batching.",
            )
            return loader
        lengths = cached_lengths(self._lengths, loader.dataset, self.length_fn)
        trainer = self._trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = BucketBatchSampler(
            lengths, self.max_tokens, max_batch_size=self.max_batch_size, num_replicas=world_size, rank=rank
        )
        if sampler.oversized:
            longest = max(lengths[i] for i in sampler.oversized)
            self._warn_once(
                "oversized",
                f"LengthBucketing: {len(sampler.oversized)} sample(s) are longer than max_tokens={self.max_tokens} "
                f"(the longest has {longest} tokens); each runs in a batch of its own, above the budget.",
            )
        self.real_tokens += sum(lengths[i] for b in sampler.batches for i in b)
        self.padded_tokens += sum(padded_tokens(b, lengths) for b in sampler.batches)
        collate_fn = loader.collate_fn
        if collate_fn is default_collate or collate_fn is None:
            collate_fn = padding_collate_fn(self.padding_value)
        return BucketedLoader(loader, sampler, collate_fn=collate_fn, record=stage == "predict")

