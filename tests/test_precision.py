"""PredictiveScalingPrecision: the scale rule, exact per-block unscaling, fp32 promotion, honest skips, resume, DDP."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_geo.precision import (
    FP16_MAX,
    AmaxPredictor,
    BlockScaling,
    LossScaleCollapseError,
    PredictiveScalingPrecision,
    find_block_stacks,
    is_promoted,
    power_of_two_scale,
)
from lightning_geo.utils.geo_logging import GEO_PARTS
from tests.helpers import DDP_CPU, TinyModel, tiny_trainer

# ---------------------------------------------------------------------------------------------- scale rule


def test_scale_is_the_largest_power_of_two_that_keeps_the_prediction_under_fp16_max():
    # 0.5 * 2**16 * 2 = 65536 > 65504, so 2**15 is the largest that fits with headroom 2.
    assert power_of_two_scale(0.5, 2.0, 1e-3, 2.0**24) == 2.0**15
    assert power_of_two_scale(0.49, 2.0, 1e-3, 2.0**24) == 2.0**16
    assert power_of_two_scale(1000.0, 1.0, 1e-3, 2.0**24) == 2.0**6  # 1000 * 64 = 64000 fits
    assert power_of_two_scale(1e-12, 2.0, 1e-3, 2.0**24) == 2.0**24  # clamped
    assert power_of_two_scale(0.0, 2.0, 1e-3, 2.0**24) == 2.0**24  # nothing measured
    assert power_of_two_scale(1e6, 2.0, 1e-3, 2.0**24) == 2.0**-5  # below 1 for huge gradients
    for amax in (1e-4, 0.3, 7.0, 5000.0):
        scale = power_of_two_scale(amax, 2.0, 2.0**-20, 2.0**30)
        assert amax * scale * 2.0 <= FP16_MAX < amax * scale * 4.0
        assert math.log2(scale).is_integer()
    with pytest.raises(ValueError, match="amax=inf must be finite"):
        power_of_two_scale(math.inf, 2.0, 1.0, 2.0)


def test_predictor_takes_the_window_maximum_and_ignores_zeros_and_non_finite():
    predictor = AmaxPredictor(window=3)
    assert predictor.predict() is None
    for value in (1.0, 5.0, 0.0, math.inf, math.nan, 2.0, 3.0):
        predictor.observe(value)
    assert predictor.predict() == 5.0  # window holds 5, 2, 3
    predictor.observe(1.0)
    assert predictor.predict() == 3.0  # the spike of 5 has left the window
    restored = AmaxPredictor(window=3)
    restored.load_state_dict(predictor.state_dict())
    assert list(restored.history) == list(predictor.history)
    with pytest.raises(ValueError, match="window=0 must be a positive integer"):
        AmaxPredictor(window=0)


# ---------------------------------------------------------------------------------------------- per-block exactness


class ResidualNet(nn.Module):
    """stem -> chain of blocks -> head, with the residual inside or outside the blocks, an optional long skip
    (stem output added before the head) and an optional tied stem/head weight."""

    class Block(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.fc = nn.Linear(width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc(torch.tanh(self.norm(x)))

    def __init__(
        self, *, residual_inside: bool = True, long_skip: bool = False, tied: bool = False, shared_leaf: bool = False
    ) -> None:
        super().__init__()
        # A tensor that requires grad but is no parameter, used in every block (not unscaled, so not relevant).
        self.shared_leaf = torch.ones(12, requires_grad=True) if shared_leaf else None
        width = 12
        self.residual_inside = residual_inside
        self.long_skip = long_skip
        self.stem = nn.Linear(width, width)
        self.blocks = nn.ModuleList(self.Block(width) for _ in range(3))
        self.head = nn.Linear(width, width)
        if tied:
            self.head.weight = self.stem.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = h = self.stem(x)
        for block in self.blocks:
            h = block(h) if self.residual_inside else h + block(h)
            if self.shared_leaf is not None:
                h = h * self.shared_leaf
        return self.head(h + h0 if self.long_skip else h)


def _scaled_grads_match_fp32(net: ResidualNet, scales: list[float]) -> BlockScaling:
    torch.manual_seed(0)
    x, y = torch.randn(16, 12), torch.randn(16, 12)
    named = list(net.named_parameters())
    reference = torch.autograd.grad(nn.functional.mse_loss(net(x), y), [p for _, p in named])
    blocks = BlockScaling(net, find_block_stacks(net))
    loss = nn.functional.mse_loss(net(x), y)
    blocks.analyse(loss)
    blocks.set_region_scales(scales[: blocks.num_regions])
    (loss * scales[0]).backward()
    for (name, param), expected in zip(named, reference, strict=True):
        region = blocks.region_by_name[name]
        assert torch.equal(param.grad / scales[region], expected), f"gradient of {name} in region {region}"
    return blocks


SCALES = [2.0**5, 2.0**-3, 2.0**9, 2.0**1, 2.0**14]


def test_per_block_unscaling_is_exact_on_a_residual_chain():
    blocks = _scaled_grads_match_fp32(ResidualNet(), SCALES)
    # Every block output is a cut, and so is the stem output: 4 cuts, 5 regions of distinct scales.
    assert blocks.valid_points == ["blocks.0:input", "blocks.0", "blocks.1", "blocks.2"]
    assert blocks.region_names() == ["head", "blocks.2", "blocks.1", "blocks.0", "stem"]
    net_regions = blocks.region_by_name
    assert net_regions["head.weight"] == 0 and net_regions["blocks.2.fc.weight"] == 1
    assert net_regions["blocks.0.fc.weight"] == 3 and net_regions["stem.weight"] == 4


def test_points_that_a_backward_path_bypasses_are_not_used_and_stay_exact():
    # Residual outside the blocks: the stream bypasses every block output; only the stem output is a cut.
    outside = _scaled_grads_match_fp32(ResidualNet(residual_inside=False), SCALES)
    assert outside.valid_points == ["blocks.0:input"]
    # A long skip from the stem to the head bypasses every block output too.
    skip = _scaled_grads_match_fp32(ResidualNet(long_skip=True), SCALES)
    assert skip.valid_points == ["blocks.0:input"]
    # A weight tied between stem and head (GPT-2's wte/lm_head) is reached from the loss around every point.
    # The first block's input returns the blocks' gradient to the head's scale, so every block output stays a
    # cut and the stem joins the head's region (exact: the tied weight's two contributions share one scale).
    tied = _scaled_grads_match_fp32(ResidualNet(tied=True), SCALES)
    assert tied.valid_points == ["blocks.0", "blocks.1", "blocks.2"] and tied.return_point == "blocks.0:input"
    assert tied.region_by_name["stem.weight"] == tied.region_by_name["head.weight"] == 0
    assert tied.region_by_name["stem.bias"] == 0 and tied.region_by_name["blocks.0.fc.weight"] == 3
    # ... unless a block also reaches the tied weight another way (a long skip): then one global scale, and why.
    tied_skip = _scaled_grads_match_fp32(ResidualNet(tied=True, long_skip=True), SCALES)
    assert tied_skip.valid_points == [] and set(tied_skip.region_by_name.values()) == {0}
    assert "stem.weight" in tied_skip.fallback_reason
    # A non-parameter leaf shared by all blocks (its gradient is not unscaled) leaves every cut valid.
    shared = _scaled_grads_match_fp32(ResidualNet(shared_leaf=True), SCALES)
    assert shared.valid_points == ["blocks.0:input", "blocks.0", "blocks.1", "blocks.2"]


def test_block_stacks_are_the_outermost_repeated_module_lists():
    assert find_block_stacks(ResidualNet()) == ["blocks.0", "blocks.1", "blocks.2"]
    assert find_block_stacks(TinyModel(num_blocks=3)) == ["blocks.0", "blocks.1", "blocks.2"]
    assert find_block_stacks(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))) == []  # mixed kinds


# ---------------------------------------------------------------------------------------------- training


class PrecisionModel(TinyModel):
    """TinyModel with knobs for the precision tests.

    Args:
        reduction: ``"mean"`` or ``"sum"`` of the squared error (a sum makes gradients ~100x larger).
        hot_gain: If set, a ``hot`` Linear + LayerNorm after the stem whose Linear weights are multiplied
            by this, so its fp16 output overflows while the LayerNorm brings float32 values back to normal.
        nonfinite_steps: Batch indices at which the training loss is made inf (a forward problem).
        scheduler: Add a step-interval LambdaLR that halves the LR every step.
    """

    def __init__(self, reduction="mean", hot_gain=None, nonfinite_steps=(), scheduler=False, **kwargs):
        super().__init__(**kwargs)
        self.reduction = reduction
        self.nonfinite_steps = set(nonfinite_steps)
        self.use_scheduler = scheduler
        self.hot = None
        if hot_gain is not None:
            width = self.hparams.width
            self.hot = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))
            with torch.no_grad():
                self.hot[0].weight.mul_(hot_gain)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(self.hparams.num_samples, 8, generator=generator)
        y = x.sum(dim=1, keepdim=True).sin()
        return DataLoader(TensorDataset(x, y), batch_size=8)  # the same batches in every epoch and after resume

    def forward(self, x):
        h = self.inp(x)
        if self.hot is not None:
            h = self.hot(h)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x).float(), y, reduction=self.reduction)
        if self.global_step in self.nonfinite_steps:
            loss = loss * math.inf
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        if not self.use_scheduler:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _fit(tmp_path, plugin, model=None, **overrides):
    pl.seed_everything(0, verbose=False)
    model = model if model is not None else PrecisionModel()
    overrides.setdefault("plugins", [plugin])
    trainer = tiny_trainer(tmp_path, **overrides)
    trainer.fit(model)
    return trainer, model


def test_first_step_predicts_the_scale_with_no_skip(tmp_path):
    plugin = PredictiveScalingPrecision("16-mixed", device="cpu", per_block=False)
    _fit(tmp_path, plugin, PrecisionModel(reduction="sum", lr=0.005), max_steps=6)
    assert plugin.skipped_steps == 0 and plugin.steps == 6
    # After each step the scale is the rule applied to the predicted (window-max) amax.
    expected = power_of_two_scale(plugin._predictors[0].predict(), 2.0, plugin.min_scale, plugin.max_scale)
    assert plugin.scale == expected and plugin.scale != plugin.init_scale
    assert plugin.last_actual_amax * plugin.scale * 2.0 <= FP16_MAX


@pytest.mark.parametrize("accumulate", [1, 3])
def test_fp16_training_with_per_block_scales_follows_fp32(tmp_path, accumulate):
    """Every gradient is unscaled by its own region's scale: a wrong factor anywhere would show as a gap."""
    _, reference = _fit(tmp_path / "fp32", None, max_steps=6, accumulate_grad_batches=accumulate, plugins=None)
    plugin = PredictiveScalingPrecision("16-mixed", device="cpu", block_headroom=1.0)
    _, model = _fit(tmp_path / "geo", plugin, max_steps=6, accumulate_grad_batches=accumulate)
    assert plugin.steps == 6 and plugin.skipped_steps == 0
    assert len(set(plugin.block_scales.values())) > 1  # regions really run at different scales
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=1e-2)


