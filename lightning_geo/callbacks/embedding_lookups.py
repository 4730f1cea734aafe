"""Touched embedding rows from the looked-up indices instead of from the gradient.

Finding the touched rows of a dense ``[vocab, dim]`` embedding gradient reads the whole gradient
twice; the indices the embedding looked up say the same thing at a cost in proportion to the batch's
tokens. :class:`EmbeddingLookupRecorder` records them with forward pre-hooks on ``nn.Embedding`` and
``nn.EmbeddingBag`` modules: only forwards in training mode with gradients enabled count, and all of
them since the last :meth:`~EmbeddingLookupRecorder.take` (so gradient accumulation is covered).

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


def is_position_lookup(indices: Tensor) -> bool:
    """Whether embedding indices are positions rather than tokens: every row along the last dimension counts
    up by one (``0..T-1``, or ``k..k+T-1`` with a cache offset). A one-token row says nothing: False."""
    if indices.dim() == 0 or indices.shape[-1] < 2 or indices.is_floating_point():
        return False
    return bool((indices.diff(dim=-1) == 1).all())


class PositionLookupCheck:
    """Looks once, at each module's first training forward, whether an embedding is looked up by position.

    Args:
        modules: ``{name: module}`` of embeddings to check.

    After that forward, :attr:`positional` holds the names found to be position embeddings (GPT-2's ``wpe``,
    a learned absolute position table): their row "density" is the window length over the context, not
    token rarity. The check costs one host read per module, once; its hooks then remove themselves.
    """

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.positional: set[str] = set()
        self.checked: set[str] = set()
        self._handles = {
            name: module.register_forward_pre_hook(self._checker(name)) for name, module in modules.items()
        }

    def _checker(self, name: str) -> Any:
        def check(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not (module.training and torch.is_grad_enabled() and args and isinstance(args[0], Tensor)):
                return
            if is_position_lookup(args[0]):
                self.positional.add(name)
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
