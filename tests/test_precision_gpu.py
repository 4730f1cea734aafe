"""PredictiveScalingPrecision on real CUDA fp16 (skipped without a GPU; CI has none)."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.precision import PredictiveScalingPrecision, UnderflowProbe, summarize_underflow

pytestmark = pytest.mark.gpu

VOCAB = "".join(chr(32 + i) for i in range(64))


class SummedLossLM(CharLanguageModel):
    """The demo GPT with the cross-entropy summed over tokens: gradients ~B*T times larger."""

    def _loss(self, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x).float().flatten(0, 1), y.flatten(), reduction="sum")


class ScaleTrace(pl.Callback):
    """Counts GradScaler's skipped steps (its scale drops at update) and samples underflow every 10 steps."""

    def __init__(self) -> None:
        self.skips = 0
        self.underflow: list[float] = []
        self._scale = None
        self._probe = None

    def on_fit_start(self, trainer, pl_module):
        self._probe = UnderflowProbe(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._scale = scaler.get_scale() if scaler is not None else None
        self._probe.armed = batch_idx % 10 == 5

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.get_scale() < self._scale:
            self.skips += 1
        if self._probe.armed:
            self.underflow.append(summarize_underflow(self._probe.take())[1])
        self._probe.armed = False


def _fit(plugin, model_class=SummedLossLM, steps=60):
    pl.seed_everything(0, verbose=False)
    data = torch.randint(0, len(VOCAB), (512, 65))
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=32)
    model = model_class(VOCAB, seq_len=64, n_layer=2, n_head=4, n_embd=128, warmup_steps=5, max_steps=steps)
    trace = ScaleTrace()
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        plugins=[plugin],
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[trace],
    )
    trainer.fit(model, loader)
    return trace, trainer


def test_cuda_fp16_summed_loss_no_skips_where_gradscaler_skips():
    gradscaler, _ = _fit(MixedPrecision("16-mixed", "cuda"))
    plugin = PredictiveScalingPrecision("16-mixed")
    ours, trainer = _fit(plugin)
    assert plugin.device == "cuda"
    assert gradscaler.skips >= 3  # 2**16 -> down to a scale that fits gradients ~2000x the mean loss's
    assert plugin.skipped_steps == 0
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    print(f"\nGradScaler skips {gradscaler.skips}, ours {plugin.skipped_steps}; scales {plugin.block_scales}")
    print(f"worst-layer underflow: GradScaler {max(gradscaler.underflow):.4f}, ours {max(ours.underflow):.4f}")


def test_cuda_forward_overflow_is_promoted():
    class HotLM(CharLanguageModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with torch.no_grad():
                self.model.blocks[0].mlp[0].weight.mul_(1e6)  # its fp16 output overflows

    plugin = PredictiveScalingPrecision("16-mixed")
    with pytest.warns(UserWarning, match="model.blocks.0.mlp.0"):
        _, trainer = _fit(plugin, HotLM, steps=10)
    assert "model.blocks.0.mlp.0" in plugin.promoted_modules
    assert plugin.skipped_steps <= 3 and plugin.scale >= 1.0
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
