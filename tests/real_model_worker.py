"""One training run of a real model (``tests/real_models.py``) with GEO parts, started by ``torchrun`` (or plain
python for one process). Writes ``<out>/result.json`` on rank 0: the losses, the gradient norms the optimizer
received, the sequence lengths and the plan. The global batch is 8 samples in dataset order on every layout, so
the runs of 1 and 2 processes see the same samples at the same step."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import lightning.pytorch as pl
import torch

import lightning_geo  # noqa: F401  (registers "geo_hybrid")
from lightning_geo.strategies.geo_hybrid import _leave_process_group as leave_process_group
from tests.real_models import PARTS, CausalLM, GradientRecorder, geo_trainer_parts, train_loader

GLOBAL_BATCH = 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", choices=("gpt2", "litgpt"), required=True)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated GEO parts")
    parser.add_argument("--plan", default="auto", help="geo_hybrid's plan")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--force-block-scales", action="store_true")
    args = parser.parse_args()
    parts = tuple(p for p in args.parts.split(",") if p)

    devices = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.manual_seed(0)
    model = CausalLM(args.arch, optimizer="geo_adamw" if "geo_adamw" in parts else "adamw")
    recorder = GradientRecorder()
    geo = geo_trainer_parts(parts, force_block_scales=args.force_block_scales, plan=args.plan)
    trainer = pl.Trainer(
        strategy=geo.get("strategy", "auto"), accelerator="cpu", devices=devices, max_steps=args.steps,
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        use_distributed_sampler=False, limit_val_batches=0, callbacks=[*geo["callbacks"], recorder],
        plugins=geo["plugins"],
    )

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {"num_replicas": 1, "rank": 0}
            return train_loader(4 * GLOBAL_BATCH, GLOBAL_BATCH // kwargs["num_replicas"], **kwargs)

    trainer.fit(model, datamodule=Data())
    if trainer.is_global_zero:
        result = {"losses": model.losses, "grad_norms": recorder.grad_norms, "seq_lens": recorder.seq_lens,
                  "world_size": trainer.world_size,
                  "plan": getattr(getattr(trainer.strategy, "plan", None), "name", None),
                  "block_scales": recorder.block_scales}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "result.json").write_text(json.dumps(result))
    # every rank leaves the gloo group together, whatever strategy ran (Lightning's DDP leaves it to exit)
    leave_process_group()


if __name__ == "__main__":
    main()
