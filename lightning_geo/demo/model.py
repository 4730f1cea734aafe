"""A small GPT-style character language model (after nanoGPT) and its LightningModule.

The transformer blocks sit in an ``nn.ModuleList`` (``model.blocks``): the chain of blocks that GEO's
per-block loss scaling and parallel plans look for. Input embedding and output head are *not* tied,
so rarely seen characters keep rarely touched embedding rows (what ``SparsityAwareLR`` is about).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from lightning_geo.optim import GeoAdamW

LN2 = math.log(2.0)


@dataclass(frozen=True)
class GPTConfig:
    """Shape of the model."""

    vocab_size: int = 256  # characters, including id 0 for unknown ones
    seq_len: int = 128  # longest context, in characters
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # width of the residual stream
    dropout: float = 0.0  # dropout after attention and MLP; 0 for short runs

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return F.dropout(self.proj(y), self.dropout, self.training)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class CharGPT(nn.Module):
    """Token + position embeddings, a stack of ``Block``, a final norm and an (untied) output head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.seq_len, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the stream's variance stays put.
        for block in self.blocks:
            assert isinstance(block, Block)  # a ModuleList yields plain Modules
            for proj in (block.attn.proj, block.mlp[2]):
                assert isinstance(proj, nn.Linear)  # the attention's and the MLP's output projections
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab_size)`` for character ids ``idx`` of shape ``(B, T)``, ``T <= seq_len``."""
        T = idx.shape[1]
        if T > self.config.seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's seq_len={self.config.seq_len}")
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup from ~0 to 1 over ``warmup_steps``, then cosine decay to ``min_ratio``.

    Args:
        step: Optimizer steps taken so far.
        warmup_steps: Steps of linear warmup (0 for none).
        total_steps: Step at which the cosine reaches ``min_ratio``; later steps stay there.
        min_ratio: Final multiplier, a share of the peak LR. Default 0.1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def budget_warmup_cosine(progress: float, *, warmup_share: float, min_ratio: float = 0.1) -> float:
    """LR multiplier of a budgeted run at ``progress`` (share of the budget spent, in [0, 1]): linear warmup over
    the first ``warmup_share`` of the budget, then cosine decay to ``min_ratio`` at its end.

    Args:
        progress: Share of the budget spent (seconds, tokens or steps).
        warmup_share: Share of the budget spent warming up, in [0, 1).
        min_ratio: Final multiplier, a share of the peak LR. Default 0.1.
    """
    p = min(max(progress, 0.0), 1.0)
    if p < warmup_share:
        return max(p / warmup_share, 1e-3)
    done = (p - warmup_share) / max(1e-12, 1.0 - warmup_share)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * done))


OPTIMIZERS: tuple[str, ...] = ("adamw", "geo_adamw")
"""Optimizers the demo model can train with."""


class CharLanguageModel(pl.LightningModule):
    """Next-character prediction with ``CharGPT``, AdamW and a warmup + cosine schedule.

    Logs ``train/loss`` and ``train/bpc`` every step, ``val/loss`` and ``val/bpc`` (averaged over the
    validation set, across ranks) at each validation, and ``test/loss``, ``test/bpc`` the same way in ``test``.
    Losses are in nats per character; bpc is bits per character (loss / ln 2).

    Args:
        vocab: The characters by id (stored so a checkpoint can decode its own samples), or, for a subword
            model, the vocabulary size (the tokenizer decodes).
        seq_len: Context length in characters. Default 128.
        n_layer: Transformer blocks. Default 4.
        n_head: Attention heads. Default 4.
        n_embd: Residual width. Default 128.
        dropout: Dropout probability. Default 0.0.
        lr: Peak learning rate of AdamW. Default 3e-3.
        weight_decay: Decoupled weight decay on the 2-D weights of linear layers (not on embeddings,
            norms or biases). Default 0.1.
        warmup_steps: Linear LR warmup, in optimizer steps. Default 50.
        max_steps: Length of the cosine schedule, in optimizer steps. Default 1000.
        optimizer: ``"adamw"`` (default, ``torch.optim.AdamW``) or ``"geo_adamw"``
            ([`GeoAdamW`][lightning_geo.optim.GeoAdamW]: lazy rows for the embedding), same settings.
        warmup_share: For a budgeted run (one that sets ``training_progress``, as
            ``BudgetedTraining`` does): the share of the budget spent warming up;
            the schedule is then ``budget_warmup_cosine`` of the progress, and ``warmup_steps`` and
            ``max_steps`` are not used. Default 0.05.
    """

    def __init__(
        self,
        vocab: str | int,
        *,
        seq_len: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 50,
        max_steps: int = 1000,
        optimizer: str = "adamw",
        warmup_share: float = 0.05,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r} is not one of {OPTIMIZERS}")
        if lr <= 0:
            raise ValueError(f"lr={lr!r} must be positive")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay!r} must be non-negative")
        if warmup_steps < 0 or max_steps < 1:
            raise ValueError(f"warmup_steps={warmup_steps!r} must be >= 0 and max_steps={max_steps!r} >= 1")
        if not 0.0 <= warmup_share < 1.0:
            raise ValueError(f"warmup_share={warmup_share!r} must be in [0, 1)")
        self.save_hyperparameters()
        self.training_progress: float | None = None  # share of a budget spent; set by a budget callback
        self.config = GPTConfig(
            vocab_size=vocab if isinstance(vocab, int) else len(vocab), seq_len=seq_len, n_layer=n_layer,
            n_head=n_head, n_embd=n_embd, dropout=dropout,
        )
        self.model = CharGPT(self.config)
        self.val_loss = MeanMetric()

    @override
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch  # (B, T) each
        logits = self(x)  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bpc", loss / LN2)
        return loss

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_loss.update(self._loss(batch), weight=batch[0].numel())

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_held_out_loss("val", prog_bar=True)

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)  # the same held-out metric, logged under test/

    @override
    def on_test_epoch_end(self) -> None:
        self._log_held_out_loss("test")

    def _log_held_out_loss(self, prefix: str, prog_bar: bool = False) -> None:
        loss = self.val_loss.compute()  # averaged over every rank's batches
        self.val_loss.reset()
        self.log(f"{prefix}/loss", loss, prog_bar=prog_bar)
        self.log(f"{prefix}/bpc", loss / LN2)

    @override
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for module in self.model.modules():
            for name, param in module.named_parameters(recurse=False):
                (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(param)
        optimizer_class = GeoAdamW if self.hparams["optimizer"] == "geo_adamw" else torch.optim.AdamW
        optimizer = optimizer_class(
            [
                {"params": decay, "weight_decay": self.hparams["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams["lr"],
            betas=(0.9, 0.95),
        )

        def schedule(step: int) -> float:
            if self.training_progress is not None:
                return budget_warmup_cosine(self.training_progress, warmup_share=self.hparams["warmup_share"])
            return warmup_cosine(step, warmup_steps=self.hparams["warmup_steps"], total_steps=self.hparams["max_steps"])

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, num_chars: int, *, temperature: float = 0.8, top_k: int = 20) -> list[int]:
        """Sample ``num_chars`` character ids after the 1-D ``prompt`` ids (top-k sampling)."""
        was_training = self.training
        self.eval()
        idx = prompt.to(self.device).unsqueeze(0)  # (1, T)
        for _ in range(num_chars):
            logits = self(idx[:, -self.config.seq_len :])[:, -1, :] / temperature  # (1, V)
            kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
            logits[logits < kth] = -float("inf")
            idx = torch.cat([idx, torch.multinomial(F.softmax(logits, dim=-1), 1)], dim=1)
        self.train(was_training)
        return idx[0, prompt.numel() :].tolist()
