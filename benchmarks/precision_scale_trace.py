"""Trace PredictiveScalingPrecision's per-region loss scales and the sampled underflow over one run.

    python benchmarks/precision_scale_trace.py [--device cuda|cpu] [--steps 300] [--per-block | --global]

The demo's char GPT (4 blocks x 128, context 128, batch 32, LR 3e-3, 60 warmup steps: the CUDA config of
``benchmarks/precision.py`` task a) on the standard library's sources, seed 0. Every 25th step an
``UnderflowProbe`` (the benchmark's measure) records the share of exact zeros in each Linear's fp16 output
gradient; the line shows the log2 scale of every region, the mean and worst layer's share, and the skips.
A diagnostic, one seed: the claims are judged by ``benchmarks/precision.py``.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import lightning.pytorch as pl
import torch

from lightning_geo.demo.corpus import load_corpus
from lightning_geo.demo.data import CharDataModule
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.precision import PredictiveScalingPrecision, UnderflowProbe, summarize_underflow


class Trace(pl.Callback):
    """Prints the plugin's scales and the probe's underflow every 25th step."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.probe = UnderflowProbe(pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, i: int) -> None:
        self.probe.armed = i % 25 == 24

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, i: int) -> None:
        if self.probe.armed:
            plugin = trainer.precision_plugin
            mean, worst, name = summarize_underflow(self.probe.take())
            scales = {k: int(math.log2(v)) for k, v in plugin.block_scales.items()}
            print(f"step {i}: log2 scales {scales}; underflow mean {mean:.4%} worst {worst:.4%} ({name}); "
                  f"skipped {plugin.skipped_steps}", flush=True)
        self.probe.armed = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--global", dest="per_block", action="store_false", help="per_block=False")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    pl.seed_everything(0, verbose=False)
    corpus = load_corpus(None)
    model = CharLanguageModel(
        corpus.vocab, seq_len=128, n_layer=4, n_head=4, n_embd=128, warmup_steps=60, max_steps=600
    )
    plugin = PredictiveScalingPrecision("16-mixed", device=args.device, per_block=args.per_block)
    trainer = pl.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        plugins=[plugin],
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Trace()],
    )
    started = time.perf_counter()
    trainer.fit(model, CharDataModule(corpus, seq_len=128, batch_size=32))
    valid = plugin._block_scaling.valid_points if plugin._block_scaling is not None else []
    print(f"fit {time.perf_counter() - started:.1f} s; block cuts found: {valid}; {torch.__version__}")


if __name__ == "__main__":
    main()
