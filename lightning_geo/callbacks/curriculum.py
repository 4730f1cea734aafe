"""``DynamicCurriculum``: admit harder training data as the model masters what it has.

Two modes, driven by the same threshold (the share of the data, by difficulty, that is admitted):

- ``mode="samples"``: every sample gets a complexity score (:mod:`.curriculum_scores`); a
  :class:`~lightning_geo.callbacks.CurriculumSampler` draws each batch from the samples under the
  threshold plus a share of harder ones, and the threshold grows with the model's mastery.
- ``mode="seq_len"``: sequence-length warmup for language models (Li et al. 2022; Composer's
  ``SeqLengthWarmup``): each training batch is cut to ``threshold * full length`` tokens. A shuffled plain
  DataLoader gets a :class:`~lightning_geo.callbacks.CurriculumSampler` that admits everything, so the
  data resumes mid-epoch exactly as in ``samples`` mode (its order follows ``seed``).

The threshold starts at ``start_threshold`` and must reach 1 by ``deadline``. With ``pacing="mastery"``
(the default) it grows faster than the linear pace while the smoothed training loss has settled
(improvement on the admitted data stalled) and never slower than it; ``"linear"``, ``"root"`` and
``"step"`` are fixed schedules for comparison. Validation data is never filtered or shortened.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sized
from typing import Any, ClassVar, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from typing_extensions import override

from lightning_geo.callbacks.curriculum_pacing import PACINGS, Deadline, MasteryEstimator, next_threshold
from lightning_geo.callbacks.curriculum_sampler import CurriculumSampler
from lightning_geo.callbacks.curriculum_scores import Scorer, compute_scores, scorer_name, validate_scorer
from lightning_geo.callbacks.curriculum_seq_len import SEQ_LEN_MODES, batch_seq_len, batch_tensors, shorten_batch_
from lightning_geo.utils import DashboardSection, log_geo_histogram, log_geo_scalars, log_geo_text
from lightning_geo.utils.distributed import reduce_tensor

MODES: tuple[str, ...] = ("samples", "seq_len")
_REPLACEABLE_SAMPLERS = (RandomSampler, SequentialSampler)


def count_tokens(batch: Any) -> int:
    """Tokens in a batch: ``attention_mask.sum()`` or ``input_ids.numel()`` of a mapping, else the element
    count of the first tensor (the inputs of an ``(inputs, targets)`` batch)."""
    return int(_token_count(batch))


def _token_count(batch: Any) -> int | torch.Tensor:
    """:func:`count_tokens` without reading the device: an ``attention_mask``'s sum stays a tensor."""
    if isinstance(batch, Mapping):
        for key in ("attention_mask", "input_ids"):
            if isinstance(batch.get(key), torch.Tensor):
                value = batch[key]
                return value.sum() if key == "attention_mask" else value.numel()
    if isinstance(batch, torch.Tensor):
        return batch.numel()
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    return next((_token_count(item) for item in items if isinstance(item, (torch.Tensor, list, tuple, Mapping))), 0)


def _seq_len_resumable(loader: Any) -> bool:
    """Whether ``seq_len`` mode can make ``loader`` resumable: a shuffled DataLoader with a batch size."""
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        return False
    sampler = loader.sampler
    return isinstance(sampler, (CurriculumSampler, RandomSampler)) or (
        type(sampler) is DistributedSampler and sampler.shuffle
    )


