"""Touched embedding rows from the looked-up indices instead of from the gradient.

Finding the touched rows of a dense ``[vocab, dim]`` embedding gradient reads the whole gradient
twice; the indices the embedding looked up say the same thing at a cost in proportion to the batch's
tokens. ``EmbeddingLookupRecorder`` records them with forward pre-hooks on ``nn.Embedding`` and
``nn.EmbeddingBag`` modules: only forwards in training mode with gradients enabled count, and all of
them since the last ``take`` (so gradient accumulation is covered).

A looked-up row is a touched row exactly when its gradient is non-zero, except where the loss
ignores a lookup; so modules where that is structural are left to the gradient measurement:
``EmbeddingBag(mode="max")`` (only the maximal rows get a gradient) and weights shared with another
module (a tied output head makes every row's gradient non-zero). ``padding_idx`` never counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn


def is_tied(module: nn.Module, root: nn.Module) -> bool:
    """Whether ``module.weight`` is also a parameter of another module of ``root`` (a tied output head). The same
    module registered under two names (``self.token_embedding = self.model.wte``) is not a tie."""
    weight = getattr(module, "weight", None)
    owners = {id(m) for m in root.modules() if any(p is weight for p in m.parameters(recurse=False))}
    return len(owners) > 1


def position_lookup_reason(indices: Tensor) -> str | None:
    """Why embedding ``indices`` are positions rather than tokens, or None when nothing says so.

    Indices that do not depend on the data are positional:

    - every row along the last dimension counts up (or down) by one: absolute positions ``0..T-1``, ``k..k+T-1``
      with a cache offset, or distances ``T-1..0``;
    - a batch of three or more dimensions whose items are all the same (a position table looked up once and
      expanded over the batch);
    - a ``(query, key)`` grid (two dimensions, or more that are the same for every batch item) constant along each
      diagonal: a function of the key's position minus the query's, as T5's relative-position buckets and
      ALiBi-like distance tables are.

    A token batch has none of these shapes: its rows differ (and a window shifted by one position per row shifts
    left, constant along anti-diagonals, not diagonals). Rows of one token, a grid of one value and a grid of two
    rows (two text windows one token apart, in the shuffled order, are constant along diagonals) say nothing.

    Args:
        indices: The integer tensor an ``nn.Embedding`` looked up.
    """
    if indices.is_floating_point() or indices.dim() == 0 or indices.shape[-1] < 2:
        return None
    steps = indices.diff(dim=-1)
    if bool((steps == 1).all()) or bool((steps == -1).all()):
        return "its indices count up by one along the sequence (positions 0..T-1, or from an offset)"
    if bool((indices == indices.reshape(-1)[0]).all()):
        return None  # one value throughout: a token repeated as well as a position
    grid, same_for_batch = indices, False
    while grid.dim() > 2 and grid.shape[0] >= 2 and bool((grid == grid[:1]).all()):
        grid, same_for_batch = grid[0], True
    while grid.dim() > 2 and grid.shape[0] == 1:
        grid = grid[0]
    # two rows say too little: a shuffled batch of two text windows one token apart is constant along diagonals
    if grid.dim() == 2 and grid.shape[0] >= 3 and bool((grid[1:, 1:] == grid[:-1, :-1]).all()):
        return ("its indices depend only on query and key positions (the same along each diagonal of the "
                "(query, key) grid, as relative-position buckets are)")
    if same_for_batch:
        return "its indices are the same for every item of the batch, so they come from positions, not data"
    return None


def is_position_lookup(indices: Tensor) -> bool:
    """Whether embedding indices are positions rather than tokens (see ``position_lookup_reason``)."""
    return position_lookup_reason(indices) is not None


class PositionLookupCheck:
    """Looks once, at each module's first training forward, whether an embedding is looked up by position.

    Args:
        modules: ``{name: module}`` of embeddings to check.

    After that forward, ``positional`` maps the names found to be position tables (GPT-2's ``wpe``, T5's
    ``relative_attention_bias``, any learned absolute or relative position table) to the reason
    (``position_lookup_reason``): their row "density" is the window length over the context, not token
    rarity. The check costs a few host reads per module, once; its hooks then remove themselves.
    """

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.names: list[str] = list(modules)  # every module checked, in one order on every rank
        self.positional: dict[str, str] = {}
        self.checked: set[str] = set()
        self._handles = {
            name: module.register_forward_pre_hook(self._checker(name)) for name, module in modules.items()
        }

    @property
    def done(self) -> bool:
        """Whether every module has been checked (or the hooks were removed)."""
        return not self._handles

    def _checker(self, name: str) -> Any:
        def check(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not (module.training and torch.is_grad_enabled() and args and isinstance(args[0], Tensor)):
                return
            reason = position_lookup_reason(args[0])
            if reason is not None:
                self.positional[name] = reason
            self.checked.add(name)
            self._handles.pop(name).remove()

        return check

    def remove(self) -> None:
        """Remove the hooks not yet fired."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()


def lookup_trackable(module: nn.Module, root: nn.Module) -> TypeGuard[nn.Embedding | nn.EmbeddingBag]:
    """Whether ``module``'s touched rows can be read off its inputs (see the module docstring)."""
    if not isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return False
    if isinstance(module, nn.EmbeddingBag) and module.mode == "max":
        return False
    return not is_tied(module, root)


class EmbeddingLookupRecorder:
    """Records the row indices that embedding modules look up during training forwards.

    Args:
        modules: ``{name: module}`` of ``nn.Embedding`` / ``nn.EmbeddingBag`` modules to watch,
            keyed by the name their weight's statistics are kept under.
    """

    def __init__(self, modules: Mapping[str, nn.Embedding | nn.EmbeddingBag]) -> None:
        self.modules = dict(modules)
        self._seen: dict[str, list[Tensor]] = {name: [] for name in self.modules}
        self._handles = [
            module.register_forward_pre_hook(self._recorder(name)) for name, module in self.modules.items()
        ]

    def _recorder(self, name: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            if module.training and torch.is_grad_enabled() and args and isinstance(args[0], Tensor):
                self._seen[name].append(args[0].detach().reshape(-1))

        return record

    def take(self, name: str) -> Tensor | None:
        """The touched-row mask ``[rows]`` of ``name`` since the last call, or None if it looked nothing up."""
        seen = self._seen.get(name)
        if not seen:
            return None
        module = self.modules[name]
        index = torch.cat(seen) if len(seen) > 1 else seen[0]
        seen.clear()
        touched = torch.zeros(module.weight.shape[0], dtype=torch.bool, device=module.weight.device)
        touched[index.to(touched.device)] = True
        if module.padding_idx is not None:
            touched[module.padding_idx] = False
        return touched

    def clear(self, names: Iterable[str] | None = None) -> None:
        """Forget what was recorded for ``names`` (default all), e.g. the lookups of a skipped step."""
        for name in self._seen if names is None else names:
            if name in self._seen:
                self._seen[name].clear()

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()
