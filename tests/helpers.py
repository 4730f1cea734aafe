"""Test helpers: a tiny model and a real Trainer on CPU, for tests of every GEO part.

``fit_tiny(tmp_path, callbacks=[...])`` runs a few optimizer steps of :class:`TinyModel` through a real
``lightning.pytorch.Trainer`` on the CPU, with a TensorBoard logger under ``tmp_path`` (pass
``logger=...`` to change it) and everything slow switched off.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_geo.strategies.geo_hybrid import _leave_process_group as leave_process_group


class SpawnDDPWithCleanExit(DDPStrategy):
    """``ddp_spawn`` whose workers leave the gloo group together (barrier, then destroy) at teardown.

    Lightning destroys the process group at exit only for NCCL. A gloo group left to interpreter shutdown
    let a worker abort now and then in CI ("terminate called without an active exception", SIGABRT) after
    a fit had finished, when one rank exited while the other still held its connections.
    """

    def teardown(self) -> None:
        super().teardown()
        leave_process_group()  # geo_hybrid's own exit: a bounded barrier, then destroy


if "ddp_spawn_clean_exit" not in StrategyRegistry:
    StrategyRegistry.register(
        "ddp_spawn_clean_exit", SpawnDDPWithCleanExit, description="ddp_spawn for tests", start_method="forkserver"
    )

DDP_CPU: dict[str, Any] = {"strategy": "ddp_spawn_clean_exit", "accelerator": "cpu", "devices": 2}
"""Trainer arguments for the 2-process gloo tests (mark them with ``@pytest.mark.ddp``). The workers come from a
forkserver that tests/conftest.py preloads with torch, Lightning and GEO: each worker starts without importing them
again (about 7 s of CPU each when spawned), and, forked from that single-threaded server rather than from the test
process, it cannot inherit a lock another thread of the test process held (forked from pytest-xdist's workers,
Lightning's ``ddp_fork`` hung now and then). What the workers get is pickled, as with ``ddp_spawn``."""

DDP_SPAWN_CPU: dict[str, Any] = DDP_CPU
"""The same: named where a test relies on the workers getting a pickled copy of the Trainer, its callbacks and the
model (as ``ddp_spawn`` gives them)."""


class TinyModel(pl.LightningModule):
    """A residual MLP of ``num_blocks`` blocks in an ``nn.ModuleList``, regressing a fixed random target.

    Small enough for a step to take about a millisecond, shaped like a transformer's block stack so that
    GEO parts that look for a chain of blocks find one. Logs ``train/loss`` every step.
    """

    def __init__(self, width: int = 16, num_blocks: int = 2, lr: float = 0.05, num_samples: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.inp = nn.Linear(8, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width)) for _ in range(num_blocks)
        )
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(self.hparams.num_samples, 8, generator=generator)
        y = x.sum(dim=1, keepdim=True).sin()
        return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=generator)


def tiny_trainer(tmp_path: Path, **overrides: Any) -> pl.Trainer:
    """A CPU Trainer for a handful of steps, logging to TensorBoard under ``tmp_path`` every step."""
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 4,
        "logger": TensorBoardLogger(tmp_path, name="tiny", version=0),
        "log_every_n_steps": 1,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


def fit_tiny(tmp_path: Path, model: pl.LightningModule | None = None, **trainer_overrides: Any) -> pl.Trainer:
    """Fit ``model`` (default :class:`TinyModel`) with :func:`tiny_trainer` and return the Trainer."""
    trainer = tiny_trainer(tmp_path, **trainer_overrides)
    trainer.fit(model if model is not None else TinyModel())
    return trainer


class TinyTextModel(pl.LightningModule):
    """A bag-of-embeddings classifier over a Zipfian vocabulary: most embedding rows get no gradient per step.

    ``optimizer`` picks the optimizer: a class taking ``(params, lr=..., weight_decay=...)``; a scheduler
    is added when ``schedule`` is ``"lambda"`` (0.9 ** step) or ``"exponential"`` (gamma 0.9).
    """

    def __init__(
        self,
        vocab: int = 200,
        lr: float = 0.01,
        weight_decay: float = 0.0,
        optimizer: type[torch.optim.Optimizer] | None = None,
        schedule: str | None = None,
        num_samples: int = 64,
    ) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(vocab, 8)
        self.out = nn.Linear(8, 3)
        self.optimizer_class = optimizer or torch.optim.AdamW
        self.lr, self.weight_decay, self.schedule, self.num_samples = lr, weight_decay, schedule, num_samples
        self.vocab = vocab

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(tokens))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        tokens, labels = batch
        loss = nn.functional.cross_entropy(self(tokens), labels)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_class(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.schedule is None:
            return optimizer
        if self.schedule == "lambda":
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.9**step)
        else:
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        tokens = (torch.rand(self.num_samples, 5, generator=generator) ** 3 * self.vocab).long()
        labels = tokens[:, 0] % 3
        return DataLoader(TensorDataset(tokens, labels), batch_size=8)


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
