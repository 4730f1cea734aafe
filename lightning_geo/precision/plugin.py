"""``PredictiveScalingPrecision``: fp16 mixed precision whose loss scale is predicted, not probed by overflow."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from lightning.fabric.utilities.types import Optimizable
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_info, rank_zero_warn
from torch import nn
from torch.optim import LBFGS, Optimizer
from typing_extensions import override

from lightning_geo.precision.activation_amax import ActivationGradAmax
from lightning_geo.precision.block_scaling import (
    BlockScaling,
    canonical_name,
    find_block_stacks,
    named_parameter_tensors,
)
from lightning_geo.precision.fp32_modules import ForwardOverflowProbe, promote_to_fp32
from lightning_geo.precision.scale_rule import FP16_MAX, AmaxPredictor, power_of_two_scale
from lightning_geo.precision.scheduler_hold import hold_step_schedulers, release_schedulers
from lightning_geo.precision.underflow import UnderflowProbe, summarize_underflow
from lightning_geo.utils import DashboardSection, local_part, log_geo_scalars, log_geo_text, reduce_tensor
from lightning_geo.utils.checks import check_bool

if TYPE_CHECKING:
    import lightning.pytorch as pl

_STATE_VERSION = 1
AUTOCAST_DEVICES: tuple[str, ...] = ("cuda", "cpu", "mps", "xpu", "hpu", "xla", "mtia")
"""Device types ``PredictiveScalingPrecision(device=...)`` accepts: those ``torch.autocast`` runs on."""


class LossScaleCollapseError(RuntimeError):
    """Raised when the loss scale would fall below ``min_scale`` or too many steps in a row are skipped."""


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} must be a positive finite number")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


class PredictiveScalingPrecision(MixedPrecision):
    """Mixed precision (fp16 or bf16 autocast) with a predicted loss scale, per-block scales and fp32 fallback.

    Use it in place of ``precision="16-mixed"``: ``Trainer(plugins=[PredictiveScalingPrecision("16-mixed")])``.

    What it does on each optimizer step (fp16):

    1. **Predicted scale.** The gradients are unscaled and their largest absolute value (amax) is
       measured; the next step's amax is predicted as the maximum of the last ``window`` ones, and the
       scale becomes the largest power of two with ``predicted_amax * scale * headroom <= 65504``. No
       overflow is provoked to find it, from the first step on (which runs at ``init_scale``).
    2. **Per-block scales** (``per_block=True``). Where the model is a chain of blocks (an
       ``nn.ModuleList``/``nn.Sequential`` of same-class modules, as in every transformer), the gradient
       entering each block is rescaled so each block's gradients use the fp16 range, and each
       parameter's gradient is unscaled by its own region's scale. Only points every backward path
       passes through are used (found from the autograd graph of the first step); elsewhere the global
       scale applies.
    3. **Safety net.** If a gradient is still inf/NaN, the step is skipped: no ``optimizer.step``, no
       ``on_before_optimizer_step``/clipping, and the step-interval LR schedulers do not advance (so
       no "lr_scheduler.step() before optimizer.step()" warning). The overflowing region's scale is
       re-planned from the evidence (its amax was at least ``65504 / scale``) and it keeps one more bit
       of headroom from then on, so it does not overflow again at the same place.
    4. **fp32 fallback.** On probe steps (the first, every ``probe_every_n_steps``, and after a skip)
       module outputs are checked; a module whose fp16 output overflows from finite inputs runs in
       float32 from the next step on, with one warning naming it. A forward overflow never lowers the
       scale. ``fp32_modules`` pins modules to float32 up front.

    With ``"bf16-mixed"`` nothing is scaled or skipped (bf16 has fp32's range); amax, the forward
    overflow probe and the underflow sample are still measured and logged.

    Logged under ``geo/precision/``: ``scale`` (global: the ``head`` region's), ``block_scale/<region>``
    (every region, ``head`` included), ``predicted_amax`` and ``actual_amax`` (the ``head`` region's
    unscaled amax, predicted before the step and measured in it: the pair ``scale`` is planned from),
    ``skipped_steps`` (total), ``underflow_fraction``
    and ``underflow_fraction_worst`` (on probe steps: share of zero elements in fp16 activation
    gradients, mean over layers and worst layer) and the text ``promoted_modules``.

    Args:
        precision: ``"16-mixed"`` (default) or ``"bf16-mixed"``.
        device: Autocast device type: ``"cuda"``, ``"cpu"``, ``"mps"``, ``"xpu"``, ``"hpu"``, ``"xla"`` or
            ``"mtia"``. Default ``None``: the Trainer's device.
        per_block: Scale each block of the model's block chain separately. Default ``True``.
        blocks: ``"auto"`` (default: the blocks of the outermost repeated ``ModuleList``/``Sequential``)
            or the qualified module names of the blocks, in forward order.
        window: Steps of amax history the prediction takes the maximum over. Default 16.
        headroom: Factor (>= 1) kept between the scaled predicted amax and 65504 in the global (head)
            region. Default 2.
        block_headroom: The same for the block regions. Default 8: inside a block, fp16 results that no
            cheap measurement bounds (the weight-gradient GEMMs, the residual stream between attention
            and MLP) jump by more than 4x from one step to the next now and then; the head region's scale
            leaves them far more room.
        init_scale: Scale of the first step, before any amax is known. Default 1: a first step at a low
            scale loses a little precision; one at a high scale may overflow and be skipped.
        min_scale: A scale below this is a collapse:
            [`LossScaleCollapseError`][lightning_geo.precision.LossScaleCollapseError]. Default 2**-10.
        max_scale: Upper bound of every scale. Default 2**24.
        probe_every_n_steps: Interval (optimizer steps) of the forward-overflow probe and the underflow
            sample; each probe costs a few reductions per module. ``0`` probes only on the first step
            and after a skip. Default 100.
        amax_every_n_steps: Interval (optimizer steps) at which the activation gradients inside each region
            (the outputs of its linear-like layers) and at the block boundaries are measured as well, and after
            every skip or probe step. The parameters' gradients are measured every step. The prediction takes
            the maximum over ``window`` steps, so with the default 4 every window holds 4 such measurements;
            each costs one reduction per layer (on a GPU, a kernel launch each). ``1``: every step. Default 4.
        fp32_modules: Modules that always run in float32: qualified names, ``fnmatch`` patterns
            (``"*.mlp.*"``) or module classes. Default none.
        max_consecutive_skips: Raise [`LossScaleCollapseError`][lightning_geo.precision.LossScaleCollapseError] after
            this many skipped steps in a row (``None``: never). Default 50.
        init_scale, growth_factor, backoff_factor, growth_interval, enabled: ``torch.amp.GradScaler``'s
            arguments, accepted so existing configurations keep working (Lightning #17272):
            ``init_scale`` as above; ``backoff_factor`` (default 0.5) is the least a skip cuts the
            overflowing region's scale by; ``enabled=False`` turns scaling off (plain autocast);
            ``growth_factor`` and ``growth_interval`` have no role (the scale is predicted, never grown
            by probing) and give a warning if set.
    """

    geo_dashboard_section: ClassVar[DashboardSection] = DashboardSection.for_part(
        "precision",
        {
            "loss scale: global and per block": (r"^geo/precision/scale$", r"^geo/precision/block_scale/.+$"),
            "gradient amax: predicted vs actual (unscaled)": (r"^geo/precision/(predicted|actual)_amax$",),
            "skipped steps (total)": (r"^geo/precision/skipped_steps$",),
            "fp16 underflow: share of zeros, mean and worst layer": (
                r"^geo/precision/underflow_fraction(_worst)?$",
            ),
        },
    )
    """This part's section of the GEO dashboard (see ``lightning_geo.utils.dashboard``)."""

    def __init__(
        self,
        precision: Literal["16-mixed", "bf16-mixed"] = "16-mixed",
        device: str | None = None,
        *,
        per_block: bool = True,
        blocks: str | Sequence[str] = "auto",
        window: int = 16,
        headroom: float = 2.0,
        block_headroom: float = 8.0,
        init_scale: float = 1.0,
        min_scale: float = 2.0**-10,
        max_scale: float = 2.0**24,
        probe_every_n_steps: int = 100,
        amax_every_n_steps: int = 4,
        fp32_modules: Iterable[type[nn.Module] | str] = (),  # class first: in YAML "torch.nn.LayerNorm" is the class
        max_consecutive_skips: int | None = 50,
        growth_factor: float | None = None,
        backoff_factor: float = 0.5,
        growth_interval: int | None = None,
        enabled: bool = True,
    ) -> None:
        if precision not in ("16-mixed", "bf16-mixed"):
            raise ValueError(f"precision={precision!r} is not supported; expected '16-mixed' or 'bf16-mixed'")
        if device is not None and (not isinstance(device, str) or device not in AUTOCAST_DEVICES):
            raise ValueError(f"device={device!r} is not an autocast device type; expected one of "
                             f"{', '.join(map(repr, AUTOCAST_DEVICES))}, or None for the Trainer's device")
        if not isinstance(per_block, bool):
            raise ValueError(f"per_block={per_block!r} must be True or False")
        if isinstance(blocks, str):
            if blocks != "auto":
                raise ValueError(f"blocks={blocks!r} must be 'auto' or a list of module names")
        elif not blocks or not all(isinstance(b, str) for b in blocks):
            raise ValueError(f"blocks={blocks!r} must be 'auto' or a non-empty list of module names")
        _check_int("window", window, 1)
        for name, value in (("headroom", headroom), ("block_headroom", block_headroom)):
            _check_positive(name, value)
            if value < 1:
                raise ValueError(f"{name}={value!r} must be >= 1 (it is a safety factor below the fp16 maximum)")
        for name, value in (("init_scale", init_scale), ("min_scale", min_scale), ("max_scale", max_scale)):
            _check_positive(name, value)
        if not min_scale <= init_scale <= max_scale:
            raise ValueError(
                f"need min_scale <= init_scale <= max_scale, got {min_scale!r}, {init_scale!r}, {max_scale!r}"
            )
        _check_int("probe_every_n_steps", probe_every_n_steps, 0)
        _check_int("amax_every_n_steps", amax_every_n_steps, 1)
        if max_consecutive_skips is not None:
            _check_int("max_consecutive_skips", max_consecutive_skips, 1)
        _check_positive("backoff_factor", backoff_factor)
        if backoff_factor >= 1:
            raise ValueError(f"backoff_factor={backoff_factor!r} must be in (0, 1)")
        if growth_factor is not None or growth_interval is not None:
            rank_zero_warn(
                "PredictiveScalingPrecision: growth_factor and growth_interval are ignored; the scale is "
                "predicted from measured gradients each step rather than grown by probing for overflows."
            )
        if isinstance(fp32_modules, (str, type)):
            one = fp32_modules.__name__ if isinstance(fp32_modules, type) else repr(fp32_modules)
            raise TypeError(
                f"fp32_modules={fp32_modules!r} must be a list (of module names, patterns or nn.Module classes); "
                f"for one, pass fp32_modules=[{one}]"
            )
        check_bool("PredictiveScalingPrecision", "enabled", enabled)
        check_bool("PredictiveScalingPrecision", "per_block", per_block)
        fp32_modules = list(fp32_modules)
        for entry in fp32_modules:
            if not (isinstance(entry, str) or (isinstance(entry, type) and issubclass(entry, nn.Module))):
                raise ValueError(f"fp32_modules entry {entry!r} must be a module name, a pattern or an nn.Module class")

        # MixedPrecision.__init__ would build a GradScaler; this plugin is its own scaler.
        self.precision = precision
        self.device = device  # type: ignore[assignment]
        self.scaler = None
        self.per_block = per_block
        self.blocks = blocks
        self.window = window
        self.headroom = float(headroom)
        self.block_headroom = float(block_headroom)
        self.init_scale = float(init_scale)
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.probe_every_n_steps = probe_every_n_steps
        self.amax_every_n_steps = amax_every_n_steps
        self.fp32_modules = fp32_modules
        self.max_consecutive_skips = max_consecutive_skips
        self.backoff_factor = float(backoff_factor)
        self.enabled = bool(enabled)

        self.steps = 0  # optimizer steps seen, skipped ones included
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.promoted_modules: list[str] = []
        self.last_underflow: dict[str, float] = {}
        self.last_predicted_amax: float | None = None
        self.last_actual_amax: float | None = None
        self._scales = [self.init_scale]
        self._extra_headroom = [1.0]
        self._overflow_streak = [0]  # per region: skips in a row that started there
        self._predictors = [AmaxPredictor(window)]
        self._region_names = ["global"]
        self._probe_next = True
        self._loss_values: list[torch.Tensor] = []  # this step's losses, one per micro-batch
        self._module: nn.Module | None = None
        self._block_scaling: BlockScaling | None = None
        self._overflow_probe: ForwardOverflowProbe | None = None
        self._underflow_probe: UnderflowProbe | None = None
        self._activation_amax: ActivationGradAmax | None = None
        self._pending_state: dict[str, Any] | None = None
        self._param_regions: dict[int, tuple[torch.Tensor, int]] = {}  # id(optimizer's tensor) -> (it, region)
        self._unmapped_warned = False
        self._cpu_fp16_warned = False
        self._inference_steps = 0  # predict/validate/test batches since the last training step

    # ------------------------------------------------------------------ public read-outs

    @property
    def scaling(self) -> bool:
        """Whether gradients are scaled (fp16 and ``enabled``)."""
        return self.precision == "16-mixed" and self.enabled

    @property
    def scale(self) -> float:
        """The global loss scale (the one applied to the loss; region ``head``'s)."""
        return self._scales[0]

    @property
    def block_scales(self) -> dict[str, float]:
        """The scale of every region by name: ``"head"`` (global) and one per block region."""
        return dict(zip(self._region_names, self._scales, strict=True))

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def convert_module(self, module: nn.Module) -> nn.Module:
        if self._module is module:
            return module
        self._detach()
        self._module = module
        if self.device is None:
            trainer = getattr(module, "_trainer", None)
            self.device = (
                trainer.strategy.root_device.type
                if trainer is not None
                else ("cuda" if torch.cuda.is_available() else "cpu")
            )
        if self.precision == "16-mixed" and self.device == "cpu" and not self._cpu_fp16_warned:
            self._cpu_fp16_warned = True
            rank_zero_warn(
                "PredictiveScalingPrecision('16-mixed') on a CPU: most CPUs emulate float16, many times slower than "
                "bf16; use PredictiveScalingPrecision('bf16-mixed') or Trainer(precision='bf16-mixed') there"
            )
        for name in self._resolve_fp32_modules(module):
            self._promote(name, warn=False)
        if self.blocks != "auto":  # checked whatever the precision, so that a typo does not wait for 16-mixed
            names_in_model = dict(module.named_modules())
            missing = [b for b in self.blocks if b not in names_in_model]
            if missing:
                raise ValueError(f"blocks={list(self.blocks)!r}: {missing} are not submodules of "
                                 f"{type(module).__name__}; pass their qualified names, or blocks='auto'")
        if self.scaling and self.per_block:
            names = find_block_stacks(module) if self.blocks == "auto" else list(self.blocks)
            if names:
                self._block_scaling = BlockScaling(module, names)
        self._overflow_probe = ForwardOverflowProbe(module)
        dtype = torch.float16 if self.precision == "16-mixed" else torch.bfloat16
        self._underflow_probe = UnderflowProbe(module, dtype=dtype)
        self._activation_amax = ActivationGradAmax(module, self._region_of_name)
        self._arm_probes(self._probe_next)
        self._arm_measurements()
        if self._pending_state is not None:
            for name in self._pending_state.get("promoted_modules", []):
                self._promote(name, warn=False)
        return module

    def _detach(self) -> None:
        for probe in (self._block_scaling, self._overflow_probe, self._underflow_probe, self._activation_amax):
            if probe is not None:
                probe.remove()
        self._block_scaling = self._overflow_probe = self._underflow_probe = self._activation_amax = None

    def _resolve_fp32_modules(self, module: nn.Module) -> list[str]:
        named = [(name, sub) for name, sub in module.named_modules() if name]
        chosen: list[str] = []
        for entry in self.fp32_modules:
            if isinstance(entry, str):
                matches = [name for name, _ in named if name == entry or fnmatch.fnmatchcase(name, entry)]
            else:
                matches = [name for name, sub in named if isinstance(sub, entry)]
            if not matches:
                raise ValueError(
                    f"fp32_modules entry {entry!r} matches no submodule of {type(module).__name__}; "
                    f"module names look like {[name for name, _ in named[:5]]}"
                )
            chosen.extend(m for m in matches if m not in chosen)
        return chosen

    def _promote(self, name: str, *, warn: bool) -> None:
        assert self._module is not None
        modules = dict(self._module.named_modules())
        if name not in modules:
            rank_zero_warn(f"PredictiveScalingPrecision: promoted module {name!r} no longer exists; ignored")
            return
        promote_to_fp32(modules[name], str(self.device))
        if name not in self.promoted_modules:
            self.promoted_modules.append(name)
        if warn:
            rank_zero_warn(
                f"PredictiveScalingPrecision: the float16 forward of {name!r} ({type(modules[name]).__name__}) "
                f"overflowed (inf/NaN or a value beyond +-65504 from finite inputs) at step {self.steps}. It runs in "
                f"float32 (autocast off) from the next step on; no loss scale can fix a forward overflow. "
                f"To start it in float32, pass fp32_modules=[{name!r}]."
            )

    def _arm_probes(self, armed: bool) -> None:
        for probe in (self._overflow_probe, self._underflow_probe):
            if probe is not None:
                probe.armed = armed

    @override
    def pre_backward(self, tensor: torch.Tensor, module: pl.LightningModule) -> torch.Tensor:  # type: ignore[override]
        # Read with the step's one host read; a view, no kernel. (Lightning's closure loss is a scalar.)
        self._loss_values.append(tensor.detach().reshape(-1))
        if self.scaling:
            blocks = self._block_scaling
            if blocks is not None and not blocks.analysed and module.training:
                blocks.analyse(tensor)
                self._on_regions_known(blocks)
            tensor = tensor * self._scales[0]
        return Precision.pre_backward(self, tensor, module)

    def _on_regions_known(self, blocks: BlockScaling) -> None:
        names = blocks.region_names()
        pending = (self._pending_state or {}).get("regions")
        if pending is not None and pending["names"] == names:
            self._load_regions(pending)
        else:
            if pending is not None:
                rank_zero_warn(
                    "PredictiveScalingPrecision: the checkpoint's block regions "
                    f"{pending['names']} differ from this model's {names}; per-block scales start afresh."
                )
            global_predictor = self._predictors[0]
            self._predictors = [global_predictor] + [AmaxPredictor(self.window) for _ in names[1:]]
            self._scales = [self._scales[0]] * len(names)
            self._extra_headroom = [self._extra_headroom[0]] * len(names)
            self._overflow_streak = [self._overflow_streak[0]] * len(names)
        self._region_names = names
        blocks.set_region_scales(self._scales)
        self._report_regions(blocks)

    def _report_regions(self, blocks: BlockScaling) -> None:
        layers = len(self._activation_amax.layer_names) if self._activation_amax is not None else 0
        if blocks.valid_points:
            counts = [sum(r == k for r in blocks.region_by_name.values()) for k in range(blocks.num_regions)]
            tied = " (the stem's tied weights return to the head's scale at the first block's input)"
            rank_zero_info(
                f"PredictiveScalingPrecision: per-block loss scales on {blocks.num_regions} regions "
                f"{dict(zip(blocks.region_names(), counts, strict=True))} (parameter names per region)"
                f"{tied if blocks.return_point else ''}; amax and underflow watched on {layers} linear-like layers."
            )
        else:
            rank_zero_warn(
                f"PredictiveScalingPrecision: per_block=True, but no block boundary of {blocks.block_names[:2]}... "
                f"is a valid cut: {blocks.fallback_reason}. Every parameter uses the one global loss scale."
            )

    @override
    def optimizer_step(  # type: ignore[override]
        self,
        optimizer: Optimizable,
        model: pl.LightningModule,
        closure: Callable[[], Any],
        **kwargs: Any,
    ) -> Any:
        trainer = model.trainer
        release_schedulers(trainer)
        if isinstance(optimizer, LBFGS):
            raise ValueError("PredictiveScalingPrecision does not support LBFGS (its closure re-runs backward).")
        closure_result = closure()
        if closure_result is None and model.automatic_optimization:
            # training_step returned None: Lightning skipped backward, there is nothing to step.
            self._loss_values.clear()
            return closure_result
        skip = self._measure_and_plan(trainer, optimizer)
        if skip:
            hold_step_schedulers(trainer)
            return closure_result
        self._after_closure(model, optimizer)
        return optimizer.step(**kwargs)

    @override
    def clip_gradients(
        self,
        optimizer: Optimizer,
        clip_val: int | float = 0.0,
        gradient_clip_algorithm: GradClipAlgorithmType = GradClipAlgorithmType.NORM,
    ) -> None:
        # Gradients are already unscaled here, also for fused optimizers (which GradScaler cannot clip).
        Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ inference: predict, validate, test

    @override
    @contextmanager
    def train_step_context(self) -> Generator[None, None, None]:
        if self._inference_steps:  # back from a validation loop: the probes as the training plan left them
            self._inference_steps = 0
            self._arm_probes(self._probe_next)
        with self.forward_context():
            yield

    @override
    def predict_step_context(self) -> AbstractContextManager[None]:  # type: ignore[override]  # see below
        return self._inference_step_context("predict")

    @override
    def val_step_context(self) -> AbstractContextManager[None]:  # type: ignore[override]  # see below
        return self._inference_step_context("validation")

    @override
    def test_step_context(self) -> AbstractContextManager[None]:  # type: ignore[override]  # see below
        return self._inference_step_context("test")

    # Lightning types the three hooks above as its @contextmanager's private return type; what they return is one.
    @contextmanager
    def _inference_step_context(self, loop: str) -> Generator[None, None, None]:
        with self.forward_context():
            yield
        self._after_inference_step(loop)

    def _after_inference_step(self, loop: str) -> None:
        """The fp32 fallback without an optimizer step: promote the modules whose fp16 forward overflowed."""
        if self._underflow_probe is not None:
            self._underflow_probe.armed = False  # it measures gradients: nothing to see without a backward
        probe = self._overflow_probe
        if probe is None or not probe.armed:
            return
        flags = probe.take_flags()
        culprits: list[str] = []
        if flags is not None:
            trainer = getattr(self._module, "_trainer", None)
            if trainer is not None and trainer.world_size > 1:
                flags = reduce_tensor(trainer, flags, op="max")  # every rank promotes the same modules
            culprits = probe.culprits(flags)
        for name in culprits:
            self._promote(name, warn=True)
        if culprits:
            rank_zero_warn(
                f"PredictiveScalingPrecision: that overflow happened in a {loop} step, whose outputs for that batch "
                "are already non-finite; the following batches run the module in float32. Re-run the batch, or "
                f"pass fp32_modules={self.promoted_modules!r} to start in float32."
            )
        self._inference_steps += 1
        every = max(self.probe_every_n_steps, 1)
        # Keep probing while something overflows; otherwise once every probe_every_n_steps batches.
        probe.armed = bool(culprits) or self._inference_steps % every == 0

    # ------------------------------------------------------------------ the step decision

    def _region_of_name(self, name: str) -> int:
        blocks = self._block_scaling
        if blocks is None or not blocks.analysed:
            return 0
        return blocks.region_by_name.get(canonical_name(name), 0)

    def _region_of(self, param: torch.Tensor) -> int:
        """The region of a tensor the optimizer steps, found by its name in the model (whatever wraps it)."""
        blocks = self._block_scaling
        if blocks is None or not blocks.analysed or blocks.num_regions == 1:
            return 0
        entry = self._param_regions.get(id(param))
        if entry is None or entry[0] is not param:
            assert self._module is not None
            # A wrapper may have registered other tensors since the last look (FSDP2 registers its sharded ones).
            self._param_regions = {
                key: (tensor, blocks.region_by_name.get(names[0], 0))
                for key, (tensor, names) in named_parameter_tensors(self._module).items()
            }
            entry = self._param_regions.get(id(param))
            if entry is None:
                if not self._unmapped_warned:
                    self._unmapped_warned = True
                    rank_zero_warn(
                        "PredictiveScalingPrecision: the optimizer steps a tensor that is not a parameter of the "
                        f"model (shape {tuple(param.shape)}); its gradient is unscaled with the global scale, which "
                        "is wrong if it sits inside a block. Give the optimizer the model's own parameters."
                    )
                return 0
        return entry[1]

    def _measure_and_plan(self, trainer: pl.Trainer, optimizer: Optimizable) -> bool:
        """Unscale, measure, agree across ranks, decide skip, re-plan the scales. Returns whether to skip.

        On the device: one multi-tensor unscale and one multi-tensor amax over every gradient, a stack of the
        layer and boundary amaxes on measuring steps, one concatenation; then the step's one host read.
        """
        dense: list[tuple[int, torch.Tensor]] = []
        sparse: list[tuple[int, torch.Tensor]] = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    # a sharded (FSDP2) gradient: this rank's shard; the max over ranks below covers the rest
                    grad = local_part(param.grad)
                    (sparse if grad.is_sparse else dense).append((self._region_of(param), grad))
        device = next((g.device for _, g in dense + sparse), trainer.strategy.root_device)
        pieces: list[torch.Tensor] = []
        layout: list[tuple[str, list[int]]] = []  # what each piece holds: ("param"|"layer"|"cut"|..., regions)
        if dense:
            tensors = [g for _, g in dense]
            if self.scaling:
                torch._foreach_mul_(tensors, [1.0 / self._scales[r] for r, _ in dense])
            norms: tuple[torch.Tensor, ...] | list[torch.Tensor] = torch._foreach_norm(tensors, math.inf)
            if len({n.device for n in norms}) > 1:  # parameters spread over devices
                norms = [n.to(device) for n in norms]
            pieces.append(torch.stack(norms))
            layout.append(("param", [r for r, _ in dense]))
        for region, grad in sparse:
            if self.scaling:
                grad.mul_(1.0 / self._scales[region])
            listed = grad.coalesce().values()
            pieces.append((listed.abs().amax() if listed.numel() else torch.zeros((), device=grad.device)).reshape(1))
            layout.append(("param", [region]))
        if self._activation_amax is not None:
            layer_regions, layer_amax = self._activation_amax.take()
            if layer_amax is not None:
                pieces.append(layer_amax.to(device))
                layout.append(("layer", layer_regions))
        if self._block_scaling is not None and self._block_scaling.analysed:
            cuts = [(k, v) for k, v in enumerate(self._block_scaling.take_boundary_amax()) if v is not None]
            if cuts:
                pieces.append(torch.stack([v.to(device) for _, v in cuts]))
                layout.append(("cut", [k for k, _ in cuts]))
        if self._loss_values:
            pieces.append(torch.cat(self._loss_values) if len(self._loss_values) > 1 else self._loss_values[0])
            layout.append(("loss", [0] * len(self._loss_values)))
            self._loss_values = []
        probed = self._overflow_probe is not None and self._overflow_probe.armed
        flags = self._overflow_probe.take_flags() if self._overflow_probe is not None else None
        if flags is not None:
            pieces.append(flags.to(device))
            layout.append(("flags", [0] * flags.numel()))
        vector = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        vector = vector.nan_to_num(nan=math.inf, posinf=math.inf, neginf=math.inf)
        if trainer.world_size > 1:
            vector = reduce_tensor(trainer, vector, op="max")
        numbers = vector.tolist()  # the one host sync of the step

        regions = len(self._scales)
        region_amax = [0.0] * regions
        boundary_amax = [0.0] * (regions - 1)
        forward_bad, flag_values, offset = False, [], 0
        for kind, owners in layout:
            values = numbers[offset : offset + len(owners)]
            offset += len(owners)
            for owner, value in zip(owners, values, strict=True):
                if kind == "param":  # unscaled already
                    region_amax[owner] = max(region_amax[owner], value)
                elif kind == "layer":  # at its region's scale
                    unscaled = value / self._scales[owner] if self.scaling else value
                    region_amax[owner] = max(region_amax[owner], unscaled)
                elif kind == "cut":  # cut k (from the loss) sees region k's scale; it bounds regions k and k+1
                    boundary_amax[owner] = value / self._scales[owner] if self.scaling else value
                elif kind == "loss":
                    forward_bad = forward_bad or not math.isfinite(value)
                else:
                    flag_values.append(value)
        culprits = []
        if flags is not None and self._overflow_probe is not None:
            culprits = self._overflow_probe.culprits(torch.tensor(flag_values))
        underflow = self._underflow_probe.take() if self._underflow_probe is not None and probed else {}

        for name in culprits:
            self._promote(name, warn=True)
        self.steps += 1
        self.last_predicted_amax = self._predictors[0].predict()
        grads_bad = not all(math.isfinite(a) for a in region_amax)
        skip = self.scaling and (grads_bad or forward_bad)
        if skip:
            self.skipped_steps += 1
            self.consecutive_skips += 1
            if not forward_bad and not culprits:
                self._replan_after_overflow(region_amax)
            self._check_consecutive_skips(forward_bad, culprits)
        else:
            self.consecutive_skips = 0
            self._overflow_streak = [0] * regions
            for r in range(regions):
                bounds = [region_amax[r]]
                if r >= 1:
                    bounds.append(boundary_amax[r - 1])
                if r < len(boundary_amax):
                    bounds.append(boundary_amax[r])
                self._predictors[r].observe(max(bounds))
                if r == 0:
                    self.last_actual_amax = max(bounds)
            if self.scaling:
                self._plan()
        if underflow:
            self.last_underflow = underflow
        self._probe_next = skip or grads_bad or forward_bad or self._is_probe_step(self.steps)
        self._arm_probes(self._probe_next)
        self._arm_measurements()
        self._log(trainer, underflow, culprits)
        return skip

    def _arm_measurements(self) -> None:
        """Whether the next step measures the activation and boundary amaxes: a function of the saved state, so a
        resumed run measures on the same steps as an uninterrupted one."""
        measure = self._probe_next or self.steps % self.amax_every_n_steps == 0
        if self._activation_amax is not None:
            self._activation_amax.armed = measure
        if self._block_scaling is not None:
            self._block_scaling.measuring = measure

    def _is_probe_step(self, step: int) -> bool:
        return self.probe_every_n_steps > 0 and step % self.probe_every_n_steps == 0

    def _plan(self) -> None:
        for r, predictor in enumerate(self._predictors):
            predicted = predictor.predict()
            if predicted is None:
                continue
            scale = power_of_two_scale(
                predicted * self._extra_headroom[r], self._headroom(r), self.min_scale, self.max_scale
            )
            self._set_scale(r, scale)
        if self._block_scaling is not None and self._block_scaling.analysed:
            self._block_scaling.set_region_scales(self._scales)

    def _headroom(self, region: int) -> float:
        return self.headroom if region == 0 else self.block_headroom

    def _set_scale(self, region: int, scale: float) -> None:
        if scale < self.min_scale:
            raise LossScaleCollapseError(
                f"PredictiveScalingPrecision: the loss scale of region {self._region_names[region]!r} would fall to "
                f"{scale:g}, below min_scale={self.min_scale:g}: its unscaled gradients reach "
                f"{FP16_MAX / scale / self._headroom(region):.3g}. Likely causes: diverging weights (lower the "
                "learning rate or clip gradients), a loss summed over many elements (use a mean), or NaN/inf in "
                "the data."
            )
        self._scales[region] = scale

    def _replan_after_overflow(self, region_amax: list[float]) -> None:
        """Re-plan the region where the overflow started: the non-finite region nearest the loss."""
        region = next(r for r, a in enumerate(region_amax) if not math.isfinite(a))
        scale = self._scales[region]
        self._overflow_streak[region] += 1
        streak = self._overflow_streak[region]
        if streak == 1:
            # A new overflow here: this region's gradients outgrow its measured amax; keep one more bit from now on.
            self._extra_headroom[region] *= 2.0
        # Its amax was at least FP16_MAX / scale. Overflowing again right after a re-plan means it is far larger:
        # assume 16x more per further skip of this region in a row (a geometric search: 2**24 -> 2**6 in 3 skips).
        self._predictors[region].observe(FP16_MAX / scale * 16.0 ** (streak - 1))
        predicted = self._predictors[region].predict() or FP16_MAX / scale
        planned = power_of_two_scale(
            predicted * self._extra_headroom[region], self._headroom(region), self.min_scale, self.max_scale
        )
        self._set_scale(region, min(planned, scale * self.backoff_factor))
        if self._block_scaling is not None and self._block_scaling.analysed:
            self._block_scaling.set_region_scales(self._scales)

    def _check_consecutive_skips(self, forward_bad: bool, culprits: list[str]) -> None:
        if self.max_consecutive_skips is None or self.consecutive_skips < self.max_consecutive_skips:
            return
        cause = (
            "the loss itself is non-finite: a NaN/inf in the data, a log/division by zero in the loss, or diverged "
            "weights"
            if forward_bad and not culprits
            else "gradients overflow at every scale tried: diverging weights (lower the learning rate or clip "
            "gradients)"
        )
        raise LossScaleCollapseError(
            f"PredictiveScalingPrecision: {self.consecutive_skips} optimizer steps in a row were skipped for "
            f"non-finite values (max_consecutive_skips={self.max_consecutive_skips}). Likely cause: {cause}. "
            f"Scales now: {self.block_scales}; modules in float32: {self.promoted_modules or 'none'}."
        )

    # ------------------------------------------------------------------ logging and state

    def _log(self, trainer: pl.Trainer, underflow: dict[str, float], culprits: list[str]) -> None:
        metrics: dict[str, float] = {"skipped_steps": float(self.skipped_steps)}
        if self.scaling:
            metrics["scale"] = self._scales[0]
            if len(self._scales) > 1:
                metrics.update({f"block_scale/{n}": s for n, s in zip(self._region_names, self._scales, strict=True)})
        if self.last_predicted_amax is not None:
            metrics["predicted_amax"] = self.last_predicted_amax
        if self.last_actual_amax is not None:
            metrics["actual_amax"] = self.last_actual_amax
        if underflow:
            mean, worst, _ = summarize_underflow(underflow)
            metrics["underflow_fraction"] = mean
            metrics["underflow_fraction_worst"] = worst
        log_geo_scalars(trainer, "precision", metrics, throttle=not (underflow or culprits))
        if culprits:
            log_geo_text(trainer, "precision", "promoted_modules", ", ".join(self.promoted_modules), throttle=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "precision": self.precision,
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
            "promoted_modules": list(self.promoted_modules),
            "probe_next": self._probe_next,
            "last_actual_amax": self.last_actual_amax,
            "regions": {
                "names": list(self._region_names),
                "scales": list(self._scales),
                "extra_headroom": list(self._extra_headroom),
                "overflow_streak": list(self._overflow_streak),
                "predictors": [p.state_dict() for p in self._predictors],
            },
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != _STATE_VERSION:
            raise ValueError(
                f"PredictiveScalingPrecision cannot load state of version {state_dict.get('version')!r} "
                f"(expected {_STATE_VERSION}); was the checkpoint written by another precision plugin?"
            )
        self.steps = state_dict["steps"]
        self.skipped_steps = state_dict["skipped_steps"]
        self.consecutive_skips = state_dict["consecutive_skips"]
        self.last_actual_amax = state_dict["last_actual_amax"]
        self._probe_next = state_dict["probe_next"]
        self._arm_probes(self._probe_next)
        self._arm_measurements()
        self._pending_state = state_dict
        if state_dict["regions"]["names"] == self._region_names:
            self._load_regions(state_dict["regions"])  # otherwise when the first step has found the regions
        if self._module is not None:
            for name in state_dict["promoted_modules"]:
                self._promote(name, warn=False)

    def _load_regions(self, regions: dict[str, Any]) -> None:
        self._region_names = list(regions["names"])
        self._scales = [float(s) for s in regions["scales"]]
        self._extra_headroom = [float(h) for h in regions["extra_headroom"]]
        self._overflow_streak = [int(n) for n in regions["overflow_streak"]]
        self._predictors = []
        for predictor_state in regions["predictors"]:
            predictor = AmaxPredictor(self.window)
            predictor.load_state_dict(predictor_state)
            self._predictors.append(predictor)
        if self._block_scaling is not None and self._block_scaling.analysed:
            self._block_scaling.set_region_scales(self._scales)
