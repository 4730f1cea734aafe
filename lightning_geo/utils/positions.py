"""Embeddings looked up by position, shared by GEO's sparsity callback and its optimizer (neither imports the other).

A table looked up by position (GPT-2's ``wpe``, T5's ``relative_attention_bias``, any learned absolute or relative
position table) has rows for positions or position differences, not for tokens: how many of its rows a batch
touches follows the sequence length, not the data, so no part boosts its steps for being "sparse".

- [`position_name_hint`][lightning_geo.utils.positions.position_name_hint]: the names that say so (a second
  signal, next to the looked-up indices or the gradient's shape, for where those say nothing).
- [`POSITION_HINT_METHOD`][lightning_geo.utils.positions.POSITION_HINT_METHOD]: the name of the optimizer method by
  which ``SparsityAwareLR`` tells an optimizer that applies the row-density rule itself (``GeoAdamW``) which
  parameters it found looked up by position.
"""

from __future__ import annotations

import re

POSITION_HINT_METHOD = "mark_positional"
"""Name of the optimizer method ``mark_positional(param, reason)`` that takes a parameter found looked up by
position off the optimizer's row rule."""

_POSITION_WORDS = re.compile(
    r"(?:^|_)(?:wpe|positions?|positional|relative_attention_bias|rel_pos\w*|pos_emb\w*|pos_enc\w*)(?:$|_)"
)


def position_name_hint(name: str) -> bool:
    """Whether a parameter's (or module's) dotted name says it is a position table.

    A component of the name must be, or hold as an ``_``-separated word, one of ``wpe``, ``position``,
    ``positions``, ``positional``, ``relative_attention_bias``, ``rel_pos...``, ``pos_emb...`` or ``pos_enc...``:
    ``transformer.wpe.weight``, ``embeddings.position_embeddings.weight``, ``decoder.embed_positions.weight``,
    ``block.0.layer.0.SelfAttention.relative_attention_bias.weight`` say so; ``composition.weight`` does not.

    Args:
        name: A dotted name as ``named_parameters()`` or ``named_modules()`` gives it.
    """
    return any(_POSITION_WORDS.search(part) for part in name.lower().split("."))


__all__ = ["POSITION_HINT_METHOD", "position_name_hint"]
