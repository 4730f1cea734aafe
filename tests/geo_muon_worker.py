"""A few ``GeoMuon`` steps of a tiny token model, under ``torchrun`` (FSDP2 and DDP over gloo) or in-process.

Every layout sees the same global batch of 8 sequences per step (each of 2 ranks the half of it), so after the
same steps the parameters must equal a 1-process run's to rounding. Rank 0 writes ``<out>/result.pt``:
``{layout: {name: whole parameter}}`` and the routing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from lightning_geo.optim import GeoMuon

VOCAB, WIDTH, STEPS, BATCH, SEQ = 32, 16, 3, 8, 6


class TokenModel(nn.Module):
    """Token embedding (rows rule; tokens come from 24 of 32 rows), two matrices (one of 15 rows: FSDP2 shards it
    8 + 7), a norm and an untied head."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.up = nn.Linear(WIDTH, 15)
        self.down = nn.Linear(15, WIDTH)
        self.norm = nn.LayerNorm(WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.wte(tokens).flatten(0, 1)  # (B * T, C)
        h = h + self.down(torch.relu(self.up(h)))
        return self.lm_head(self.norm(h))  # (B * T, V)


def batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 24, (BATCH, SEQ + 1), generator=generator) for _ in range(STEPS)]


def train(model: nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0, world: int = 1) -> None:
    """``STEPS`` steps; this rank's share of each batch is its contiguous ``BATCH // world`` rows."""
    share = BATCH // world
    for batch in batches():
        part = batch[rank * share:(rank + 1) * share]
        logits = model(part[:, :-1])
        loss = nn.functional.cross_entropy(logits, part[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def whole(model: nn.Module) -> dict[str, torch.Tensor]:
    full = {}
    for name, param in model.named_parameters():
        data = param.detach()
        full[name.removeprefix("module.")] = (data.full_tensor() if hasattr(data, "full_tensor") else data).clone()
    return full


def reference() -> dict[str, torch.Tensor]:
    """The 1-process run."""
    torch.manual_seed(0)
    model = TokenModel()
    train(model, GeoMuon(model, lr=0.02))
    return whole(model)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), int(os.environ["WORLD_SIZE"])
    result: dict = {}

    torch.manual_seed(0)
    model = TokenModel()
    mesh = init_device_mesh("cpu", (world,))
    for layer in (model.wte, model.up, model.down, model.lm_head):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = GeoMuon(model, lr=0.02)
    sharded = {n: type(p).__name__ for n, p in model.named_parameters()}
    train(model, optimizer, rank, world)
    result["fsdp2"], result["routes"], result["types"] = whole(model), optimizer.routes, sharded

    torch.manual_seed(0)
    ddp = DistributedDataParallel(TokenModel())
    train(ddp, GeoMuon(ddp.module, lr=0.02), rank, world)
    result["ddp"] = whole(ddp)

    if rank == 0:
        torch.save(result, Path(args.out) / "result.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
