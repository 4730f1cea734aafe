"""Which GEO part costs step time? The demo model trained with each part alone and all together, against plain.

``python benchmarks/geo_parts_overhead.py [--steps 120] [--reps 3] [--device cuda] [--precision 16-mixed]``:
each arm trains the demo GPT (4 x 128, context 128, batch 32) in mixed precision (16-mixed on a GPU, bf16-mixed
on a CPU, where fp16 is emulated; as ``lightning-geo demo --geo``) for ``--steps`` steps in this process, arms
interleaved over ``--reps`` repetitions; the table gives each arm's median training throughput (steps after the
first 20) relative to the plain arm of the same repetition. Every arm logs to TensorBoard at Lightning's default
cadence (every 50 steps); the last arm logs every step, as the demo does.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.precision import MixedPrecision

import lightning_geo  # noqa: F401  (registers "geo_hybrid")
from lightning_geo.callbacks import DynamicCurriculum, SparsityAwareLR
from lightning_geo.demo.config import MIXED_PRECISIONS, default_mixed_precision
from lightning_geo.demo.corpus import load_corpus
from lightning_geo.demo.data import CharDataModule
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.precision import PredictiveScalingPrecision
from lightning_geo.utils.table import format_table

ARMS = ("plain", "geo_hybrid", "precision", "curriculum", "SparsityAwareLR", "GeoAdamW", "all", "all, log every step")
WARMUP = 20


class StepClock(Callback):
    """Seconds of each training batch after the first ``WARMUP`` (synchronised on CUDA), and its tokens."""

    def __init__(self) -> None:
        self.seconds, self.tokens, self._start = 0.0, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if trainer.global_step > WARMUP:
            self.seconds += time.perf_counter() - self._start
            self.tokens += batch[0].numel()


def run_arm(arm: str, corpus, steps: int, device: str, precision_name: str, logs: str) -> float:
    pl.seed_everything(0, verbose=False)
    data = CharDataModule(corpus, seq_len=128, batch_size=32, val_samples=32)
    optimizer = "geo_adamw" if arm == "GeoAdamW" or arm.startswith("all") else "adamw"
    model = CharLanguageModel(corpus.vocab, seq_len=128, n_layer=4, n_head=4, n_embd=128, max_steps=steps,
                              warmup_steps=10, optimizer=optimizer)
    precision = (PredictiveScalingPrecision(precision_name) if arm == "precision" or arm.startswith("all")
                 else MixedPrecision(precision_name, device))
    callbacks: list[Callback] = [clock := StepClock()]
    if arm in ("curriculum",) or arm.startswith("all"):
        callbacks.append(DynamicCurriculum(mode="seq_len", deadline=0.3))
    if arm in ("SparsityAwareLR",) or arm.startswith("all"):
        callbacks.append(SparsityAwareLR())
    every_step = arm == "all, log every step"
    trainer = pl.Trainer(accelerator=device, devices=1, strategy="geo_hybrid" if arm.startswith("geo_hybrid") or
                         arm.startswith("all") else "auto", plugins=[precision], max_steps=steps, limit_val_batches=0,
                         logger=TensorBoardLogger(logs, name=arm.replace(" ", "_").replace(",", "")),
                         log_every_n_steps=1 if every_step else 50, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         gradient_clip_val=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
    return clock.tokens / clock.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=MIXED_PRECISIONS, default=None,
                        help="default: 16-mixed on cuda, bf16-mixed on cpu")
    args = parser.parse_args()
    args.precision = args.precision or default_mixed_precision(args.device)
    corpus = load_corpus()
    logs = tempfile.mkdtemp(prefix="geo_overhead_")
    ratios: dict[str, list[float]] = {arm: [] for arm in ARMS}
    speed: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _ in range(args.reps):
        base = None
        for arm in ARMS:
            tps = run_arm(arm, corpus, args.steps, args.device, args.precision, logs)
            base = tps if arm == "plain" else base
            speed[arm].append(tps)
            ratios[arm].append(tps / base)
    rows = [[arm, f"{statistics.median(speed[arm]):,.0f}", f"x{statistics.median(ratios[arm]):.3f}",
             f"{min(ratios[arm]):.3f}..{max(ratios[arm]):.3f}"] for arm in ARMS]
    print(f"{args.device} ({torch.cuda.get_device_name(0) if args.device == 'cuda' else 'CPU'}), torch "
          f"{torch.__version__}, {args.steps} steps x {args.reps} reps, {args.precision}, demo GPT 4x128, batch 32x128")
    print(format_table(["arm", "tokens/s (median)", "x plain (median)", "range"], rows))


if __name__ == "__main__":
    main()