class ResidualBlocksModel(PrecisionModel):
    """PrecisionModel with the residual inside each block (so every block output is a cut), its block stack
    optionally ``torch.compile``d (its parameters' names then gain ``_orig_mod``)."""

    def __init__(self, compile_blocks: bool = False, **kwargs):
        super().__init__(**kwargs)
        blocks = nn.ModuleList(ResidualNet.Block(self.hparams.width) for _ in range(self.hparams.num_blocks))
        self.blocks = torch.compile(blocks, backend="eager") if compile_blocks else blocks

    def forward(self, x):
        h = self.inp(x)
        for block in getattr(self.blocks, "_orig_mod", self.blocks):
            h = block(h)
        return self.out(h)


def test_a_compiled_module_keeps_its_regions(tmp_path):
    """Regions are keyed by parameter name without the wrappers' parts, so a compiled block stack is scaled and
    unscaled like the plain one: the same regions, scales and weights."""
    runs = {}
    for compiled in (False, True):
        plugin = PredictiveScalingPrecision("16-mixed", device="cpu", block_headroom=1.0)
        pl.seed_everything(0, verbose=False)
        _, trained = _fit(tmp_path / str(compiled), plugin, ResidualBlocksModel(compile_blocks=compiled), max_steps=4)
        runs[compiled] = (plugin, [p.detach().clone() for p in trained.parameters()])
    plain, compiled = runs[False][0], runs[True][0]
    assert compiled._block_scaling.block_names == ["blocks._orig_mod.0", "blocks._orig_mod.1"]
    assert compiled._block_scaling.region_by_name == plain._block_scaling.region_by_name
    assert plain._block_scaling.region_by_name["blocks.0.fc.weight"] == 2
    assert list(compiled.block_scales.values()) == list(plain.block_scales.values())
    for a, b in zip(runs[True][1], runs[False][1], strict=True):
        torch.testing.assert_close(a, b)


