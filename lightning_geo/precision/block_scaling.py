"""Per-block ("non-uniform") loss scaling: rescale the gradient at the boundaries of a chain of blocks.

With one global loss scale, the largest gradient in the network (usually the LM head's) sets the
scale, and small activation gradients deeper down flush to zero in fp16. Here the gradient entering
each block during backward is multiplied by a power of two, so every block runs its backward at its
own scale, and each parameter's gradient is unscaled by the scale of the region it sits in.

That is exact only at *cut points*: tensors that every backward path from the loss to the upstream
parameters passes through. A long skip connection, a tied weight or a second output of a block
breaks it. :meth:`BlockScaling.analyse` walks the autograd graph of the first training loss and keeps
only the candidate points that are real cuts; parameters outside every cut keep the global scale.

Regions are numbered from the loss: region 0 is downstream of every cut (final norm, head, loss) and
runs at the global scale; region ``k`` lies upstream of the ``k`` cuts nearest the loss.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def find_block_stacks(root: nn.Module) -> list[str]:
    """Names of the blocks of the outermost repeated stacks in ``root``, in forward-definition order.

    A stack is an ``nn.ModuleList`` (of at least one child) or an ``nn.Sequential`` (of at least two)
    whose children all have the same class and hold parameters (the transformer blocks of a GPT, the
    layers of a ResNet stage). Stacks inside a stack's blocks are not searched.
    """
    names: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        children = list(module.named_children())
        # A ModuleList is a stack even of one block (a 1-layer GPT); a Sequential needs two of a kind.
        minimum = 1 if isinstance(module, nn.ModuleList) else 2
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(children) >= minimum:
            kinds = {type(child) for _, child in children}
            if len(kinds) == 1 and all(any(True for _ in child.parameters()) for _, child in children):
                names.extend(f"{prefix}{name}" for name, _ in children)
                return
        for name, child in children:
            visit(f"{prefix}{name}.", child)

    visit("", root)
    return names


def _reachable_params(start: Any, stop: Any = None) -> set[int]:
    """ids of the leaf tensors whose AccumulateGrad nodes are reachable from ``start`` without entering ``stop``."""
    found: set[int] = set()
    # Keep every visited node object alive: autograd creates the Python wrapper of a C++ node on demand and
    # reuses it only while it lives, so a freed wrapper's id() could come back for another node.
    seen: dict[int, Any] = {}
    stack = [start]
    while stack:
        node = stack.pop()
        if node is None or node is stop or id(node) in seen:
            continue
        seen[id(node)] = node
        variable = getattr(node, "variable", None)
        if variable is not None:
            found.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


class BlockScaling:
    """Hooks at the boundaries of a chain of blocks that rescale and measure the backward gradient.

    The candidate points are the input of the first block and the output of every block. Until
    :meth:`analyse` has run, the hooks only keep those tensors (of the latest forward); afterwards they
    multiply the incoming gradient at each valid cut by ``factor`` (a power of two, set by
    :meth:`set_region_scales`) and record its amax.

    Args:
        root: The module the block names are relative to (the LightningModule).
        block_names: Qualified names of the blocks, in forward order (see :func:`find_block_stacks`).
    """

    def __init__(self, root: nn.Module, block_names: Sequence[str]) -> None:
        if not block_names:
            raise ValueError("block_names must name at least one block")
        modules = dict(root.named_modules())
        missing = [name for name in block_names if name not in modules]
        if missing:
            raise ValueError(f"blocks {missing} are not submodules of {type(root).__name__}")
        self.root = root
        self.block_names = list(block_names)
        self.points: list[str] = [f"{block_names[0]}:input", *block_names]
        self.valid_points: list[str] = []  # forward order
        self.analysed = False
        self.param_region: dict[int, int] = {}  # id(param) -> region
        self._factors: dict[str, float] = {}
        self._pending: dict[str, torch.Tensor] = {}  # point -> its tensor, until analyse()
        self._boundary_amax: dict[str, list[torch.Tensor]] = {}  # one amax per backward (micro-batch)
        self._handles: list[RemovableHandle] = []
        first = modules[block_names[0]]
        self._handles.append(first.register_forward_pre_hook(self._on_first_input))
        for name in block_names:
            self._handles.append(modules[name].register_forward_hook(self._make_output_hook(name)))

    @property
    def num_regions(self) -> int:
        """1 + the number of valid cuts (1 before :meth:`analyse`: everything at the global scale)."""
        return len(self.valid_points) + 1

    def _active(self, module: nn.Module) -> bool:
        # Not in eval/no-grad forwards, and not in forwards that activation checkpointing re-runs
        # inside backward (their outputs are not part of the graph being differentiated).
        return module.training and torch.is_grad_enabled() and torch._C._current_graph_task_id() == -1

    def _on_first_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._active(module):
            self._watch(self.points[0], _first_tensor(args))

    def _make_output_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self._active(module):
                self._watch(name, _first_tensor(output))

        return hook

    def _watch(self, point: str, tensor: torch.Tensor | None) -> None:
        if tensor is None or not tensor.requires_grad:
            return
        if not self.analysed:
            self._pending[point] = tensor
        elif point in self._factors:
            self._register(point, tensor)

    def _register(self, point: str, tensor: torch.Tensor) -> None:
        def on_grad(grad: torch.Tensor) -> torch.Tensor | None:
            self._boundary_amax.setdefault(point, []).append(grad.detach().abs().amax())
            factor = self._factors[point]
            return None if factor == 1.0 else grad * factor

        tensor.register_hook(on_grad)

    def analyse(self, loss: torch.Tensor, params: Iterable[nn.Parameter]) -> None:
        """Find the valid cuts in the graph of ``loss`` and assign each parameter its region.

        A candidate point is a valid cut if no parameter reachable from it is also reachable from the
        loss along a path that avoids it, and the valid cuts' parameter sets must nest (a chain).
        Parameters not upstream of any valid cut get region 0 (the global scale). Call it after the
        forward and before the backward of a training step; that backward is already hooked.
        """
        params = [p for p in params if p.requires_grad]
        # Only the parameters matter (their gradients are what gets unscaled); other leaves that require
        # grad, shared between blocks, must not invalidate a cut.
        param_ids = {id(p) for p in params}
        self.analysed = True
        root_node = loss.grad_fn
        reach: dict[str, set[int]] = {}
        for point in self.points:
            tensor = self._pending.get(point)
            node = None if tensor is None else tensor.grad_fn
            if node is None or root_node is None:
                continue
            upstream = _reachable_params(node) & param_ids
            if upstream and not upstream & _reachable_params(root_node, stop=node):
                reach[point] = upstream
        ordered = [point for point in self.points if point in reach]
        nested = all(reach[a] <= reach[b] for a, b in itertools.pairwise(ordered))
        self.valid_points = ordered if nested else []
        self.param_region = {id(p): sum(id(p) in reach[point] for point in self.valid_points) for p in params}
        self._factors = dict.fromkeys(self.valid_points, 1.0)
        # This step's backward has not run yet: hook it too, so it is scaled like every later one.
        for point in self.valid_points:
            self._register(point, self._pending[point])
        self._pending.clear()

    def set_region_scales(self, scales: Sequence[float]) -> None:
        """Set the hook factors from the scale of each region (``scales[0]`` is the global scale)."""
        if len(scales) != self.num_regions:
            raise ValueError(f"expected {self.num_regions} region scales, got {len(scales)}")
        # The k-th valid cut from the loss turns region k-1's scale into region k's.
        for k, point in enumerate(reversed(self.valid_points), start=1):
            self._factors[point] = scales[k] / scales[k - 1]

    def take_boundary_amax(self) -> list[torch.Tensor | None]:
        """The raw (scaled) amax of the gradient that arrived at each valid cut since the last call,
        ordered from the loss (index ``k - 1`` for the cut between regions ``k - 1`` and ``k``), then reset."""
        values = []
        for point in reversed(self.valid_points):
            amaxes = self._boundary_amax.get(point)
            values.append(None if amaxes is None else torch.stack(amaxes).float().amax())
        self._boundary_amax.clear()
        return values

    def region_names(self) -> list[str]:
        """A readable name per region: ``"head"`` for region 0, else the first block that region holds."""
        names = ["head"]
        for point in reversed(self.valid_points):
            # The region upstream of a block's output cut starts at that block (or the stem, upstream of the input).
            names.append("stem" if point.endswith(":input") else point)
        return names

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
