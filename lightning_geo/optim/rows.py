"""Which rows of a gradient are non-zero: the one definition of a *touched* row that GEO's sparsity part shares."""

from __future__ import annotations

import torch
from torch import Tensor


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
