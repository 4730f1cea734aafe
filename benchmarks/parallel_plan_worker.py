"""One timed training run of the demo model under a forced GeoHybridStrategy mesh, started by ``torchrun``.

    python -m torch.distributed.run --nproc_per_node N benchmarks/parallel_plan_worker.py --mesh R,S,T --out r.json

Started by ``benchmarks/parallel_plan.py`` (see there for what it measures). Every rank trains the demo's
char-level GPT (``lightning_geo.demo.model.CharLanguageModel``) on random character windows, one torch thread
per process, gloo on CPU; the global batch is ``--batch`` windows per rank whatever the mesh (a tensor-parallel
group of size T, one data-parallel replica, reads ``--batch`` x T windows). Rank 0 times each training step
(``on_train_batch_start`` to ``on_train_batch_end``: forward, backward with its gradient collectives, optimizer
step), waits at a barrier before each step so that every step starts together, and writes a JSON object:
the median step time after ``--warmup`` steps, every step time, the plan the strategy applied, its own
communication estimate and the parameter count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from bench_common import keep_freed_memory, quiet_lightning
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import lightning_geo  # noqa: F401  (registers "geo_hybrid")
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.strategies import GeoHybridStrategy

VOCAB = "".join(chr(c) for c in range(32, 127)) + "\n"  # 96 characters


class RandomWindows(Dataset):
    """``count`` random ``(input, target)`` windows of ``seq_len`` character ids, the same on every rank."""

    def __init__(self, count: int, seq_len: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(len(VOCAB), (count, seq_len + 1), generator=generator)  # (count, T + 1)
        self.x, self.y = ids[:, :-1], ids[:, 1:]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class StepTimer(pl.Callback):
    """Wall time of every training step on this rank, each step started after a barrier."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        trainer.strategy.barrier()
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file rank 0 writes")
    parser.add_argument("--mesh", required=True, help="R,S,T (replicate, shard, tensor)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2, help="windows per rank and step (global: x world size)")
    args = parser.parse_args()

    quiet_lightning(".*GPU available but not used.*", ".*GeoHybridStrategy: GPU memory is unknown.*")
    keep_freed_memory()
    torch.set_num_threads(1)
    devices = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    mesh = tuple(int(v) for v in args.mesh.split(","))
    total = args.warmup + args.steps

    torch.manual_seed(args.seed)
    model = CharLanguageModel(VOCAB, seq_len=args.seq_len, n_layer=args.n_layer, n_head=args.n_head,
                              n_embd=args.n_embd, warmup_steps=2, max_steps=total)
    strategy = GeoHybridStrategy(mesh=mesh, process_group_backend="gloo")
    timer = StepTimer()
    trainer = pl.Trainer(
        strategy=strategy, accelerator="cpu", devices=devices, max_steps=total, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False, callbacks=[timer],
    )

    class Data(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            kwargs = trainer.strategy.distributed_sampler_kwargs or {"num_replicas": 1, "rank": 0}
            per_replica = args.batch * mesh[2]  # a tensor-parallel group is one data-parallel replica
            dataset = RandomWindows(total * per_replica * kwargs["num_replicas"], args.seq_len, args.seed)
            sampler = DistributedSampler(dataset, shuffle=False, **kwargs)
            return DataLoader(dataset, batch_size=per_replica, sampler=sampler)

    trainer.fit(model, datamodule=Data())
    if trainer.is_global_zero:
        timed = timer.seconds[args.warmup:]
        plan = strategy.plan
        result = {
            "mesh": list(plan.mesh_shape), "plan": plan.name, "world_size": trainer.world_size, "seed": args.seed,
            "median_step_s": statistics.median(timed), "step_s": timer.seconds, "warmup": args.warmup,
            "parameters": sum(p.numel() for p in model.parameters()),
            "strategy_est_comm_s": plan.comm_seconds,
            "applied": {k: v for k, v in strategy.applied.items() if isinstance(v, (int, str, bool, list))},
        }
        Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