def test_gradscaler_skips_a_summed_loss_where_the_predicted_scale_does_not(tmp_path):
    """The behaviour users switch for: GradScaler starts at 2**16 and overflows its way down."""
    baseline = MixedPrecision("16-mixed", "cpu")
    _fit(tmp_path / "amp", baseline, _large_gradient_model(), max_steps=6)
    assert baseline.scaler.get_scale() < 2.0**16  # it halved at least once: a skipped step
    plugin = PredictiveScalingPrecision("16-mixed", device="cpu")
    _fit(tmp_path / "geo", plugin, _large_gradient_model(), max_steps=6)
    assert plugin.skipped_steps == 0


def _large_gradient_model(**kwargs):
    model = PrecisionModel(reduction="sum", lr=1e-6, **kwargs)
    with torch.no_grad():
        model.out.weight.mul_(20.0)  # large gradients everywhere, as a token-summed LM loss gives
    return model


def test_backward_overflows_are_replanned_from_the_evidence_faster_than_halving(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    _fit(tmp_path / "amp", MixedPrecision("16-mixed", "cpu", scaler=scaler), _large_gradient_model(), max_steps=16)
    halvings = round(math.log2(2.0**24 / scaler.get_scale()))  # GradScaler skipped one step per halving
    plugin = PredictiveScalingPrecision("16-mixed", device="cpu", per_block=False, init_scale=2.0**24)
    trainer, _ = _fit(tmp_path / "geo", plugin, _large_gradient_model(scheduler=True), max_steps=16)
    # The first skip proves amax >= 65504 / 2**24 and cuts 4x; each further skip in a row assumes 16x more.
    assert plugin.skipped_steps == 3 < halvings
    assert plugin.consecutive_skips == 0 and plugin._extra_headroom[0] == 2.0  # one extra bit, once
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 16 - 3  # the schedule advanced on optimizer steps only


def test_each_region_is_replanned_from_its_own_overflow_streak():
    plugin = PredictiveScalingPrecision("16-mixed", block_headroom=2.0)
    plugin._region_names = ["head", "blocks.1", "blocks.0"]
    plugin._scales = [128.0, 4096.0, 512.0]
    plugin._extra_headroom = [1.0, 1.0, 1.0]
    plugin._overflow_streak = [0, 0, 0]
    plugin._predictors = [AmaxPredictor(16) for _ in range(3)]
    for predictor, amax in zip(plugin._predictors, (200.0, 5.0, 37.0), strict=True):
        predictor.observe(amax)
    plugin._replan_after_overflow([170.0, math.inf, math.inf])  # blocks.1 overflowed (and blocks.0 below it)
    assert plugin.block_scales == {"head": 128.0, "blocks.1": 1024.0, "blocks.0": 512.0}
    # The next step overflows first in blocks.0: its first overflow, so amax >= 65504 / 512 and one extra bit:
    # a 4x cut, not the 64x of the 16x-per-skip search that a second overflow of one region in a row gets.
    plugin._replan_after_overflow([145.0, 26.0, math.inf])
    assert plugin.block_scales == {"head": 128.0, "blocks.1": 1024.0, "blocks.0": 128.0}
    assert plugin._extra_headroom == [1.0, 2.0, 2.0]


def test_a_skipped_first_step_holds_the_scheduler_without_the_ordering_warning(tmp_path):
    plugin = PredictiveScalingPrecision("16-mixed", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = _fit(tmp_path, plugin, PrecisionModel(nonfinite_steps={0}, scheduler=True), max_steps=4)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert plugin.skipped_steps == 1
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert type(scheduler).__name__ == "LambdaLR"  # the stand-in was put back
    assert scheduler.last_epoch == 3
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)
    # A non-finite loss is a forward problem: the loss scale is not cut for it.
    assert plugin._extra_headroom == [1.0] * len(plugin._scales)


def test_a_forward_overflow_promotes_the_module_to_fp32_and_the_scale_does_not_collapse(tmp_path):
    plugin = PredictiveScalingPrecision("16-mixed", device="cpu")
    model = PrecisionModel(hot_gain=3e5)
    with pytest.warns(UserWarning, match=r"the float16 forward of 'hot.0' \(Linear\) overflowed"):
        trainer, model = _fit(tmp_path, plugin, model, max_steps=8)
    assert plugin.promoted_modules == ["hot.0"] and is_promoted(model.hot[0])
    assert plugin.skipped_steps == 1  # the first step, where it was found
    assert plugin.scale >= 1.0 and all(s >= 1.0 for s in plugin.block_scales.values())
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())


