"""Which parameters have untouched rows: the rare, batched check that picks GeoAdamW's path for each parameter.

A parameter whose rows all get a gradient (a linear layer's weight, an output head under a full softmax, a
token embedding tied to that head) gains nothing from the row rule and is updated by torch's own AdamW. Only
a parameter with untouched rows (a token embedding) takes the row-wise path. Telling them apart reads the
gradient on the host, so it is done for all parameters together, with one host read, once at the start and
then every ``RECHECK_EVERY`` of each parameter's steps.

A parameter whose touched rows have the shape of a position lookup is taken for an embedding looked up by
position, and updated as by AdamW too: its untouched rows are positions (or distances) not used yet, not rare
tokens. Two shapes are recognised:

- exactly its first ``k < rows`` rows: an absolute position table (GPT-2's ``wpe`` while the sequences are shorter
  than its table, e.g. under a sequence-length curriculum), or one-sided relative buckets (T5's decoder);
- a block from row 0 and a second block that starts at the middle row (``rows // 2`` or the one after): two-sided
  relative buckets, one half for keys before the query and one for keys after it (T5's encoder, whose bucket
  ``rows // 2``, "after, at distance 0", is never looked up, so its gradient is never dense even at full length).

The gradient is all this check sees, so it has limits: a token embedding whose batch happens to touch exactly such
rows is taken for a position table until the next check; a relative table with another bucket layout, or one
sharded by rows (each shard sees only its own rows), is not recognised from its gradient. Names and module
inspection cover those: see [`GeoAdamW.mark_positional`][lightning_geo.optim.GeoAdamW.mark_positional].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_geo.utils.rows import touched_rows

# Plain ints, as kept in the optimizer's state (torch's load_state_dict would take a string apart).
DENSE, POSITIONAL, ROWS, UNTOUCHED = 0, 1, 2, 3
MODE_NAMES: dict[int, str] = {DENSE: "dense", POSITIONAL: "positional", ROWS: "rows", UNTOUCHED: "untouched"}
RECHECK_EVERY = 100
"""A parameter's steps between two checks of its path (the first check is at its first step)."""


def row_modes(
    grads: list[Tensor], *, all_reduce: bool = False, positional: Sequence[bool] | None = None
) -> list[int]:
    """The path of each gradient's parameter: `DENSE`, `POSITIONAL` (touched rows shaped as a position lookup: see
    the module docstring), `ROWS`, or `UNTOUCHED` for an all-zero gradient (nothing to tell from it: the row rule,
    which leaves every row put, and a check again at the next step).

    Args:
        grads: Dense gradients (this rank's shards, for sharded parameters) with two or more dimensions.
        all_reduce: Sum the counts over the default process group first (every rank must call it then):
            shards of one parameter must agree on its path, or ranks would take different collectives.
        positional: Per gradient, whether something other than the gradient (a name, a mark from module
            inspection) says its parameter is looked up by position: then `ROWS` becomes `POSITIONAL`. Reduced
            with the counts, so one rank's hint holds on every rank. Default: no hints.

    Returns:
        One mode per gradient. Costs one host read of a ``(len(grads), 4)`` tensor, whatever the count.
    """
    hints = list(positional) if positional is not None else [False] * len(grads)
    if len(hints) != len(grads):
        raise ValueError(f"positional must have one entry per gradient ({len(grads)}), got {len(hints)}")
    stats = []
    for grad, hint in zip(grads, hints, strict=True):
        touched = touched_rows(grad)
        rows = touched.numel()
        index = torch.arange(rows, device=touched.device)
        # Where a block of touched rows starts after row 0 (a touched row after an untouched one).
        later_starts = torch.zeros_like(touched)
        later_starts[1:] = touched[1:] & ~touched[:-1]
        count = later_starts.sum()
        where = (later_starts * index).sum()  # the one later start's row, when there is one
        middle = (where == rows // 2) | (where == rows // 2 + 1)
        shaped = touched[0] & ((count == 0) | ((count == 1) & middle))  # the module docstring's two shapes
        stats.append(torch.stack([touched.sum().float(), torch.tensor(float(rows), device=touched.device),
                                  (~shaped).float(), torch.tensor(float(hint), device=touched.device)]))
    table = torch.stack(stats)  # (params, 4): touched rows, rows, not shaped as a position lookup, hints
    if all_reduce:
        torch.distributed.all_reduce(table)
    modes = []
    for touched, rows, irregular, hinted in table.tolist():
        if touched == 0:
            modes.append(UNTOUCHED)
        elif touched >= rows:
            modes.append(DENSE)
        elif not irregular or hinted:
            modes.append(POSITIONAL)
        else:
            modes.append(ROWS)
    return modes
