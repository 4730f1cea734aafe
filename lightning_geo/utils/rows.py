"""Rows of a gradient, shared by GEO's sparsity callback and its optimizer (neither imports the other).

- ``touched_rows``: the one definition of a *touched* row (a row of the gradient with any non-zero entry).
- ``ROW_DENSITY_RULE``: the attribute by which an optimizer says that it applies the row-density rule itself
  (``GeoAdamW`` sets it), so that ``SparsityAwareLR`` measures and logs but sets no LR multipliers for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

ROW_DENSITY_RULE = "applies_row_density_rule"
"""Name of the class attribute (``True``) of an optimizer that scales its steps by row frequency and parameter
density itself."""


def applies_row_density_rule(optimizer: Any) -> bool:
    """Whether ``optimizer`` scales its steps by row frequency and parameter density itself (see
    ``ROW_DENSITY_RULE``)."""
    return getattr(optimizer, ROW_DENSITY_RULE, False) is True


def touched_rows(grad: Tensor) -> Tensor:
    """Boolean mask ``[rows]`` of the rows (index along dim 0) of ``grad`` with any non-zero entry.

    For 0-D and 1-D gradients every element is its own row. A sparse gradient
    (``nn.Embedding(sparse=True)``) touches exactly the rows it lists. NaN counts as non-zero.
    Dense gradients take two row reductions (max and min), not a full-size boolean temporary.
    """
    if grad.is_sparse:
        mask = torch.zeros(grad.shape[0], dtype=torch.bool, device=grad.device)
        mask[grad.coalesce().indices()[0]] = True
        return mask
    if grad.dim() <= 1:
        return grad.reshape(-1).ne(0)
    flat = grad.reshape(grad.shape[0], -1)
    return flat.amax(dim=1).ne(0) | flat.amin(dim=1).ne(0)
