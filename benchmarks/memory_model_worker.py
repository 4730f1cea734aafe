"""Peak memory of real training steps under forced GeoHybridStrategy plans, one rank per process.

    python -m torch.distributed.run --nproc_per_node N benchmarks/memory_model_worker.py --out r.jsonl \\
        --arm demo:2,1,1 --run demo:1,2,1:ac --arm llama:1,2,1:offload

Started by ``benchmarks/memory_model.py`` (see there for what it compares) and by ``tests/test_memory_model.py``.
The processes run every ``--arm`` one after the other in the same process group, each a fresh Trainer of
``--steps`` steps on random tokens, one torch thread, gloo on CPU. An arm is ``MODEL:R,S,T[:ac][:OFFLOAD]``:
``demo`` (the demo's ``CharLanguageModel``), ``llama`` (a Hugging Face ``LlamaForCausalLM``) or ``tiny`` (the demo
model, small), the mesh given to ``GeoHybridStrategy(mesh=...)``, ``ac`` for ``activation_checkpointing=True``, and
``offload`` for FSDP2's CPU offload as ``parallelize`` applies it (the strategy has no argument for it: the module
parallelizes itself in ``configure_model`` with the strategy's plan and ``cpu_offload=True``), or
``offload_unpinned`` for the same with ``CPUOffloadPolicy(pin_memory=False)``. Each rank measures its peak with
``PeakMemory`` (``benchmarks/memory_probe.py``); rank 0 appends one JSON line per arm to ``--out``: every rank's
peak, its phase, the blocks alive at it, the module-state bytes and the shape ``TransformerShape.from_module`` read
off the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # memory_probe, also when started by the tests

from memory_probe import PeakMemory

import lightning_geo  # noqa: F401  (registers "geo_hybrid")
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.strategies import GeoHybridStrategy
from lightning_geo.strategies.memory import TransformerShape
from lightning_geo.strategies.parallelize import parallelize

MODELS: dict[str, dict[str, int]] = {
    # the demo: activations (12 MB a layer) and model state (7 MB of parameters) dominate; llama: the logits (8 MB)
    "demo": {"layers": 4, "hidden": 192, "heads": 4, "vocab": 96, "seq_len": 128, "micro_batch": 8},
    "llama": {"layers": 4, "hidden": 128, "heads": 4, "kv_heads": 2, "ffn": 352, "vocab": 2048, "seq_len": 128,
              "micro_batch": 8},
    "tiny": {"layers": 2, "hidden": 64, "heads": 2, "vocab": 256, "seq_len": 64, "micro_batch": 4},
}
"""The models a run can name, by their shape (``tiny`` is the demo model, small, for the tests)."""


class DemoLM(CharLanguageModel):
    """The demo's character LM over an integer vocabulary, with the optimizer's warmup cut to one step."""

    def __init__(self, layers: int, hidden: int, heads: int, vocab: int, seq_len: int, **_: Any) -> None:
        super().__init__(vocab, seq_len=seq_len, n_layer=layers, n_head=heads, n_embd=hidden, warmup_steps=1)


class LlamaLM(pl.LightningModule):
    """A Hugging Face ``LlamaForCausalLM`` (untied, RMSNorm, SwiGLU, grouped-query attention) trained with AdamW."""

    def __init__(self, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int, seq_len: int,
                 **_: Any) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.model = LlamaForCausalLM(LlamaConfig(
            num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
            intermediate_size=ffn, vocab_size=vocab, max_position_embeddings=seq_len, tie_word_embeddings=False,
            use_cache=False,  # no key-value cache in training (a recomputed block would append to it again)
        ))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(input_ids=batch[0], labels=batch[0]).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def offloaded(cls: type[pl.LightningModule], pin_memory: bool) -> type[pl.LightningModule]:
    """``cls`` parallelizing itself in ``configure_model``: the strategy's plan with ``cpu_offload=True``.

    ``parallelize`` builds FSDP2's ``CPUOffloadPolicy()``, which pins the host copies; pinning needs an
    accelerator, so on a CPU-only machine it is refused. ``pin_memory=False`` swaps in ``CPUOffloadPolicy(
    pin_memory=False)`` while the plan is applied.
    """

    def configure_model(self: pl.LightningModule) -> None:
        import torch.distributed.fsdp as fsdp

        strategy = self.trainer.strategy
        assert isinstance(strategy, GeoHybridStrategy)
        policy = fsdp.CPUOffloadPolicy
        if not pin_memory:
            fsdp.CPUOffloadPolicy = functools.partial(policy, pin_memory=False)  # type: ignore[misc, assignment]
        try:
            assert self.device_mesh is not None  # GeoHybridStrategy builds it before configure_model
            parallelize(self, self.device_mesh, dataclasses.replace(strategy.plan, cpu_offload=True))
        finally:
            fsdp.CPUOffloadPolicy = policy  # type: ignore[misc]

    return type(f"Offloaded{cls.__name__}", (cls,), {"configure_model": configure_model})


def run(spec: str, steps: int) -> dict[str, Any]:
    """One run: ``MODEL:R,S,T[:ac][:offload]``; this rank's result."""
    name, mesh_text, *flags = spec.split(":")
    mesh = tuple(int(v) for v in mesh_text.split(","))
    shape = MODELS[name]
    cls: type[pl.LightningModule] = LlamaLM if name == "llama" else DemoLM
    if "offload" in flags or "offload_unpinned" in flags:
        cls = offloaded(cls, pin_memory="offload" in flags)
    torch.manual_seed(0)
    model = cls(**shape)
    estimated_shape = TransformerShape.from_module(model, seq_len=shape["seq_len"], micro_batch=shape["micro_batch"])
    tokens = torch.randint(shape["vocab"], (steps * shape["micro_batch"], shape["seq_len"] + 1))
    loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=shape["micro_batch"])
    probe = PeakMemory()
    strategy = GeoHybridStrategy(mesh=mesh, activation_checkpointing="ac" in flags)  # type: ignore[arg-type]
    devices = int(os.environ.get("WORLD_SIZE", "1"))
    trainer = pl.Trainer(
        strategy=strategy, accelerator="cpu", devices=devices, max_steps=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        use_distributed_sampler=False, callbacks=[probe],
    )
    trainer.fit(model, loader)
    assert isinstance(trainer.strategy, GeoHybridStrategy)
    result = {
        "run": spec, "model": name, "mesh": list(mesh), "ac": "ac" in flags,
        "offload": "offload" in flags or "offload_unpinned" in flags, "plan": trainer.strategy.plan.name,
        "applied": {k: str(v) for k, v in trainer.strategy.applied.items()}, "peak_bytes": probe.peak_bytes,
        "state_bytes": probe.state_bytes, "peak_phase": probe.peak_phase, "phase_peaks": probe.phase_peaks,
        "peak_blocks": probe.peak_blocks[:30], "unseen_frees": probe.unseen_frees,
        "shape": dataclasses.asdict(estimated_shape),
    }
    del trainer, model, strategy, loader, probe
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON-lines file rank 0 appends one line per run to")
    parser.add_argument("--arm", action="append", required=True, help="MODEL:R,S,T[:ac][:offload]; repeatable")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run (the optimizer's state "
                        "exists from the second)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for spec in args.arm:
        try:
            mine: dict[str, Any] = run(spec, args.steps)
        except Exception as error:  # one failing run (an offload refused) must not hide the others'
            mine = {"run": spec, "error": f"{type(error).__name__}: {error}"}
        ranks: list[Any] = [mine]
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, mine)
        if int(os.environ.get("RANK", "0")) == 0:
            with open(args.out, "a") as out:
                out.write(json.dumps({"run": spec, "ranks": ranks}) + "\n")


if __name__ == "__main__":
    main()