class PredictingModel(PrecisionModel):
    def predict_step(self, batch, batch_idx):
        return self(batch[0]).float()

    def predict_dataloader(self):
        return self.train_dataloader()


def test_predict_in_fp16_falls_back_to_fp32_for_a_module_that_overflows(tmp_path):
    """A model trained in fp32 served in fp16: the first batch finds the overflowing module (its outputs are
    lost, and the warning says so), every later batch runs it in float32 and is finite; then the probe rests."""
    plugin = PredictiveScalingPrecision("16-mixed", device="cpu")
    model = PredictingModel(hot_gain=3e5)
    trainer = tiny_trainer(tmp_path, plugins=[plugin])
    with pytest.warns(UserWarning, match=r"in a predict step.*Re-run the batch"):
        outputs = trainer.predict(model)
    assert plugin.promoted_modules == ["hot.0"] and is_promoted(model.hot[0])
    assert not torch.isfinite(outputs[0]).all()
    assert all(torch.isfinite(o).all() for o in outputs[1:])
    assert not plugin._overflow_probe.armed and not plugin._underflow_probe.armed  # no per-batch probe cost


def test_lightning_16_mixed_collapses_on_the_same_forward_overflow(tmp_path):
    baseline = MixedPrecision("16-mixed", "cpu")
    _fit(tmp_path, baseline, PrecisionModel(hot_gain=3e5), max_steps=8)
    assert baseline.scaler.get_scale() == 2.0**16 * 0.5**8  # halved on every step, nothing trained


