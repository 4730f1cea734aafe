"""One training run of the demo LM for the pipeline tests, started like ``torchrun`` (tests/launch.py) or plainly.

Writes ``<out>/result.json`` on rank 0: every step's loss averaged over the ranks (every stage of a data-parallel
replica reports that replica's loss, so this is the global batch's loss), the validation loss, the plan and what the
strategy applied. The global batch is 8 windows in dataset order (as tests/geo_hybrid_worker.py), so a 1-process run
and a pipelined one see the same samples at the same step and their losses must agree to rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, DistributedSampler

import lightning_geo  # noqa: F401  (registers "geo_hybrid")
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.strategies import GeoHybridStrategy
from lightning_geo.strategies.geo_hybrid import _leave_process_group as leave_process_group
from tests.geo_hybrid_worker import GLOBAL_BATCH, SEQ_LEN, VOCAB, Windows


class StepLosses(Callback):
    """Each step's loss (what the step returned) averaged over every rank, and the step's wall time."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seconds.append(time.perf_counter() - self._start)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(trainer.strategy.reduce(loss.detach().float(), reduce_op="mean")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--pipeline", type=int, default=0, help="pipeline stages; 0: Lightning's default strategy")
    parser.add_argument("--mesh", default=None, help="R,S,T of each stage")
    parser.add_argument("--schedule", default="1f1b")
    parser.add_argument("--microbatches", type=int, default=None)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--clip", type=float, default=None, help="gradient_clip_val (by norm)")
    parser.add_argument("--accumulate", type=int, default=1, help="accumulate_grad_batches")
    parser.add_argument("--validate", action="store_true", help="validate on 2 batches at the end")
    parser.add_argument("--resume", default=None, help="checkpoint to resume from")
    parser.add_argument("--every", type=int, default=0, help="checkpoint every this many steps (0: none)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="checkpoint every block")
    args = parser.parse_args()

    devices = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if args.pipeline:
        mesh = tuple(int(v) for v in args.mesh.split(",")) if args.mesh else None
        strategy: object = GeoHybridStrategy(mesh=mesh, pipeline=args.pipeline, pipeline_schedule=args.schedule,
                                             n_microbatches=args.microbatches,
                                             activation_checkpointing=args.activation_checkpointing or "auto")
    else:
        strategy = "auto"
    torch.manual_seed(0)
    model = CharLanguageModel(VOCAB, seq_len=SEQ_LEN, n_layer=args.layers, n_head=2, n_embd=32, warmup_steps=2,
                              max_steps=8)
    out = Path(args.out)
    losses = StepLosses()
    checkpoints = [ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=args.every, save_top_k=-1)] \
        if args.every else []
    trainer = pl.Trainer(
        strategy=strategy, accelerator="cpu", devices=devices, max_steps=args.steps, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        enable_checkpointing=bool(args.every), use_distributed_sampler=False, gradient_clip_val=args.clip,
        accumulate_grad_batches=args.accumulate,
        limit_val_batches=2 if args.validate else 0, callbacks=[losses, *checkpoints],
    )

    def loader(count: int) -> DataLoader:
        kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {"num_replicas": 1, "rank": 0}
        dataset = Windows(count)
        sampler = DistributedSampler(dataset, shuffle=False, **kwargs)
        return DataLoader(dataset, batch_size=GLOBAL_BATCH // kwargs["num_replicas"], sampler=sampler)

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return loader(2 * GLOBAL_BATCH)  # two steps an epoch: a checkpoint every 2 steps ends one

        def val_dataloader(self):
            return loader(2 * GLOBAL_BATCH)

    trainer.fit(model, datamodule=Data(), ckpt_path=args.resume)
    val = trainer.callback_metrics.get("val/loss")
    if trainer.is_global_zero:
        result = {"losses": losses.losses, "seconds": losses.seconds, "global_step": trainer.global_step,
                  "val_loss": None if val is None else float(val), "world_size": trainer.world_size}
        if isinstance(trainer.strategy, GeoHybridStrategy):
            plan = trainer.strategy.plan
            result.update(plan=plan.name, pipeline=plan.pipeline, mesh=list(plan.mesh_shape),
                          applied={k: v for k, v in trainer.strategy.applied.items()
                                   if isinstance(v, (int, str, bool, list))})
        (out / "result.json").write_text(json.dumps(result))
    leave_process_group()


if __name__ == "__main__":
    main()
