"""Models this project did not write, for the real-model tests: a Hugging Face ``GPT2LMHeadModel`` and a
litgpt ``GPT``, both tiny and built from configs (random init, nothing downloaded), on BPE-tokenized text.

- GPT-2: tied token embedding and LM head, learned position embedding ``wpe``, ``Conv1D`` projections, the
  loss from ``labels`` inside the model.
- litgpt: LLaMA-style (RMSNorm, grouped-query attention, RoPE, SwiGLU MLP), untied head.

Batches are dicts (``input_ids``, ``attention_mask``, ``labels``), as Hugging Face data collators make them.
The BPE vocabulary is trained in-process with Hugging Face ``tokenizers`` on a few standard-library files.
"""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lightning_geo.optim import GeoAdamW

SEQ_LEN = 32
VOCAB_SIZE = 384
ARCHITECTURES = ("gpt2", "litgpt")
_SOURCES = ("textwrap.py", "string.py", "shlex.py", "fnmatch.py", "glob.py")


@functools.cache
def token_ids() -> torch.Tensor:
    """The text's ids under a byte-level BPE of :data:`VOCAB_SIZE` tokens trained on it (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "\n".join((stdlib / name).read_text(encoding="utf-8") for name in _SOURCES)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([text], trainer=trainer)
    return torch.tensor(tokenizer.encode(text).ids, dtype=torch.long)


class TokenWindows(Dataset):
    """``count`` dict samples of :data:`SEQ_LEN` tokens, consecutive windows of the BPE text; samples 2 and 3 of
    every 4 end in padding (``attention_mask`` 0, ``labels`` -100), as a padding collator would leave them."""

    def __init__(self, count: int) -> None:
        ids = token_ids()
        self.samples = []
        for i in range(count):
            input_ids = ids[i * SEQ_LEN: (i + 1) * SEQ_LEN].clone()
            mask = torch.ones(SEQ_LEN, dtype=torch.long)
            if i % 4 in (2, 3):  # two of every four: each data-parallel rank of two gets the same share
                mask[-5:] = 0
                input_ids[-5:] = 0
            labels = input_ids.masked_fill(mask == 0, -100)
            self.samples.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.samples[i]


def build_model(arch: str) -> torch.nn.Module:
    """A tiny model of ``arch`` (see :data:`ARCHITECTURES`) with 2 blocks, random init from the global seed."""
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=SEQ_LEN, n_embd=32, n_layer=2, n_head=2,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2LMHeadModel(config)
    if arch == "litgpt":
        from litgpt import GPT, Config

        config = Config(name="tiny-llama", block_size=SEQ_LEN, vocab_size=VOCAB_SIZE, padded_vocab_size=VOCAB_SIZE,
                        n_layer=2, n_head=4, n_query_groups=2, n_embd=32, intermediate_size=64, bias=False,
                        norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", rotary_percentage=1.0,
                        parallel_residual=False)
        return GPT(config)
    raise ValueError(f"arch={arch!r} is not one of {ARCHITECTURES}")


class CausalLM(pl.LightningModule):
    """An ordinary LightningModule around a model of ``arch``, trained on dict batches; records each step's loss
    (averaged over the data-parallel ranks) in :attr:`losses`.

    Args:
        arch: ``"gpt2"`` or ``"litgpt"``.
        optimizer: ``"adamw"`` or ``"geo_adamw"``.
        lr: learning rate.
    """

    def __init__(self, arch: str = "litgpt", optimizer: str = "adamw", lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(arch)
        self.losses: list[float] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.hparams.arch == "gpt2":
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              labels=batch["labels"]).loss
        logits = self.model(batch["input_ids"])  # (B, T, V)
        return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten(),
                               ignore_index=-100)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        self.losses.append(float(self.trainer.strategy.reduce(loss.detach(), reduce_op="mean")))
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer_class = GeoAdamW if self.hparams.optimizer == "geo_adamw" else torch.optim.AdamW
        return optimizer_class(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)


def train_loader(count: int, batch_size: int, *, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = False) -> DataLoader:
    """A loader of :class:`TokenWindows` over one data-parallel rank's share (dataset order unless ``shuffle``)."""
    dataset = TokenWindows(count)
    if num_replicas == 1:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


PARTS = ("precision", "curriculum", "sparsity", "geo_adamw", "geo_hybrid")


class ForceBlockScales(pl.Callback):
    """Before every backward, region ``k`` of the precision plugin (counted from the loss) runs at the head's scale
    divided by ``2**k``: every block unscales by a scale of its own, so a gradient unscaled by another region's
    scale is off by a power of two."""

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        plugin = trainer.precision_plugin
        blocks = plugin._block_scaling
        assert blocks is not None and blocks.analysed and blocks.num_regions > 2, "the model must have block regions"
        plugin._scales = [plugin._scales[0] / 2**k for k in range(blocks.num_regions)]
        blocks.set_region_scales(plugin._scales)


class GradientRecorder(pl.Callback):
    """The norm of every parameter's gradient as the optimizer receives it (the whole tensor, also when sharded),
    per step, the sequence length of each batch and the precision plugin's scales as the backward used them."""

    def __init__(self) -> None:
        self.grad_norms: list[dict[str, float]] = []
        self.seq_lens: list[int] = []
        self.block_scales: list[dict[str, float]] = []

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.block_scales.append(dict(getattr(trainer.precision_plugin, "block_scales", {})))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.seq_lens.append(int(batch["input_ids"].shape[1]))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        norms = {}
        for name, param in pl_module.named_parameters():
            if param.grad is not None:
                grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
                norms[name] = float(grad.float().norm())
        self.grad_norms.append(norms)


def geo_trainer_parts(parts: tuple[str, ...] | list[str], *, force_block_scales: bool = False,
                      plan: str = "auto") -> dict[str, Any]:
    """Trainer keyword arguments (``plugins``, ``callbacks``, ``strategy``) for the GEO ``parts`` named (see
    :data:`PARTS`; ``geo_adamw`` is the module's ``optimizer`` and adds nothing here)."""
    from lightning_geo.callbacks import DynamicCurriculum, SparsityAwareLR
    from lightning_geo.precision import PredictiveScalingPrecision
    from lightning_geo.strategies import GeoHybridStrategy

    unknown = set(parts) - set(PARTS)
    assert not unknown, f"unknown parts {unknown}"
    kwargs: dict[str, Any] = {"plugins": [], "callbacks": []}
    if "precision" in parts:
        kwargs["plugins"].append(PredictiveScalingPrecision("16-mixed"))
        if force_block_scales:
            kwargs["callbacks"].append(ForceBlockScales())
    if "curriculum" in parts:
        kwargs["callbacks"].append(DynamicCurriculum(mode="seq_len", deadline=0.5, min_seq_len=8, seq_len_step=8))
    if "sparsity" in parts:
        kwargs["callbacks"].append(SparsityAwareLR())
    if "geo_hybrid" in parts:
        kwargs["strategy"] = GeoHybridStrategy(plan)
    return kwargs