def test_pinned_fp32_modules_run_in_fp32_from_the_start(tmp_path):
    plugin = PredictiveScalingPrecision("16-mixed", device="cpu", fp32_modules=["hot.*", nn.LayerNorm])
    _, model = _fit(tmp_path, plugin, PrecisionModel(hot_gain=3e5), max_steps=3)
    assert is_promoted(model.hot[0]) and is_promoted(model.blocks[0][0])
    assert plugin.skipped_steps == 0
    with pytest.raises(ValueError, match=r"fp32_modules entry 'nope' matches no submodule"):
        _fit(tmp_path / "bad", PredictiveScalingPrecision("16-mixed", device="cpu", fp32_modules=["nope"]))


def test_consecutive_skips_raise_a_clear_error(tmp_path):
    plugin = PredictiveScalingPrecision("16-mixed", device="cpu", max_consecutive_skips=3)
    with pytest.raises(LossScaleCollapseError, match=r"3 optimizer steps in a row were skipped.*loss itself"):
        _fit(tmp_path, plugin, PrecisionModel(nonfinite_steps=range(10)), max_steps=6)


def test_bf16_passes_through_unscaled_and_matches_lightning_bf16(tmp_path):
    plugin = PredictiveScalingPrecision("bf16-mixed", device="cpu")
    _, ours = _fit(tmp_path / "geo", plugin, max_steps=4)
    _, theirs = _fit(tmp_path / "pl", MixedPrecision("bf16-mixed", "cpu"), max_steps=4)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    assert plugin.skipped_steps == 0 and plugin.last_actual_amax > 0 and not plugin.scaling


def test_decisions_are_logged_under_geo_precision(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plugin = PredictiveScalingPrecision("16-mixed", device="cpu", probe_every_n_steps=2)
    trainer, _ = _fit(tmp_path, plugin, PrecisionModel(hot_gain=3e5), max_steps=4)
    trainer.logger.experiment.flush()
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("scale", "skipped_steps", "predicted_amax", "actual_amax", "underflow_fraction", "block_scale/head"):
        assert f"geo/precision/{name}" in tags
    assert "precision" in GEO_PARTS
    assert any("promoted_modules" in tag for tag in events.Tags()["tensors"])


@pytest.mark.parametrize(("at_step", "num_samples"), [(4, 32), (3, 24)],
                         ids=["at-a-measuring-step", "between-measuring-steps"])
def test_resume_continues_exactly(tmp_path, at_step, num_samples):
    """Also from a step where the activation amaxes are not measured (amax_every_n_steps=4): the resumed run
    must measure on the same steps as the uninterrupted one. (Checkpoints at epoch ends, batches of 8: a plain
    DataLoader restarts an interrupted epoch.)"""

    def run(max_steps, ckpt_path=None, every=None):
        plugin = PredictiveScalingPrecision("16-mixed", device="cpu")
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every, save_top_k=-1)
        callbacks = [checkpoint] if every else []
        model = PrecisionModel(reduction="sum", hot_gain=3e5, num_samples=num_samples, lr=0.005)
        pl.seed_everything(0, verbose=False)
        trainer = tiny_trainer(
            tmp_path, plugins=[plugin], max_steps=max_steps, callbacks=callbacks, enable_checkpointing=bool(every)
        )
        trainer.fit(model, ckpt_path=ckpt_path)
        return plugin, model

    full_plugin, full_model = run(8, every=at_step)
    ckpt = next((tmp_path / "ckpt").glob(f"*step={at_step}.ckpt"))
    resumed_plugin, resumed_model = run(8, ckpt_path=ckpt)
    assert resumed_plugin.state_dict() == full_plugin.state_dict()
    assert resumed_plugin.promoted_modules == ["hot.0"] and is_promoted(resumed_model.hot[0])
    for a, b in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


