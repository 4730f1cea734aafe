"""``BatchSizeSchedule``: grow the effective batch as the measured gradient noise scale grows.

Early in training the gradient is large and consistent, and a small batch estimates it well; later the gradient
shrinks against its noise and a larger batch pays off. McCandlish et al. (2018) show that the batch beyond which
more samples per step stop buying fewer steps tracks the *gradient noise scale* ``B_simple = tr(Σ) / |G|²``. This
callback measures it during training, from work each step does anyway, and doubles the number of accumulated
micro-batches per optimizer step when it has grown past the current batch (a batch-size warmup), scaling the
learning rate with the batch:

```python
trainer = L.Trainer(callbacks=[BatchSizeSchedule()])  # 2 -> 4 -> 8 micro-batches per step
```

How, step by step:

1. **Two batch sizes for free.** Under gradient accumulation the gradient after the first micro-batch of a step is
    the mean gradient of ``B_small = 1`` micro-batch (on DDP it runs under ``no_sync``, so it is this rank's own),
    and the gradient at the optimizer step is the mean over ``B_big = k × world_size`` micro-batches (accumulated
    and all-reduced). The squared norms of both give unbiased estimates of ``|G|²`` and ``tr(Σ)`` (see
    [GradientNoiseScale][lightning_geo.callbacks.GradientNoiseScale]), with no extra backward. Lightning divides the
    loss by ``accumulate_grad_batches``; the first norm is multiplied back. Every ``estimate_every`` optimizer steps
    both norms are computed on the device, averaged over ranks in one small all-reduce and read with **one host
    sync**; other steps cost nothing. Every rank folds the same two numbers into the same moving averages, so every
    rank holds the same estimate and takes the same decisions.

2. **The schedule.** The callback owns ``trainer.accumulate_grad_batches`` (a Trainer with its own
    ``accumulate_grad_batches`` > 1, or Lightning's ``GradientAccumulationScheduler``, is refused: they would
    fight). It starts at ``min_accumulation`` (at least 2: one micro-batch per step gives no second batch size;
    halve the loader's batch size to keep your starting effective batch) and doubles while:

    ```text
    noise_fraction × noise scale >= (1 + hysteresis) × 2 × accumulation × world_size   (in micro-batches)
    ```

    up to ``max_accumulation``, never shrinking. Decisions start once the moving averages have seen
    ``ceil(1 / (1 - ema))`` measurements. A new accumulation takes effect at the first optimizer-step boundary where
    the epoch's batch count is a multiple of it, because Lightning re-reads ``accumulate_grad_batches`` every batch
    and places both the ``zero_grad`` and the optimizer step at multiples of it: switching there keeps every step
    made of whole, freshly-zeroed windows (and the loss normalisation right).

3. **The learning rate.** Each step the LR of every param group is multiplied by
    ``lr_factor = (accumulation / min_accumulation) ** power``, ``power`` = 0.5 for ``lr_scaling="sqrt"`` (default,
    Adam-family), 1 for ``"linear"`` (SGD), 0 for ``"none"``. The factor is applied in an optimizer step pre-hook and
    removed in a step post-hook, so an LR scheduler never reads or writes a multiplied value: it composes with any
    scheduler (and with [SparsityAwareLR][lightning_geo.callbacks.SparsityAwareLR], whose multipliers it encloses).
    Lightning's ``LearningRateMonitor`` shows the scheduler's LR; the effective one is that times
    ``geo/batch/lr_factor``.

**Steps are not samples.** ``max_steps`` counts optimizer steps, so once the accumulation grows a run of
``max_steps`` steps reads more data (up to ``max_accumulation / min_accumulation`` times as much); so do
``trainer.estimated_stepping_batches`` and step-based schedules sized from it, which Lightning computes from the
accumulation at set-up. Budget runs by samples (``geo/batch/samples``) or ``max_epochs``.

Logged under ``geo/batch/`` (at Lightning's ``log_every_n_steps`` cadence): ``noise_scale`` (samples, or
micro-batches where the batch size cannot be read off the batch), ``accumulation`` (micro-batches per optimizer step
and rank), ``samples_per_step`` (the effective batch, all ranks), ``samples`` (seen so far, all ranks) and
``lr_factor``.

Where it cannot measure (more than one process under a strategy that is not DDP, such as FSDP2 or tensor
parallelism, whose first micro-batch gradient is not a whole local gradient; a precision plugin other than
Lightning's that may scale the loss in a way the callback cannot undo, unless its ``scaling`` attribute is False) it
says so once and keeps the accumulation at ``min_accumulation``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim import Optimizer

from lightning_geo.callbacks.noise_scale import GradientNoiseScale
from lightning_geo.utils import DashboardSection, log_geo_scalars, reduce_tensor

LR_SCALINGS: dict[str, float] = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}
"""``lr_scaling`` name -> the power of ``accumulation / min_accumulation`` that multiplies the learning rate."""


def target_accumulation(
    noise_scale: float,
    *,
    current: int,
    world_size: int,
    max_accumulation: int,
    noise_fraction: float,
    hysteresis: float,
) -> int:
    """The accumulation the schedule moves to from ``current`` for a measured noise scale.

    Args:
        noise_scale: ``B_simple`` in micro-batches (one micro-batch = one rank's loader batch); NaN: no estimate.
        current: The accumulation now (micro-batches per optimizer step and rank).
        world_size: The number of ranks; the effective batch is ``accumulation × world_size`` micro-batches.
        max_accumulation: The cap.
        noise_fraction: The target effective batch as a fraction of the noise scale.
        hysteresis: The margin by which the target must exceed a doubled batch before doubling.

    Returns:
        ``current`` doubled as many times as ``noise_fraction × noise_scale >= (1 + hysteresis) × 2 × accumulation ×
        world_size`` allows without passing ``max_accumulation``; ``current`` itself if not once (never less).
    """
    accumulation = current
    if not math.isfinite(noise_scale):
        return accumulation
    target = noise_fraction * noise_scale
    while 2 * accumulation <= max_accumulation and target >= (1.0 + hysteresis) * 2 * accumulation * world_size:
        accumulation *= 2
    return accumulation


def _int_at_least(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: `{name}` must be an int >= {minimum}, got {value!r}")
    return value


def _finite_number(owner: str, name: str, value: Any, *, low: float, high: float = math.inf, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}: `{name}` must be a finite number {allowed}, got {value!r}")
    if not low <= value < high:
        raise ValueError(f"{owner}: `{name}` must be {allowed}, got {value!r}")
    return float(value)


class BatchSizeSchedule(pl.Callback):
    """Grow gradient accumulation, and with it the learning rate, as the gradient noise scale grows.

    Under gradient accumulation, the gradient after a step's first micro-batch and the accumulated (on DDP,
    all-reduced) gradient at the optimizer step are mean gradients over two batch sizes; their squared norms give
    the noise scale ``B_simple = tr(Σ) / |G|²`` (see [GradientNoiseScale][lightning_geo.callbacks.GradientNoiseScale])
    with no extra backward and one host sync every ``estimate_every`` steps. The callback sets
    ``trainer.accumulate_grad_batches`` itself: it starts at ``min_accumulation`` and doubles, at an optimizer-step
    boundary aligned with the new value, while ``noise_fraction × noise scale >= (1 + hysteresis) × 2 × accumulation
    × world_size`` (in micro-batches), up to ``max_accumulation``; it never shrinks. Every step, every param group's
    LR is multiplied by ``(accumulation / min_accumulation) ** power`` in an optimizer step pre-hook and restored in
    a post-hook, so LR schedulers never see the factor. ``max_steps`` counts optimizer steps: once the accumulation
    grows, a step reads more samples (logged as ``geo/batch/samples_per_step`` and ``geo/batch/samples``).

    Args:
        min_accumulation: Micro-batches per optimizer step (and rank) at the start, >= 2 (default 2). It is also
            the reference batch ``B0`` of the LR rule.
        max_accumulation: The cap, ``min_accumulation × 2**j`` for some ``j >= 0`` (default 8).
        noise_fraction: The target effective batch as a fraction of the measured noise scale, > 0 (default 1.0:
            the paper's compromise, where a step costs twice the minimal number of samples and the run twice the
            minimal number of steps).
        hysteresis: How far, as a fraction >= 0, the target must pass a doubled effective batch before the
            accumulation doubles (default 0.25): protects against one noisy reading.
        ema: Weight of the old value in the moving averages of ``|G|²`` and ``tr(Σ)``, per measurement, in
            ``[0, 1)`` (default 0.9).
        estimate_every: Measure the two gradient norms every this many optimizer steps (one host sync each
            time; nothing in between), >= 1 (default 10).
        lr_scaling: ``"sqrt"`` (default; lr ∝ (B / B0) ** 0.5, for Adam-family optimizers), ``"linear"``
            (lr ∝ B / B0, for SGD) or ``"none"``.

    Raises:
        ValueError: for a setting out of its range (the message names it and the range); at set-up, for a Trainer
            with ``accumulate_grad_batches`` > 1, Lightning's ``GradientAccumulationScheduler``, manual optimization
            or a strategy that accumulates gradients itself (DeepSpeed).

    Example:
        ```python
        import lightning as L
        from lightning_geo.callbacks import BatchSizeSchedule

        schedule = BatchSizeSchedule(min_accumulation=2, max_accumulation=16, lr_scaling="sqrt")
        trainer = L.Trainer(max_epochs=3, callbacks=[schedule])  # leave accumulate_grad_batches unset
        trainer.fit(model)
        schedule.accumulation, schedule.lr_factor, schedule.noise_scale
        ```
    """

    geo_dashboard_section: ClassVar[DashboardSection] = DashboardSection.for_part(
        "batch",
        {
            "gradient noise scale (samples)": (r"^geo/batch/noise_scale$",),
            "micro-batches per step and LR factor": (r"^geo/batch/accumulation$", r"^geo/batch/lr_factor$"),
            "samples per optimizer step": (r"^geo/batch/samples_per_step$",),
            "samples seen": (r"^geo/batch/samples$",),
        },
    )
    """This part's section of the GEO dashboard (TensorBoard's Custom Scalars tab)."""

    def __init__(
        self,
        *,
        min_accumulation: int = 2,
        max_accumulation: int = 8,
        noise_fraction: float = 1.0,
        hysteresis: float = 0.25,
        ema: float = 0.9,
        estimate_every: int = 10,
        lr_scaling: str = "sqrt",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.min_accumulation = _int_at_least(owner, "min_accumulation", min_accumulation, 2)
        self.max_accumulation = _int_at_least(owner, "max_accumulation", max_accumulation, min_accumulation)
        ratio = max_accumulation // min_accumulation
        if max_accumulation % min_accumulation or ratio & (ratio - 1):
            raise ValueError(
                f"{owner}: `max_accumulation` must be `min_accumulation` ({min_accumulation}) times a power of 2 "
                f"(the accumulation doubles), got {max_accumulation}"
            )
        self.noise_fraction = _finite_number(owner, "noise_fraction", noise_fraction, low=0.0, allowed="> 0")
        if self.noise_fraction == 0.0:
            raise ValueError(f"{owner}: `noise_fraction` must be > 0, got {noise_fraction!r}")
        self.hysteresis = _finite_number(owner, "hysteresis", hysteresis, low=0.0, allowed=">= 0")
        self.ema = _finite_number(owner, "ema", ema, low=0.0, high=1.0, allowed="in [0, 1)")
        self.estimate_every = _int_at_least(owner, "estimate_every", estimate_every, 1)
        if lr_scaling not in LR_SCALINGS:
            raise ValueError(f"{owner}: `lr_scaling` must be one of {list(LR_SCALINGS)}, got {lr_scaling!r}")
        self.lr_scaling = lr_scaling

        self.estimator = GradientNoiseScale(ema=self.ema)
        self.accumulation = self.min_accumulation  # micro-batches per optimizer step and rank, now
        self.pending_accumulation = self.min_accumulation  # decided, waiting for an aligned step boundary
        self.samples = 0  # samples seen, all ranks
        self.micro_batch_size: int | None = None  # samples in this rank's last micro-batch (None: not readable)
        self._set_on_trainer: int | None = None  # the accumulate_grad_batches this callback last set
        self._measures = True
        self._warned: set[str] = set()
        self._micro_batches = 0  # backward passes in this optimizer step's window
        self._window_samples = 0
        self._stepped = False
        self._small_sq: torch.Tensor | None = None  # |g_small|² of this window's first micro-batch, on the device
        self._decided_at = math.nan  # the noise scale at the last decision to grow (for the message)
        self._hooks: list[Any] = []
        self._post_hooked: set[int] = set()
        self._pending_lr: list[tuple[dict[str, Any], Any, Any]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            min_accumulation=self.min_accumulation,
            max_accumulation=self.max_accumulation,
            noise_fraction=self.noise_fraction,
            lr_scaling=self.lr_scaling,
        )

    @property
    def lr_factor(self) -> float:
        """The multiplier on every param group's LR at the current accumulation."""
        return float((self.accumulation / self.min_accumulation) ** LR_SCALINGS[self.lr_scaling])

    @property
    def noise_scale(self) -> float:
        """The measured noise scale in micro-batches (NaN until there is an estimate)."""
        return self.estimator.noise_scale

    # ----------------------------------------------------------------- set-up
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse settings that would fight the schedule; set the starting accumulation on the Trainer."""
        if stage != "fit":
            return
        owner = type(self).__name__
        if trainer.accumulate_grad_batches not in (1, self._set_on_trainer):
            raise ValueError(
                f"{owner} sets `accumulate_grad_batches` itself, but the Trainer has accumulate_grad_batches="
                f"{trainer.accumulate_grad_batches}: leave it at 1 and give {owner}(min_accumulation=...) instead"
            )
        if any(isinstance(c, GradientAccumulationScheduler) for c in trainer.callbacks):  # type: ignore[attr-defined]
            raise ValueError(
                f"{owner} and Lightning's GradientAccumulationScheduler both set `accumulate_grad_batches`; use one"
            )
        if sum(isinstance(c, BatchSizeSchedule) for c in trainer.callbacks) > 1:  # type: ignore[attr-defined]
            raise ValueError(f"{owner}: the Trainer holds more than one {owner}; they would fight, keep one")
        if not pl_module.automatic_optimization:
            raise ValueError(f"{owner} needs automatic optimization (Lightning accumulates the gradients)")
        if trainer.strategy.handles_gradient_accumulation:
            raise ValueError(
                f"{owner}: the strategy {type(trainer.strategy).__name__} accumulates gradients itself; "
                "use a strategy whose accumulation Lightning drives (single device, DDP)"
            )
        self._apply_accumulation(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Decide whether the estimate can be measured; add the LR pre-hooks."""
        self._measures = True
        if trainer.world_size > 1 and not isinstance(trainer.strategy, DDPStrategy):
            self._cannot_measure(
                f"under {type(trainer.strategy).__name__} the gradient after the first micro-batch is not this "
                "rank's whole local gradient"
            )
        plugin = trainer.precision_plugin
        # Lightning's own plugins scale only through a GradScaler, whose scale is divided out; a plugin of another
        # package is read only if it says it does not scale now (a ``scaling`` attribute that is False)
        known = type(plugin).__module__.startswith("lightning.") or getattr(plugin, "scaling", None) is False
        if not known and not isinstance(getattr(plugin, "scaler", None), torch.amp.GradScaler):
            self._cannot_measure(
                f"the precision plugin {type(plugin).__name__} may scale the loss before backward, and the first "
                "micro-batch's gradient is read before it unscales"
            )
        self._remove_hooks()
        for optimizer in trainer.optimizers:
            self._hooks.append(optimizer.register_step_pre_hook(self._scale_lr))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Set the (possibly restored) accumulation on the Trainer before the first batch."""
        self._apply_accumulation(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the optimizer hooks."""
        self._remove_hooks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the optimizer hooks if fit ended abnormally."""
        self._remove_hooks()

    def _cannot_measure(self, reason: str) -> None:
        self._measures = False
        if reason not in self._warned:
            self._warned.add(reason)
            rank_zero_warn(
                f"{type(self).__name__}: the gradient noise scale cannot be measured here: {reason}. The "
                f"accumulation stays at {self.accumulation}."
            )

    def _apply_accumulation(self, trainer: pl.Trainer) -> None:
        trainer.accumulate_grad_batches = self.accumulation
        self._set_on_trainer = self.accumulation

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks, self._post_hooked = [], set()

    # ----------------------------------------------------------------- the step
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Count this micro-batch's samples (read off the batch's shapes, on the host)."""
        try:
            self.micro_batch_size = extract_batch_size(batch)
        except (MisconfigurationException, RecursionError):
            self.micro_batch_size = None
        self._window_samples += self.micro_batch_size or 0

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the first micro-batch of a measured step: ``|g_small|²``, kept on the device."""
        first = self._micro_batches == 0
        self._micro_batches += 1
        if not (first and self._measures and trainer.global_step % self.estimate_every == 0):
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:  # measured as NaN (and then ignored), so that every rank still joins the all-reduce
            self._small_sq = torch.tensor(math.nan, device=trainer.strategy.root_device)
            return
        # Lightning divided the loss by the accumulation: the first micro-batch's mean gradient is k times this
        norm = torch.nn.utils.get_total_norm(grads).float() * trainer.accumulate_grad_batches
        scale = _loss_scale(trainer)
        self._small_sq = (norm / scale if scale is not None else norm).square()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        """On a measured step: ``|g_big|²``, one all-reduce and one host read, the estimate and the decision."""
        self._stepped = True
        small_sq, self._small_sq = self._small_sq, None
        # a window cut short by the epoch's end holds fewer than k micro-batches (its first one may even have been
        # all-reduced, being the last): not measured. The test is the same on every rank (same batch count).
        if small_sq is None or self._micro_batches != trainer.accumulate_grad_batches:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        big_sq = torch.nn.utils.get_total_norm(grads).float().square().to(small_sq.device)
        norms = torch.stack([small_sq, big_sq])
        if trainer.world_size > 1:  # every rank's first micro-batch is its own sample of B_small
            norms = reduce_tensor(trainer, norms, "mean")
        small, big = norms.tolist()  # the one host sync
        b_big = trainer.accumulate_grad_batches * trainer.world_size
        self.estimator.update(small, big, b_small=1.0, b_big=float(b_big))
        if self.estimator.num_updates < math.ceil(1.0 / (1.0 - self.ema)):
            return
        target = target_accumulation(
            self.estimator.noise_scale,
            current=self.accumulation,
            world_size=trainer.world_size,
            max_accumulation=self.max_accumulation,
            noise_fraction=self.noise_fraction,
            hysteresis=self.hysteresis,
        )
        if target > self.pending_accumulation:
            self.pending_accumulation = target
            self._decided_at = self._noise_scale_in_samples()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """After an optimizer step: count samples, switch to a decided accumulation where aligned, log."""
        if not self._stepped:
            return
        samples_per_step = self._window_samples * trainer.world_size
        self.samples += samples_per_step
        self._stepped, self._micro_batches, self._window_samples = False, 0, 0
        self._undo_lr()
        # Lightning zeroes gradients and steps at multiples of accumulate_grad_batches within the epoch
        if self.pending_accumulation > self.accumulation and (batch_idx + 1) % self.pending_accumulation == 0:
            old, self.accumulation = self.accumulation, self.pending_accumulation
            self._apply_accumulation(trainer)
            rank_zero_info(
                f"{type(self).__name__}: noise scale {self._decided_at:.4g} "
                f"{'samples' if self.micro_batch_size else 'micro-batches'}; accumulation {old} -> "
                f"{self.accumulation} micro-batches per step, LR factor {self.lr_factor:.4g}"
            )
        values: dict[str, float] = {
            "accumulation": self.accumulation,
            "lr_factor": self.lr_factor,
            "samples_per_step": samples_per_step,
            "samples": self.samples,
        }
        noise_scale = self._noise_scale_in_samples()
        if math.isfinite(noise_scale):
            values["noise_scale"] = noise_scale
        log_geo_scalars(trainer, "batch", values)

    def _noise_scale_in_samples(self) -> float:
        return self.estimator.noise_scale * (self.micro_batch_size or 1)

    # ----------------------------------------------------------------- the learning rate
    def _scale_lr(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        """Optimizer step pre-hook: multiply every group's LR by the factor (undone by the post-hook)."""
        if id(optimizer) not in self._post_hooked:
            # registered now, not at fit start, so that it runs after the post-hooks of multipliers applied
            # inside this one (SparsityAwareLR's), which must be undone first
            self._post_hooked.add(id(optimizer))
            self._hooks.append(optimizer.register_step_post_hook(self._restore_lr))
        factor = self.lr_factor
        if factor == 1.0:
            return
        for group in optimizer.param_groups:
            base = group["lr"]
            group["lr"] = base * factor
            self._pending_lr.append((group, base, group["lr"]))

    def _restore_lr(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self._undo_lr()

    def _undo_lr(self) -> None:
        for group, base, applied in reversed(self._pending_lr):
            if group["lr"] is applied or group["lr"] == applied:
                group["lr"] = base
            elif "lr" not in self._warned:
                self._warned.add("lr")
                rank_zero_warn(
                    f"{type(self).__name__}: something changed a param group's `lr` during the optimizer step; "
                    "leaving the new value as is (the LR factor was not removed from it)."
                )
        self._pending_lr = []

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The moving averages, the accumulation (current and decided), the LR factor and the samples seen."""
        return {
            "estimator": self.estimator.state_dict(),
            "accumulation": self.accumulation,
            "pending_accumulation": self.pending_accumulation,
            "lr_factor": self.lr_factor,
            "samples": self.samples,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; the Trainer gets the accumulation when training starts."""
        self.estimator.load_state_dict(state_dict["estimator"])
        self.accumulation = int(state_dict["accumulation"])
        self.pending_accumulation = int(state_dict["pending_accumulation"])
        self.samples = int(state_dict["samples"])


def _loss_scale(trainer: pl.Trainer) -> torch.Tensor | None:
    """The AMP ``GradScaler``'s current scale as a device tensor (no host read), or ``None`` without one."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if not isinstance(scaler, torch.amp.GradScaler) or not scaler.is_enabled():
        return None
    return getattr(scaler, "_scale", None)


__all__ = ["LR_SCALINGS", "BatchSizeSchedule", "target_accumulation"]
