"""Shapes of well-known models, so that ``lightning-geo topo --model llama3.1-70b`` plans for them by name.

Taken from the models' official configurations (Hugging Face ``config.json``): layers, hidden size, heads,
key-value heads, MLP width, vocabulary. The sequence length and micro-batch are the caller's.
"""

from __future__ import annotations

from dataclasses import replace

from lightning_geo.strategies.transformer_shape import TransformerShape

KNOWN_MODELS: dict[str, TransformerShape] = {
    "gpt2": TransformerShape(layers=12, hidden=768, heads=12, ffn=3072, vocab=50257, seq_len=1024, micro_batch=1,
                             tied_embeddings=True, learned_positions=1024, bias=True),
    "gpt2-xl": TransformerShape(layers=48, hidden=1600, heads=25, ffn=6400, vocab=50257, seq_len=1024,
                                micro_batch=1, tied_embeddings=True, learned_positions=1024, bias=True),
    "llama3.1-8b": TransformerShape(layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=128256,
                                    seq_len=8192, micro_batch=1, gated_mlp=True, rms_norm=True),
    "llama3.1-70b": TransformerShape(layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256,
                                     seq_len=8192, micro_batch=1, gated_mlp=True, rms_norm=True),
    "llama3.1-405b": TransformerShape(layers=126, hidden=16384, heads=128, kv_heads=8, ffn=53248, vocab=128256,
                                      seq_len=8192, micro_batch=1, gated_mlp=True, rms_norm=True),
}
"""Known model shapes by name, at their usual training sequence length and a micro-batch of one sequence."""


def known_model(name: str, *, seq_len: int | None = None, micro_batch: int | None = None) -> TransformerShape:
    """The shape of the model called ``name`` (a key of ``KNOWN_MODELS``), with ``seq_len`` and ``micro_batch``
    replaced when given.

    Raises:
        ValueError: for a name not in ``KNOWN_MODELS`` (naming the known ones).
    """
    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    shape = KNOWN_MODELS[name]
    return replace(shape, seq_len=shape.seq_len if seq_len is None else seq_len,
                   micro_batch=shape.micro_batch if micro_batch is None else micro_batch)
