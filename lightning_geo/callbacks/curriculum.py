"""``DynamicCurriculum``: admit harder training data as the model masters what it has.

Two modes, driven by the same threshold (the share of the data, by difficulty, that is admitted):

- ``mode="samples"``: every sample gets a complexity score (``curriculum_scores``); a
  [`CurriculumSampler`][lightning_geo.callbacks.CurriculumSampler] draws each batch from the samples under the
  threshold plus a share of harder ones, and the threshold grows with the model's mastery.
- ``mode="seq_len"``: sequence-length warmup for language models (Li et al. 2022; Composer's
  ``SeqLengthWarmup``): each training batch is cut to ``threshold * full length`` tokens. A shuffled plain
  DataLoader gets a [`CurriculumSampler`][lightning_geo.callbacks.CurriculumSampler] that admits everything, so the
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
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from typing_extensions import override

from lightning_geo.callbacks.curriculum_pacing import PACINGS, Deadline, MasteryEstimator, next_threshold
from lightning_geo.callbacks.curriculum_sampler import CurriculumSampler
from lightning_geo.callbacks.curriculum_scores import Scorer, compute_scores, scorer_name, validate_scorer
from lightning_geo.callbacks.curriculum_seq_len import (
    SEQ_DIMS,
    SEQ_LEN_MODES,
    batch_seq_len,
    batch_tensors,
    count_batch_tokens,
    declared_seq_len,
    describe_batch,
    shorten_batch_,
    token_shape,
)
from lightning_geo.utils import DashboardSection, log_geo_histogram, log_geo_scalars, log_geo_text
from lightning_geo.utils.checks import check_number
from lightning_geo.utils.distributed import reduce_tensor

MODES: tuple[str, ...] = ("samples", "seq_len")
ON_UNRECOGNIZED: tuple[str, ...] = ("error", "warn")
"""What ``mode="seq_len"`` does with training batches that hold no token sequence: raise, or warn once and train
on them as they are."""
_PROJECTION_AT = 0.1  # share of max_time after which the pace towards the deadline is projected (once)
_REPLACEABLE_SAMPLERS = (RandomSampler, SequentialSampler)


def count_tokens(batch: Any) -> int:
    """Tokens in a batch: a mapping's ``attention_mask.sum()``, else ``batch x time`` of its token sequence
    (``input_ids``, ``inputs_embeds`` without its hidden size, the first 2-D integer tensor); see
    [`count_batch_tokens`][lightning_geo.callbacks.curriculum_seq_len.count_batch_tokens]."""
    return int(count_batch_tokens(batch))


def _timer(trainer: pl.Trainer) -> tuple[Timer, float] | None:
    """Lightning's ``Timer`` callback and the run's ``max_time`` in seconds, or ``None`` without a ``max_time``."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]
    remaining = timer.time_remaining() if timer is not None else None
    if timer is None or remaining is None:
        return None
    # the Timer's own duration: elapsed + remaining reads the clock twice (2.00001 s for max_time=2 s)
    duration = getattr(timer, "_duration", None)
    return timer, float(duration) if duration is not None else timer.time_elapsed() + remaining