class DynamicCurriculum(Callback):
    """A mastery-driven curriculum: easy data first, more and harder data as the model masters it.

    Args:
        scorer: ``mode="samples"`` only. ``"length"`` (default), ``"rarity"``, ``"loss"`` (self-paced: each
            sample's last training loss; ``training_step`` must return ``{"loss": ..., loss_key: (B,)}``),
            a callable ``sample -> float`` or a tensor with one score per sample. Higher is harder.
        mode: ``"samples"`` (default) or ``"seq_len"`` (sequence-length warmup).
        pacing: ``"mastery"`` (default), ``"linear"``, ``"root"`` or ``"step"``.
        start_threshold: Threshold at the start, in (0, 1]. Default: 0.25 for samples; for ``seq_len``
            ``min_seq_len / full length``.
        deadline: When the threshold must reach 1: a share of the run's optimizer steps (default 0.5) or
            ``"<N> steps|epochs|samples|tokens|seconds"`` (samples and tokens summed over ranks; seconds spent
            inside training batches, from this hook to the end of the optimizer step, on each rank's own clock:
            not data loading or validation; kept across a resume).
        hard_fraction: Share of each batch drawn from above the threshold at the start; it moves to the
            uniform share ``1 - threshold`` as the threshold grows. Default 0.1.
        max_speedup: With ``pacing="mastery"``, how many times faster than the linear pace the threshold
            grows at full mastery. Default 4.
        mastery_window: Training batches over which the loss change is measured. Default 50.
        mastery_tolerance: Relative loss change per window that still counts as learning. Default 0.02.
        min_seq_len: Shortest sequence in ``seq_len`` mode, in tokens. Default 8.
        seq_len_step: Sequence lengths are multiples of this. Default 8.
        seq_len_mode: ``"truncate"`` (default: keep the first tokens) or ``"reshape"`` (cut rows into more,
            shorter rows; keeps the tokens per batch).
        seq_dim: Sequence dimension of the batch's tensors. Default 1.
        pad_id: Token id the ``length`` and ``rarity`` scorers leave out. Default ``None`` (count every token).
        loss_key: Key of the per-sample losses in ``training_step``'s output (``loss`` scorer). Default
            ``"sample_loss"``.
        seed: Seeds the draws of the sampler the callback puts into a plain DataLoader (a sampler you pass keeps
            its own seed). Default 0.
        histogram_every_n_steps: Steps between histograms of the admitted samples' scores. Default 100.
        read_every_n_batches: Training batches between two host reads of the training losses (and, under
            DDP or with an ``attention_mask``, of the token counts), all read and all-reduced at once: the
            mastery estimate and a token deadline lag by at most this many batches; every other decision is
            made on the host each batch. Default 8 (one host sync per 8 steps; 1 reads every batch).

    Raises:
        ValueError: for an unknown scorer, mode, pacing or ``seq_len_mode``, a threshold outside (0, 1],
            a malformed deadline, or non-positive counts; at the start of ``fit`` for a deadline the run
            cannot meet, a dataset the scorer cannot score or a DataLoader it cannot drive.

    Example::

        trainer = L.Trainer(max_steps=2000, callbacks=[DynamicCurriculum(scorer="rarity", deadline="0.6")])
        trainer = L.Trainer(max_steps=2000, callbacks=[DynamicCurriculum(mode="seq_len", deadline="20M tokens")])
    """

    geo_dashboard_section: ClassVar[DashboardSection] = DashboardSection.for_part(
        "curriculum",
        {
            "pacing: threshold, progress and mix ratio (0-1)": (r"^geo/curriculum/(threshold|progress|mix_ratio)$",),
            "mastery of the admitted samples (0-1)": (r"^geo/curriculum/mastery$",),
            "admitted samples (count)": (r"^geo/curriculum/admitted$",),
            "sequence length (tokens)": (r"^geo/curriculum/seq_len$",),
        },
    )
    """This part's section of the GEO dashboard (see :mod:`lightning_geo.utils.dashboard`)."""

    def __init__(
        self,
        scorer: Scorer | None = None,
        *,
        mode: str = "samples",
        pacing: str = "mastery",
        start_threshold: float | None = None,
        deadline: float | str = 0.5,
        hard_fraction: float = 0.1,
        max_speedup: float = 4.0,
        mastery_window: int = 50,
        mastery_tolerance: float = 0.02,
        min_seq_len: int = 8,
        seq_len_step: int = 8,
        seq_len_mode: str = "truncate",
        seq_dim: int = 1,
        pad_id: int | None = None,
        loss_key: str = "sample_loss",
        seed: int = 0,
        histogram_every_n_steps: int = 100,
        read_every_n_batches: int = 8,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {list(MODES)}")
        if mode == "seq_len" and scorer is not None:
            raise ValueError(
                "scorer has no effect with mode='seq_len' (the sequence length is the difficulty); leave it out"
            )
        validate_scorer("length" if scorer is None else scorer)
        if pacing not in PACINGS:
            raise ValueError(f"pacing={pacing!r} is not one of {list(PACINGS)}")
        if start_threshold is not None and not 0.0 < start_threshold <= 1.0:
            raise ValueError(f"start_threshold={start_threshold!r} must be in (0, 1]")
        if not 0.0 <= hard_fraction < 1.0:
            raise ValueError(f"hard_fraction={hard_fraction!r} must be in [0, 1)")
        if not max_speedup >= 1.0:
            raise ValueError(f"max_speedup={max_speedup!r} must be >= 1 (mastery pacing is never slower than linear)")
        if seq_len_mode not in SEQ_LEN_MODES:
            raise ValueError(f"seq_len_mode={seq_len_mode!r} is not one of {list(SEQ_LEN_MODES)}")
        for name, value in (
            ("min_seq_len", min_seq_len),
            ("seq_len_step", seq_len_step),
            ("histogram_every_n_steps", histogram_every_n_steps),
            ("read_every_n_batches", read_every_n_batches),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        self.scorer = "length" if scorer is None and mode == "samples" else scorer
        self.mode = mode
        self._self_paced = isinstance(scorer, str) and scorer == "loss"
        self.pacing = pacing
        self.start_threshold = start_threshold
        self.deadline = deadline
        self._deadline = Deadline.parse(deadline)
        self.hard_fraction = hard_fraction
        self.max_speedup = max_speedup
        self.mastery_window = mastery_window
        self.mastery_tolerance = mastery_tolerance
        self.min_seq_len = min_seq_len
        self.seq_len_step = seq_len_step
        self.seq_len_mode = seq_len_mode
        self.seq_dim = seq_dim
        self.pad_id = pad_id
        self.loss_key = loss_key
        self.seed = seed
        self.histogram_every_n_steps = histogram_every_n_steps
        self.read_every_n_batches = read_every_n_batches

        self._estimator = MasteryEstimator(mastery_window, mastery_tolerance)
        self.threshold = start_threshold if start_threshold is not None else (0.25 if mode == "samples" else 1.0)
        self._start = self.threshold
        self.progress = 0.0  # share of the way to the deadline
        self.samples_seen = 0
        self.tokens_seen = 0
        self.full_seq_len: int | None = None  # seq_len mode: the batches' own length, read from the first batch
        self.seq_len: int | None = None
        self._scores: torch.Tensor | None = None
        self._sampler: CurriculumSampler | None = None
        self._sampler_state: dict[str, Any] | None = None
        self._batch_tokens: int | torch.Tensor = 0
        # (mean loss, tokens) of the batches since the last host read: tensors until read, floats once saved
        self._unread: list[tuple[torch.Tensor | float, torch.Tensor | float]] = []
        self._batch_samples = 0
        self._checked_tokens = False
        self.seconds_seen = 0.0  # seconds inside training batches (forward, backward, step), for a seconds deadline
        self._batch_started = 0.0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            mode=self.mode, scorer=scorer_name(self.scorer) if self.scorer is not None else "none"
        )

    @property
    def sampler(self) -> CurriculumSampler | None:
        """The sampler this callback drives (``None`` before ``fit``, or in ``seq_len`` mode with a DataLoader
        it cannot make resumable: one that does not shuffle or has its own sampler or batch sampler)."""
        return self._sampler

    @property
    def mix_ratio(self) -> float:
        """Share of each batch drawn from above the threshold (0 once everything is admitted)."""
        if self.mode != "samples" or self.threshold >= 1.0:
            return 0.0
        grown = 1.0 if self._start >= 1.0 else (self.threshold - self._start) / (1.0 - self._start)
        return (1.0 - grown) * self.hard_fraction + grown * (1.0 - self.threshold)

    # -- set-up ------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        source = trainer.fit_loop._data_source
        if getattr(source, "_geo_curriculum", None) is self:
            return
        request = source.dataloader

        def dataloader() -> Any:
            return self._bind(trainer, request())

        source.dataloader = dataloader  # type: ignore[method-assign]
        source._geo_curriculum = self  # type: ignore[attr-defined]

    def _bind(self, trainer: pl.Trainer, loader: Any) -> DataLoader:
        """Find (or put) the CurriculumSampler into the training DataLoader and give it this run's state.

        In ``seq_len`` mode the sampler only makes a shuffled DataLoader resumable mid-epoch (it admits
        everything); a loader it cannot drive is left as it is, as Lightning would treat it.
        """
        if self.mode == "seq_len" and not _seq_len_resumable(loader):
            return loader
        if not isinstance(loader, DataLoader):
            raise ValueError(
                f"DynamicCurriculum drives one training DataLoader, got {type(loader).__name__}; "
                "return a single torch.utils.data.DataLoader from train_dataloader()"
            )
        sampler = loader.sampler
        if not isinstance(sampler, CurriculumSampler):
            if not (isinstance(sampler, _REPLACEABLE_SAMPLERS) or type(sampler) is DistributedSampler):
                raise ValueError(
                    f"DynamicCurriculum replaces the training DataLoader's sampler, but it is a custom "
                    f"{type(sampler).__name__}; pass sampler=CurriculumSampler(dataset) to your DataLoader instead"
                )
            if isinstance(sampler, SequentialSampler):
                rank_zero_warn(
                    "DynamicCurriculum: the training DataLoader does not shuffle; the curriculum's "
                    "sampler draws in its own seeded random order"
                )
            sampler = CurriculumSampler(loader.dataset, seed=self.seed)
            loader = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
        if loader.batch_size is None:
            raise ValueError("DynamicCurriculum needs a DataLoader with batch_size (not a custom batch_sampler)")
        sampler.set_world(trainer.world_size, trainer.global_rank)
        sampler.set_batch_size(loader.batch_size)
        if self.mode == "samples":
            if self._scores is None:
                self._scores = self._compute_scores_on_rank_zero(trainer, loader.dataset)
            num_samples = len(cast(Sized, sampler.dataset))
            if len(self._scores) != num_samples:
                raise ValueError(
                    f"the curriculum's {len(self._scores)} scores do not match the training set of "
                    f"{num_samples} samples (resumed with other data?)"
                )
            sampler.set_scores(self._scores)
        if self._sampler_state is not None:
            sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
        if self.mode == "samples":
            sampler.threshold, sampler.hard_share = self.threshold, self.mix_ratio
        # The loader is resumable through its sampler: saying so lets Lightning keep (and restore) the sampler's
        # position with its loop state, instead of warning that a mid-epoch resume cannot be exact.
        loader.state_dict = sampler.state_dict
        loader.load_state_dict = sampler.load_state_dict
        self._sampler = sampler
        return loader

    def _compute_scores_on_rank_zero(self, trainer: pl.Trainer, dataset: Any) -> torch.Tensor:
        """Score the dataset on global rank 0 and broadcast; a scoring error is raised on every rank (no hang)."""
        assert self.scorer is not None  # "length" unless given, in samples mode
        payload: tuple[torch.Tensor | None, Exception | None] | None = None
        if trainer.is_global_zero:
            try:
                payload = (compute_scores(self.scorer, dataset, pad_id=self.pad_id), None)
            except (ValueError, TypeError) as error:
                payload = (None, error)
        received = trainer.strategy.broadcast(payload, src=0)  # every rank gets rank 0's payload
        scores, failure = cast("tuple[torch.Tensor | None, Exception | None]", received)
        if failure is not None:
            raise failure
        assert scores is not None
        return scores

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total_steps = float(trainer.estimated_stepping_batches)
        deadline, unit = self._deadline.amount, self._deadline.unit
        if unit == "fraction" and not math.isfinite(total_steps):
            raise ValueError(
                f"deadline={self.deadline!r} is a share of training, but the run has no finite length; "
                "set max_steps or max_epochs, or give the deadline in steps, epochs, samples or tokens"
            )
        capacity = {"steps": total_steps}
        if unit == "epochs":
            max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf
            per_epoch = trainer.num_training_batches / trainer.accumulate_grad_batches
            capacity["epochs"] = min(max_epochs, total_steps / per_epoch if per_epoch else math.inf)
        if unit == "samples" and self._sampler is not None:
            capacity["samples"] = (
                total_steps * trainer.accumulate_grad_batches * self._sampler.batch_size * trainer.world_size
            )
        if deadline > capacity.get(unit, math.inf) + 1e-9:
            raise ValueError(
                f"deadline={self.deadline!r} cannot be met: this run ends after at most "
                f"{capacity[unit]:,.6g} {unit}; give a deadline within the run"
            )
        log_geo_text(trainer, "curriculum", "config", self._describe(), throttle=False)

    def _describe(self) -> str:
        if self.mode == "samples":
            assert self.scorer is not None  # "length" unless given, in samples mode
            what, start = f"scorer `{scorer_name(self.scorer)}`", f"{self.threshold:.3g}"
        else:
            what = f"sequence length ({self.seq_len_mode}, min {self.min_seq_len}, step {self.seq_len_step})"
            start = f"{self.threshold:.3g}" if self.start_threshold is not None else "min_seq_len / full length"
        return (
            f"DynamicCurriculum: {what}, pacing `{self.pacing}`, start threshold {start}, "
            f"deadline {self._deadline}, hard fraction {self.hard_fraction:g}"
        )

    # -- every batch -------------------------------------------------------------------------------------
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_started = time.perf_counter()
        tensors = batch_tensors(batch)
        self._batch_samples = int(tensors[0].shape[0]) if tensors and tensors[0].ndim else 1
        if not self._checked_tokens and self._deadline.unit == "tokens":
            self._check_token_deadline(trainer, count_tokens(batch))  # the full batch, before any shortening
        if self.mode == "seq_len":
            if self.full_seq_len is None:
                self.full_seq_len = batch_seq_len(batch, self.seq_dim)
                if self.full_seq_len < 1:
                    raise ValueError(
                        f"mode='seq_len' found no tensor with a sequence dimension {self.seq_dim} in the training batch"
                    )
                if self.start_threshold is None and self.threshold == 1.0 and self.progress == 0.0:
                    self.threshold = self._start = min(1.0, self.min_seq_len / self.full_seq_len)
            self.seq_len = self._length_for(self.threshold)
            shorten_batch_(batch, self.seq_len, how=self.seq_len_mode, seq_dim=self.seq_dim)
        self._batch_tokens = _token_count(batch)

    def _length_for(self, threshold: float) -> int:
        assert self.full_seq_len is not None
        if threshold >= 1.0:
            return self.full_seq_len
        length = math.floor(threshold * self.full_seq_len / self.seq_len_step) * self.seq_len_step
        return max(min(self.min_seq_len, self.full_seq_len), min(length, self.full_seq_len))

    def _check_token_deadline(self, trainer: pl.Trainer, full_batch_tokens: int) -> None:
        self._checked_tokens = True
        capacity = (
            float(trainer.estimated_stepping_batches)
            * trainer.accumulate_grad_batches
            * full_batch_tokens
            * trainer.world_size
        )
        if self._deadline.amount > capacity + 1e-9:
            raise ValueError(
                f"deadline={self.deadline!r} cannot be met: this run ends after at most "
                f"{capacity:,.6g} tokens ({full_batch_tokens} per batch and rank); "
                "give a deadline within the run"
            )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.seconds_seen += time.perf_counter() - self._batch_started
        global_batch = self._sampler.mark_consumed() if self._sampler is not None else None
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if self.pacing == "mastery" and not isinstance(loss, torch.Tensor):
            raise ValueError(
                "pacing='mastery' reads the training loss, but training_step returned no loss "
                "(return the loss tensor or {'loss': ...}), or use a fixed pacing"
            )
        num_samples = len(global_batch) if global_batch is not None else 0
        self.samples_seen += num_samples or trainer.world_size * self._batch_samples
        tokens = self._batch_tokens
        if trainer.world_size == 1 and not isinstance(tokens, torch.Tensor):
            self.tokens_seen += tokens  # known on the host: nothing to read or reduce
            tokens = 0
        mean_loss = loss.detach().float().mean() if isinstance(loss, torch.Tensor) else 0.0
        self._unread.append((mean_loss, tokens))
        if self._self_paced and global_batch is not None:
            self._update_loss_scores(trainer, outputs, global_batch)
        self._log(trainer)  # what this batch trained with, before the update decides the next batch
        losses = self._read(trainer) if len(self._unread) >= self.read_every_n_batches else []
        self._advance(trainer, batch_idx, losses)

    def _read(self, trainer: pl.Trainer) -> list[float]:
        """Read (and sum over ranks) the unread losses and token counts at once; count the tokens and return
        the mean loss over ranks of each batch, oldest first. One all-reduce and one host read."""
        device = trainer.strategy.root_device
        rows = [
            torch.stack([torch.as_tensor(value, dtype=torch.float64, device=device) for value in row])
            for row in self._unread
        ]
        self._unread = []
        total = reduce_tensor(trainer, torch.stack(rows), op="sum").tolist()  # (batches, 2): loss, tokens
        self.tokens_seen += sum(int(tokens) for _, tokens in total)
        return [loss / trainer.world_size for loss, _ in total]

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._unread:  # the last batches' losses and tokens, so the counts are complete after fit
            for loss in self._read(trainer):
                self._estimator.update(loss)

    def _update_loss_scores(self, trainer: pl.Trainer, outputs: Any, global_batch: list[int]) -> None:
        per_sample = outputs.get(self.loss_key) if isinstance(outputs, Mapping) else None
        if not isinstance(per_sample, torch.Tensor):
            raise ValueError(
                f"scorer='loss' needs training_step to return {{'loss': loss, {self.loss_key!r}: "
                "per-sample losses of shape (batch_size,)}}"
            )
        gathered = trainer.strategy.all_gather(per_sample.detach().float().reshape(-1)).reshape(-1).cpu()
        if len(gathered) != len(global_batch):
            raise ValueError(
                f"{self.loss_key!r} has {len(gathered) // trainer.world_size} values per rank for "
                f"{len(global_batch) // trainer.world_size} samples; give one loss per sample"
            )
        assert self._scores is not None and self._sampler is not None
        finite = torch.isfinite(gathered)
        self._scores[torch.tensor(global_batch)[finite]] = gathered[finite].double()
        self._sampler.set_scores(self._scores)

    def _advance(self, trainer: pl.Trainer, batch_idx: int, losses: list[float]) -> None:
        unit, amount = self._deadline.unit, self._deadline.amount
        if unit == "fraction":
            done = trainer.global_step / (amount * float(trainer.estimated_stepping_batches))
        elif unit == "steps":
            done = trainer.global_step / amount
        elif unit == "epochs":
            done = (trainer.current_epoch + (batch_idx + 1) / max(1, trainer.num_training_batches)) / amount
        elif unit == "seconds":
            done = self.seconds_seen / amount
        else:
            done = (self.samples_seen if unit == "samples" else self.tokens_seen) / amount
        done = min(1.0, done)
        for loss in losses:
            self._estimator.update(loss)
        mastery = self._estimator.mastery
        self.threshold = next_threshold(
            self.pacing,
            threshold=self.threshold,
            start=self._start,
            progress=done,
            progress_step=done - self.progress,
            mastery=mastery,
            max_speedup=self.max_speedup,
        )
        self.progress = done
        if self._sampler is not None and self.mode == "samples":
            self._sampler.threshold, self._sampler.hard_share = self.threshold, self.mix_ratio

    def _log(self, trainer: pl.Trainer) -> None:
        values: dict[str, float] = {
            "threshold": self.threshold,
            "mastery": self._estimator.mastery,
            "progress": self.progress,
        }
        if self._sampler is not None and self.mode == "samples":
            values.update(mix_ratio=self.mix_ratio, admitted=self._sampler.admitted_count())
        if self.seq_len is not None:
            values["seq_len"] = self.seq_len
        log_geo_scalars(trainer, "curriculum", values)
        if (
            self._sampler is not None
            and self.mode == "samples"
            and (trainer.global_step - 1) % self.histogram_every_n_steps == 0
            and trainer.is_global_zero
        ):
            assert self._scores is not None
            admitted = self._scores[self._sampler.admitted_indices()]
            admitted = admitted[torch.isfinite(admitted)]
            if len(admitted):
                log_geo_histogram(trainer, "curriculum", "admitted_scores", admitted, throttle=False)

    # -- checkpointing -----------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        sampler_state = self._sampler.state_dict() if self._sampler is not None else self._sampler_state
        return {
            "threshold": self.threshold,
            "start": self._start,
            "progress": self.progress,
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
            "seconds_seen": self.seconds_seen,
            "full_seq_len": self.full_seq_len,
            "estimator": self._estimator.state_dict(),
            "scores": None if self._scores is None else self._scores.clone(),
            "sampler": sampler_state,
            "unread": self._unread_values(),
        }

    def _unread_values(self) -> list[list[float]]:
        """The unread (loss, tokens) pairs as floats (a host read: only when a checkpoint is saved)."""
        self._unread = [(float(loss), float(tokens)) for loss, tokens in self._unread]
        return [[float(value) for value in row] for row in self._unread]

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.threshold = float(state_dict["threshold"])
        self._start = float(state_dict["start"])
        self.progress = float(state_dict["progress"])
        self.samples_seen = int(state_dict["samples_seen"])
        self.tokens_seen = int(state_dict["tokens_seen"])
        self.seconds_seen = float(state_dict.get("seconds_seen", 0.0))
        self.full_seq_len = state_dict["full_seq_len"]
        self._estimator.load_state_dict(state_dict["estimator"])
        self._scores = state_dict["scores"]
        self._sampler_state = state_dict["sampler"]
        self._unread = [(float(loss), float(tokens)) for loss, tokens in state_dict.get("unread", [])]
        if self._sampler is not None and self._sampler_state is not None:  # loaded into a running fit
            self._sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