class PlanDump(pl.Callback):
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        plugin = trainer.precision_plugin
        record = {"state": plugin.state_dict(), "promoted": plugin.promoted_modules}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class RankSkewedModel(PrecisionModel):
    """Only rank 1 sees a forward overflow (its inputs are huge on step 0): every rank must still skip."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_rank == 1 and self.global_step == 0:
            x = x * 1e6
        return super().training_step((x, y), batch_idx)


@pytest.mark.ddp
def test_two_ranks_take_the_same_decisions(tmp_path):
    plugin = PredictiveScalingPrecision("16-mixed", device="cpu", probe_every_n_steps=1)
    pl.seed_everything(0, verbose=False)
    model = RankSkewedModel(reduction="sum", lr=0.005)
    trainer = tiny_trainer(tmp_path, plugins=[plugin], callbacks=[PlanDump(tmp_path)], max_steps=4, **DDP_CPU)
    trainer.fit(model)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    assert rank0["state"]["skipped_steps"] >= 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "16-true"}, "precision='16-true' is not supported"),
        ({"window": 0}, "window=0 must be an integer >= 1"),
        ({"headroom": 0.5}, "headroom=0.5 must be >= 1"),
        ({"headroom": math.nan}, "headroom=nan must be a positive finite number"),
        ({"block_headroom": 0.5}, "block_headroom=0.5 must be >= 1"),
        ({"init_scale": -1.0}, "init_scale=-1.0 must be a positive finite number"),
        ({"min_scale": 4.0, "init_scale": 1.0}, "need min_scale <= init_scale <= max_scale"),
        ({"probe_every_n_steps": -1}, "probe_every_n_steps=-1 must be an integer >= 0"),
        ({"max_consecutive_skips": 0}, "max_consecutive_skips=0 must be an integer >= 1"),
        ({"backoff_factor": 1.5}, r"backoff_factor=1.5 must be in \(0, 1\)"),
        ({"blocks": "all"}, "blocks='all' must be 'auto' or a list"),
        ({"blocks": []}, r"blocks=\[\] must be 'auto' or a non-empty list"),
        ({"per_block": "yes"}, "per_block='yes' must be True or False"),
        ({"fp32_modules": [3]}, "fp32_modules entry 3 must be a module name"),
        ({"device": "tpu"}, "device='tpu' is not an autocast device type; expected one of 'cuda', 'cpu'"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PredictiveScalingPrecision(**kwargs)


def test_gradscaler_arguments_are_accepted():
    with pytest.warns(UserWarning, match="growth_factor and growth_interval are ignored"):
        plugin = PredictiveScalingPrecision(init_scale=2.0**10, growth_factor=2.0, growth_interval=2000)
    assert plugin.scale == 2.0**10
    assert not PredictiveScalingPrecision(enabled=False).scaling


def test_a_promoted_module_casts_inputs_in_any_collection_to_fp32():
    from collections import namedtuple

    from lightning_geo.precision import promote_to_fp32

    Pair = namedtuple("Pair", ["a", "b"])

    class Adds(nn.Module):
        def forward(self, pair, extra):
            return pair.a + pair.b + extra["x"][0]

    module = Adds()
    promote_to_fp32(module, "cpu")
    half = torch.ones(2, dtype=torch.float16)
    with torch.autocast("cpu", dtype=torch.float16):
        out = module(Pair(half, half), extra={"x": [half]})
    assert out.dtype == torch.float32 and torch.equal(out, torch.full((2,), 3.0))