def _max_time(trainer: pl.Trainer) -> float | None:
    """The run's ``max_time`` in seconds, or ``None``."""
    found = _timer(trainer)
    return None if found is None else found[1]


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
        seq_dim: The time axis of the batch's token tensors: 1 for ``(batch, time)`` (default), 0 for time-major
            ``(time, batch)`` data.
        pad_id: Token id the ``length`` and ``rarity`` scorers leave out. Default ``None`` (count every token).
        loss_key: Key of the per-sample losses in ``training_step``'s output (``loss`` scorer). Default
            ``"sample_loss"``.
        seed: Seeds the draws of the sampler the callback puts into a plain DataLoader (a sampler you pass keeps
            its own seed). Default ``None``: the run's global seed (set by ``seed_everything``, 0 without one), as
            Lightning seeds its own samplers; a resumed run keeps the checkpoint's seed.
        histogram_every_n_steps: Steps between histograms of the admitted samples' scores. Default 100.
        read_every_n_batches: Training batches between two host reads of the training losses (and, under
            DDP or with an ``attention_mask``, of the token counts), all read and all-reduced at once: the
            mastery estimate and a token deadline lag by at most this many batches; every other decision is
            made on the host each batch. Default 8 (one host sync per 8 steps; 1 reads every batch).
        on_unrecognized: ``mode="seq_len"`` only: what to do when the training batches hold no token sequence
            (no 2-D integer token ids, no ``input_ids``/``inputs_embeds``: features, images). ``"error"``
            (default) raises at the first batch; ``"warn"`` says once that the warmup does not apply to this model
            and trains on the batches as they are (what ``recipe()`` asks for).

    Raises:
        ValueError: for an unknown scorer, mode, pacing, ``seq_len_mode``, ``seq_dim`` or ``on_unrecognized``, a
            threshold outside (0, 1], a malformed deadline, or non-positive counts; at the start of ``fit`` for a
            deadline the run cannot meet, a dataset the scorer cannot score or a DataLoader it cannot drive; at
            the first batch in ``seq_len`` mode for a batch with no token sequence (unless
            ``on_unrecognized="warn"``).

    A deadline the run may not reach is said once: during training when ``max_time`` will stop the run before
    it, and at the end of training whenever the run stopped before the threshold reached 1 (``max_time``,
    ``EarlyStopping``, a budget callback stopping a run whose ``max_steps`` is only a cap).

    Example:
        ```python
        trainer = L.Trainer(max_steps=2000, callbacks=[DynamicCurriculum(scorer="rarity", deadline="0.6")])
        trainer = L.Trainer(max_steps=2000, callbacks=[DynamicCurriculum(mode="seq_len", deadline="20M tokens")])
        ```
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
    """This part's section of the GEO dashboard (see ``lightning_geo.utils.dashboard``)."""

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
        seed: int | None = None,
        histogram_every_n_steps: int = 100,
        read_every_n_batches: int = 8,
        on_unrecognized: str = "error",
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
        if start_threshold is not None:
            check_number("DynamicCurriculum", "start_threshold", start_threshold, 0.0, 1.0, low_open=True)
        check_number("DynamicCurriculum", "hard_fraction", hard_fraction, 0.0, 1.0, high_open=True)
        check_number("DynamicCurriculum", "max_speedup", max_speedup, 1.0)  # mastery is never slower than linear
        check_number("DynamicCurriculum", "mastery_tolerance", mastery_tolerance, 0.0)
        if seq_len_mode not in SEQ_LEN_MODES:
            raise ValueError(f"seq_len_mode={seq_len_mode!r} is not one of {list(SEQ_LEN_MODES)}")
        if isinstance(seq_dim, bool) or seq_dim not in SEQ_DIMS:
            raise ValueError(
                f"seq_dim={seq_dim!r} is not one of {list(SEQ_DIMS)} (the time axis of (batch, time) token tensors, "
                "or 0 for time-major (time, batch) data)"
            )
        if seq_len_mode == "reshape" and seq_dim != 1:
            raise ValueError(f"seq_len_mode='reshape' needs seq_dim=1, got seq_dim={seq_dim!r}")
        if on_unrecognized not in ON_UNRECOGNIZED:
            raise ValueError(f"on_unrecognized={on_unrecognized!r} is not one of {list(ON_UNRECOGNIZED)}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed={seed!r} must be an integer or None (the run's global seed)")
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
        self.on_unrecognized = on_unrecognized

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
        # (mean loss over ranks, tokens summed over ranks) of unread batches older than those: combined over the
        # ranks when a checkpoint was saved, so that a resume on any number of processes reads every rank's
        self._unread_combined: list[tuple[float, float]] = []
        self._batch_samples = 0
        self._checked_tokens = False
        self.seconds_seen = 0.0  # seconds inside training batches (forward, backward, step), for a seconds deadline
        self._batch_started = 0.0
        self._no_sequence = False  # seq_len mode: this fit's batches hold no token sequence (warned once)
        self._projected = False  # the pace towards the deadline was checked against max_time (once per fit)
        self._pace_from: tuple[float, float] | None = None  # (seconds of the run, progress) after its first batch
        self._warned_unfinished = False

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
            sampler = CurriculumSampler(loader.dataset, seed=self.seed)  # None: the global seed, or the checkpoint's
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
        self._follow_reshard(trainer)
        total_steps = float(trainer.estimated_stepping_batches)
        deadline, unit = self._deadline.amount, self._deadline.unit
        if unit == "fraction" and not math.isfinite(total_steps):
            max_time = _max_time(trainer)
            bound = f"it is bounded only by max_time ({max_time:,.6g} s)" if max_time else "it has no finite length"
            seconds = max(1, round(deadline * max_time)) if max_time else 600
            raise ValueError(
                f"deadline={self.deadline!r} is a share of the run's steps, but {bound}; give the deadline in "
                f"seconds spent in training batches, e.g. deadline='{seconds} seconds', or in steps, epochs, samples "
                "or tokens, or set max_steps or max_epochs"
            )
        self._projected = self._warned_unfinished = self._no_sequence = False
        self._pace_from = None
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

    def _follow_reshard(self, trainer: pl.Trainer) -> None:
        """After a resume on another number of processes (or batch size per process), move Lightning's count of
        the epoch's batches to the sampler's, so that the epoch ends where the sampler's samples do."""
        sampler = self._sampler
        if sampler is None or sampler.resharded_from is None:
            return
        shift = sampler.reshard_batch_shift
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        for field in ("ready", "started", "processed", "completed"):
            setattr(progress, field, max(0, getattr(progress, field) + shift))
        replicas, batch_size = sampler.resharded_from
        rank_zero_info(
            f"DynamicCurriculum: resumed on {sampler.num_replicas} process(es) x batch {sampler.batch_size} from a "
            f"checkpoint of {replicas} x {batch_size}; epoch {sampler.epoch} continues with the samples it has not "
            f"trained on ({sampler.num_batches - sampler._consumed} batches of this run left)"
        )
        sampler.resharded_from = None

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
        shape, tensors = token_shape(batch, self.seq_dim), batch_tensors(batch)
        if shape is not None:
            self._batch_samples = shape[1 - self.seq_dim]
        else:
            self._batch_samples = int(tensors[0].shape[0]) if tensors and tensors[0].ndim else 1
        if not self._checked_tokens and self._deadline.unit == "tokens":
            self._check_token_deadline(trainer, int(count_batch_tokens(batch, self.seq_dim)))  # before shortening
        if self.mode == "seq_len" and not self._no_sequence:
            length = batch_seq_len(batch, self.seq_dim)
            if length < 1:
                self._no_token_sequence(batch)
            else:
                if self.full_seq_len is None:
                    self._read_full_seq_len(pl_module, length)
                self.seq_len = self._length_for(self.threshold)
                shorten_batch_(batch, self.seq_len, how=self.seq_len_mode, seq_dim=self.seq_dim)
        self._batch_tokens = count_batch_tokens(batch, self.seq_dim)

    def _read_full_seq_len(self, pl_module: pl.LightningModule, length: int) -> None:
        """Take the first batch's length as full length, capped at the length the model declares."""
        declared = declared_seq_len(pl_module)
        self.full_seq_len = length if declared is None else min(length, declared[0])
        if declared is not None and length > declared[0]:
            rank_zero_warn(
                f"DynamicCurriculum(mode='seq_len'): the training batches have {length} tokens, but the model "
                f"declares at most {declared[0]} ({declared[1]}); the warmup grows sequences to {declared[0]} "
                "tokens and cuts longer batches to it"
            )
        if self.start_threshold is None and self.threshold == 1.0 and self.progress == 0.0:
            self.threshold = self._start = min(1.0, self.min_seq_len / self.full_seq_len)
        if self.full_seq_len <= self.min_seq_len:
            rank_zero_warn(
                f"DynamicCurriculum(mode='seq_len'): the sequence-length warmup does nothing for this model: its "
                f"training sequences have {self.full_seq_len} tokens, no more than min_seq_len={self.min_seq_len}"
            )

    def _no_token_sequence(self, batch: Any) -> None:
        """A seq_len-mode batch without a token sequence: raise, or say once that the warmup does not apply."""
        why = (
            f"its training batches hold no token sequence ({describe_batch(batch)}); the warmup shortens 2-D integer "
            "token ids (batch, time), a batch's input_ids or inputs_embeds and the tensors of that shape (masks, "
            "labels, position ids), and leaves features, images and anything else alone"
        )
        if self.on_unrecognized == "error":
            raise ValueError(
                f"DynamicCurriculum(mode='seq_len') cannot warm up this model: {why}. Use mode='samples' for a "
                "curriculum over samples, or leave the callback out"
            )
        rank_zero_warn(
            f"DynamicCurriculum(mode='seq_len'): the sequence-length warmup does nothing for this model: {why}"
        )
        self._no_sequence = True
        self.threshold = self._start = 1.0  # nothing to warm up: every batch trains at its own shape

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
        unread = len(self._unread_combined) + len(self._unread)
        losses = self._read(trainer) if unread >= self.read_every_n_batches else []
        self._advance(trainer, batch_idx, losses)
        if not self._projected and self.threshold < 1.0 and self._deadline.unit != "seconds":
            self._check_pace(trainer)

    def _check_pace(self, trainer: pl.Trainer) -> None:
        """Once ``_PROJECTION_AT`` of ``max_time`` has passed, warn if at this pace the run's ``max_time`` stops it
        before the deadline (a share of ``max_steps`` that is only a cap, a count the run will not reach)."""
        found = _timer(trainer)
        if found is None:
            self._projected = True
            return
        timer, max_time = found
        elapsed = timer.time_elapsed()
        if self._pace_from is None:  # the pace is measured from the first batch on: start-up (compile) is not pace
            self._pace_from = (elapsed, self.progress)
            return
        start_time, start_progress = self._pace_from
        if elapsed < _PROJECTION_AT * max_time or self.progress <= start_progress:
            return
        self._projected = True
        projected = elapsed + (1.0 - self.progress) * (elapsed - start_time) / (self.progress - start_progress)
        if projected > max_time:
            self._warned_unfinished = True
            rank_zero_warn(
                f"DynamicCurriculum: at this pace the run's max_time ({max_time:,.6g} s) stops it before the "
                f"deadline ({self._deadline}): {self.progress:.1%} of the way after {elapsed:,.6g} s, so "
                f"{self._unfinished_effect()} for the rest of the run. "
                f"{self._seconds_advice(max_time)}"
            )

    def _unfinished_effect(self) -> str:
        if self.mode == "seq_len":
            return "the training batches stay shorter than their full length"
        return "part of the training data is never admitted"

    def _seconds_advice(self, max_time: float | None) -> str:
        share = self._deadline.amount if self._deadline.unit == "fraction" else 0.3
        example = f"deadline='{max(1, round(share * max_time)) if max_time else 600} seconds'"
        if self._deadline.unit == "fraction":
            return (
                "The deadline is a share of max_steps/max_epochs, which this run does not reach (they are only a "
                "cap); for a run that stops on time or on a budget, give it in seconds spent in training batches "
                f"({example}) or in tokens"
            )
        return (
            f"Give a deadline the run reaches: fewer {self._deadline.unit}, or, for a run that stops on time, seconds "
            f"spent in training batches ({example})"
        )

    def _read(self, trainer: pl.Trainer) -> list[float]:
        """Read (and sum over ranks) the unread losses and token counts at once; count the tokens and return
        the mean loss over ranks of each batch, oldest first. At most one all-reduce and one host read."""
        rows, self._unread_combined = self._unread_combined, []
        rows += self._combine_unread(trainer)
        self.tokens_seen += sum(int(tokens) for _, tokens in rows)
        return [loss for loss, _ in rows]

    def _combine_unread(self, trainer: pl.Trainer) -> list[tuple[float, float]]:
        """``(mean loss over ranks, tokens summed over ranks)`` of each unread batch, oldest first, and none left
        unread. A collective when there are unread batches (every rank has as many)."""
        if not self._unread:
            return []
        device = trainer.strategy.root_device
        rows = [
            torch.stack([torch.as_tensor(value, dtype=torch.float64, device=device) for value in row])
            for row in self._unread
        ]
        self._unread = []
        total = reduce_tensor(trainer, torch.stack(rows), op="sum").tolist()  # (batches, 2): loss, tokens
        return [(loss / trainer.world_size, tokens) for loss, tokens in total]

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._unread or self._unread_combined:  # the last batches' losses and tokens: counts complete after fit
            for loss in self._read(trainer):
                self._estimator.update(loss)
        if self.threshold < 1.0 and not self._warned_unfinished and not self._no_sequence:
            self._warned_unfinished = True
            if self.mode == "seq_len" and self.full_seq_len is not None:
                what = "sequence-length warmup reached full length"
                reached = f"reached {self.seq_len or self._length_for(self.threshold)} of {self.full_seq_len} tokens"
            else:
                what, reached = "curriculum admitted all data", f"admitted {self.threshold:.1%} of the training data"
            rank_zero_warn(
                f"DynamicCurriculum: the run stopped before the {what}: {reached} "
                f"(deadline {self._deadline}, {self.progress:.1%} of the way, step {trainer.global_step}). "
                f"{self._seconds_advice(_max_time(trainer))}"
            )

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
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Save the unread batches' losses and token counts combined over the ranks (``unread_combined``: the mean
        loss, the tokens summed), not rank 0's own: a run resumed on another number of processes would count rank
        0's tokens once per process of its own (2 -> 1: half the tokens of the batches before the save). The run
        itself goes on with the same combined values, so it reads what a run resumed from this checkpoint reads.
        One all-reduce, on every rank (every rank saves a checkpoint)."""
        self._unread_combined += self._combine_unread(trainer)
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is not None:
            state["unread"] = []
            state["unread_combined"] = [[loss, tokens] for loss, tokens in self._unread_combined]

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
        self._unread_combined = [(float(loss), float(tokens)) for loss, tokens in state_dict.get("unread_combined", [])]
        if self._sampler is not None and self._sampler_state is not None:  # loaded into a running fit
            self._sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
