"""The models and the newer GEO parts of ``benchmarks/end_to_end.py`` and ``benchmarks/gpu_check.py``.

``model_factory("llama", muon=True)`` returns what ``lightning_geo.demo.run.run_demo(model_factory=...)`` takes: a
callable with :class:`~lightning_geo.demo.model.CharLanguageModel`'s arguments that builds

- ``demo``: the demo's GPT-2-shaped LM itself (learned positions, LayerNorm, GELU MLP, untied head);
- ``llama``: a Hugging Face ``LlamaForCausalLM`` of the same size (RoPE, RMSNorm, SwiGLU MLP of width 344, untied
  head, no download) behind the demo's LightningModule, so data, loss, validation, AdamW with its decay groups and
  the warmup + cosine schedule over the budget are the demo's, line for line;

and, with ``muon=True``, trains it with :class:`lightning_geo.optim.GeoMuon` built from the network in place of
AdamW (same peak learning rate multiplier schedule). GEO parts still being written are imported on first use, with a
message that says which file is missing.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from typing_extensions import override

from lightning_geo.demo.model import CharLanguageModel, budget_warmup_cosine, warmup_cosine

MODELS: tuple[str, ...] = ("demo", "llama")
"""Model names ``model_factory`` (and ``end_to_end.py --models``) take."""

LLAMA_INTERMEDIATE = 344
"""Llama's SwiGLU width for a residual width of 128: 8/3 x 128 rounded up to a multiple of 8, as Llama sizes it."""


class MissingPartError(RuntimeError):
    """A GEO part a benchmark arm needs is not in this checkout."""


def geo_muon_class() -> Any:
    """``lightning_geo.optim.GeoMuon``, or :class:`MissingPartError` naming its file."""
    try:
        from lightning_geo.optim import GeoMuon
    except ImportError as error:
        raise MissingPartError("lightning_geo.optim.GeoMuon (lightning_geo/optim/geo_muon.py) is not in this "
                               f"checkout: the muon arms cannot run ({error})") from error
    return GeoMuon


def batch_size_schedule_class() -> Any:
    """``lightning_geo.callbacks.BatchSizeSchedule``, or :class:`MissingPartError` naming its file."""
    try:
        from lightning_geo.callbacks import BatchSizeSchedule
    except ImportError as error:
        raise MissingPartError("lightning_geo.callbacks.BatchSizeSchedule (lightning_geo/callbacks/"
                               f"batch_size_schedule.py) is not in this checkout: the batch arms cannot run ({error})"
                               ) from error
    return BatchSizeSchedule


def build_geo_muon(network: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``GeoMuon(network, lr=lr, weight_decay=weight_decay)``: Muon for the hidden matrices, the row rule for the
    embeddings, AdamW for the rest, as GeoMuon routes them."""
    return geo_muon_class()(network, lr=lr, weight_decay=weight_decay)


class DemoLM(CharLanguageModel):
    """The demo's LightningModule, optionally trained with GeoMuon instead of AdamW.

    Args:
        vocab: As :class:`CharLanguageModel`.
        muon: Train with :func:`build_geo_muon` (same ``lr``, ``weight_decay`` and schedule). Default False.
        **kwargs: The other arguments of :class:`CharLanguageModel`.
    """

    def __init__(self, vocab: str | int, *, muon: bool = False, **kwargs: Any) -> None:
        super().__init__(vocab, **kwargs)
        self.muon = muon

    @override
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        if not self.muon:
            return super().configure_optimizers()
        optimizer = build_geo_muon(self.model, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])

        def schedule(step: int) -> float:  # CharLanguageModel's, over the budget or the steps
            if self.training_progress is not None:
                return budget_warmup_cosine(self.training_progress, warmup_share=self.hparams["warmup_share"])
            return warmup_cosine(step, warmup_steps=self.hparams["warmup_steps"], total_steps=self.hparams["max_steps"])

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class LlamaNet(nn.Module):
    """A ``LlamaForCausalLM`` that maps token ids ``(B, T)`` to logits ``(B, T, V)``, like the demo's ``CharGPT``."""

    def __init__(self, *, vocab_size: int, seq_len: int, n_layer: int, n_head: int, n_embd: int) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=n_embd, intermediate_size=LLAMA_INTERMEDIATE * n_embd // 128,
            num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_head,
            max_position_embeddings=seq_len, tie_word_embeddings=False, use_cache=False,
        )
        config._attn_implementation = "sdpa"  # as the demo's F.scaled_dot_product_attention
        self.llama = LlamaForCausalLM(config)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.llama(input_ids=idx, use_cache=False).logits  # (B, T, V)


class LlamaLM(DemoLM):
    """:class:`DemoLM` around :class:`LlamaNet` (``n_layer`` x ``n_embd``, ``n_head`` heads, context ``seq_len``).

    The demo's ``CharGPT`` that ``CharLanguageModel`` builds is replaced before training; weight decay falls, as in
    the demo, on the ``nn.Linear`` weights (attention, MLP and head), not on the embedding or the norms.
    """

    def __init__(self, vocab: str | int, **kwargs: Any) -> None:
        super().__init__(vocab, **kwargs)
        c = self.config
        self.model = LlamaNet(vocab_size=c.vocab_size, seq_len=c.seq_len, n_layer=c.n_layer, n_head=c.n_head,
                              n_embd=c.n_embd)

    @override
    def generate(self, prompt: torch.Tensor, num_chars: int, **kwargs: Any) -> list[int]:
        raise NotImplementedError("the benchmark's Llama model does not sample (run with sample_chars=0)")


def model_factory(model: str, *, muon: bool = False) -> Any:
    """The ``model_factory`` of ``run_demo`` for ``model`` (one of :data:`MODELS`), trained with GeoMuon if ``muon``.

    Raises:
        ValueError: for an unknown ``model``.
        MissingPartError: with ``muon`` where GeoMuon is not in this checkout (checked here, before any training).
    """
    if model not in MODELS:
        raise ValueError(f"model={model!r} is not one of {MODELS}")
    if muon:
        geo_muon_class()
    return functools.partial(LlamaLM if model == "llama" else DemoLM, muon=muon)
