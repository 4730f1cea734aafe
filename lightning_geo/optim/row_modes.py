"""Which parameters have untouched rows: the rare, batched check that picks GeoAdamW's path for each parameter.

A parameter whose rows all get a gradient (a linear layer's weight, an output head under a full softmax, a
token embedding tied to that head) gains nothing from the row rule and is updated by torch's own AdamW. Only
a parameter with untouched rows (a token embedding) takes the row-wise path. Telling them apart reads the
gradient on the host, so it is done for all parameters together, with one host read, once at the start and
then every ``RECHECK_EVERY`` of each parameter's steps.

A parameter whose touched rows are exactly its first ``k < rows`` rows is taken for an embedding looked up by
position (GPT-2's ``wpe`` while the sequences are shorter than its table, e.g. under a sequence-length
curriculum): its untouched rows are positions not used yet, not rare tokens, so it is updated as by AdamW too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_geo.utils.rows import touched_rows

# Plain ints, as kept in the optimizer's state (torch's load_state_dict would take a string apart).
DENSE, POSITIONAL, ROWS, UNTOUCHED = 0, 1, 2, 3
MODE_NAMES: dict[int, str] = {DENSE: "dense", POSITIONAL: "positional", ROWS: "rows", UNTOUCHED: "untouched"}
RECHECK_EVERY = 100
"""A parameter's steps between two checks of its path (the first check is at its first step)."""


def row_modes(grads: list[Tensor], *, all_reduce: bool = False) -> list[int]:
    """The path of each gradient's parameter: :data:`DENSE`, :data:`POSITIONAL`, :data:`ROWS`, or :data:`UNTOUCHED`
    for an all-zero gradient (nothing to tell from it: the row rule, which leaves every row put, and a check
    again at the next step).

    Args:
        grads: Dense gradients (this rank's shards, for sharded parameters) with two or more dimensions.
        all_reduce: Sum the counts over the default process group first (every rank must call it then):
            shards of one parameter must agree on its path, or ranks would take different collectives.

    Returns:
        One mode per gradient. Costs one host read of a ``(len(grads), 3)`` tensor, whatever the count.
    """
    stats = []
    for grad in grads:
        touched = touched_rows(grad)
        gap = (touched[1:] & ~touched[:-1]).any()  # a touched row after an untouched one: not a leading block
        rows = torch.tensor(float(touched.numel()), device=touched.device)
        stats.append(torch.stack([touched.sum().float(), rows, gap.float()]))
    table = torch.stack(stats)  # (params, 3): touched rows, rows, gaps
    if all_reduce:
        torch.distributed.all_reduce(table)
    modes = []
    for touched, rows, gaps in table.tolist():
        if touched == 0:
            modes.append(UNTOUCHED)
        elif touched >= rows:
            modes.append(DENSE)
        elif not gaps:
            modes.append(POSITIONAL)
        else:
            modes.append(ROWS)
    return modes
