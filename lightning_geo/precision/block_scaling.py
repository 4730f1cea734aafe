"""Per-block ("non-uniform") loss scaling: rescale the gradient at the boundaries of a chain of blocks.

With one global loss scale, the largest gradient in the network (usually the LM head's) sets the
scale, and small activation gradients deeper down flush to zero in fp16. Here the gradient entering
each block during backward is multiplied by a power of two, so every block runs its backward at its
own scale, and each parameter's gradient is unscaled by the scale of the region it sits in.

That is exact only at *cut points*: tensors that every backward path from the loss to the upstream
parameters passes through. A long skip connection, a tied weight or a second output of a block
breaks it. [`BlockScaling.analyse`][lightning_geo.precision.BlockScaling.analyse] walks the autograd graph of the first
training loss and keeps only the candidate points that are real cuts; parameters outside every cut keep the global
scale.

Regions are numbered from the loss: region 0 is downstream of every cut (final norm, head, loss) and
runs at the global scale; region ``k`` lies upstream of the ``k`` cuts nearest the loss.

A weight shared between the stem and the head (a tied token embedding and LM head, as in GPT-2 and many
Llama-family models) receives gradient both from the head, at the global scale, and through the blocks.
Then the input of the first block becomes a *return point*: the gradient leaving the blocks is brought
back to the global scale there, so the stem (embeddings) belongs to region 0 and every block keeps its
own scale.

Parameters are keyed by their qualified names, not by tensor identity: the tensors in the autograd graph
of a wrapped model (FSDP2's unsharded parameters, ``replicate``'s, a compiled module's) are not the ones
the optimizer steps. The names are recorded by forward pre-hooks while the graph is built (the first
training forward) and looked up again for whatever tensors a wrapper registers later.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
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


_WRAPPER_PARTS = frozenset({"_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"})


def canonical_name(name: str) -> str:
    """A parameter's qualified name without the parts wrappers insert (``torch.compile``'s ``_orig_mod``,
    activation checkpointing's ``_checkpoint_wrapped_module``), so names match before and after wrapping."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def named_parameter_tensors(root: nn.Module) -> dict[int, tuple[torch.Tensor, list[str]]]:
    """``id(tensor) -> (tensor, canonical names)`` of every parameter of ``root`` as registered now; a tied
    parameter has several names."""
    found: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for name, param in root.named_parameters(remove_duplicate=False):
        found.setdefault(id(param), (param, []))[1].append(canonical_name(name))
    return found


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
    [`analyse`][lightning_geo.precision.BlockScaling.analyse] has run, the hooks only keep those tensors (of the latest
    forward); afterwards they multiply the incoming gradient at each valid cut by ``factor`` (a power of two, set by
    [`set_region_scales`][lightning_geo.precision.BlockScaling.set_region_scales]) and record its amax.

    Args:
        root: The module the block names are relative to (the LightningModule).
        block_names: Qualified names of the blocks, in forward order (see
            [`find_block_stacks`][lightning_geo.precision.find_block_stacks]).
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
        self.return_point: str | None = None  # the first block's input, where a tied stem returns to scale 0
        self.analysed = False
        self.region_by_name: dict[str, int] = {}  # canonical parameter name -> region
        self.fallback_reason: str | None = None  # why no cut is valid, if none is
        self.measuring = True  # record the amax of the gradient arriving at each cut (False: only rescale)
        self._factors: dict[str, float] = {}
        self._pending: dict[str, torch.Tensor] = {}  # point -> its tensor, until analyse()
        self._boundary_amax: dict[str, list[torch.Tensor]] = {}  # one amax per backward (micro-batch)
        self._handles: list[RemovableHandle] = []
        # Until analyse(): the names of the tensors each module's forward sees (a wrapper's unsharded ones).
        self._seen: dict[int, tuple[torch.Tensor, list[str]]] = {}
        self._naming_handles: list[RemovableHandle] = [
            module.register_forward_pre_hook(self._make_naming_hook(prefix))
            for prefix, module in root.named_modules()
            if any(True for _ in module.parameters(recurse=False))
        ]
        first = modules[block_names[0]]
        self._handles.append(first.register_forward_pre_hook(self._on_first_input, with_kwargs=True))
        for name in block_names:
            self._handles.append(modules[name].register_forward_hook(self._make_output_hook(name)))

    @property
    def num_regions(self) -> int:
        """1 + the number of valid cuts (1 before [`analyse`][lightning_geo.precision.BlockScaling.analyse]: everything
        at the global scale)."""
        return len(self.valid_points) + 1

    def _active(self, module: nn.Module) -> bool:
        # Not in eval/no-grad forwards, and not in forwards that activation checkpointing re-runs
        # inside backward (their outputs are not part of the graph being differentiated).
        return module.training and torch.is_grad_enabled() and torch._C._current_graph_task_id() == -1

    def _make_naming_hook(self, prefix: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            for name, param in module.named_parameters(prefix=prefix, recurse=False):
                names = self._seen.setdefault(id(param), (param, []))[1]
                qualified = canonical_name(name)
                if qualified not in names:
                    names.append(qualified)

        return hook

    def _on_first_input(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._active(module):
            tensor = _first_tensor(args)
            if tensor is None:  # passed by keyword: the first tensor argument
                tensor = next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            self._watch(self.points[0], tensor)

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
        measure = point != self.return_point  # the return point's gradient is its block region's, measured inside

        def on_grad(grad: torch.Tensor) -> torch.Tensor | None:
            if measure and self.measuring:
                amax = torch.linalg.vector_norm(grad.detach(), math.inf, dtype=torch.float32)
                self._boundary_amax.setdefault(point, []).append(amax)
            factor = self._factors[point]
            return None if factor == 1.0 else grad * factor

        tensor.register_hook(on_grad)

    def analyse(self, loss: torch.Tensor) -> None:
        """Find the valid cuts in the graph of ``loss`` and assign each parameter (by name) its region.

        A candidate point is a valid cut if no parameter reachable from it is also reachable from the
        loss along a path that avoids it, and the valid cuts' parameter sets must nest (a chain). A
        parameter that breaks every block cut only by being shared with the head (a tied embedding) is
        handled by a return point at the first block's input, when every path from the blocks to it
        passes there. Parameters not upstream of any valid cut get region 0 (the global scale). Call it
        after the forward and before the backward of a training step; that backward is already hooked.
        """
        self.analysed = True
        for handle in self._naming_handles:
            handle.remove()
        self._naming_handles.clear()
        names = named_parameter_tensors(self.root)
        for key, (tensor, seen_names) in self._seen.items():
            entry = names.setdefault(key, (tensor, []))
            entry[1].extend(n for n in seen_names if n not in entry[1])
        self._seen.clear()
        # Only the parameters matter (their gradients are what gets unscaled); other leaves that require
        # grad, shared between blocks, must not invalidate a cut.
        param_ids = {key for key, (tensor, _) in names.items() if tensor.requires_grad}
        root_node = loss.grad_fn
        nodes = {}
        for point in self.points:
            pending = self._pending.get(point)
            if pending is not None and pending.grad_fn is not None and root_node is not None:
                nodes[point] = pending.grad_fn
        upstream = {point: _reachable_params(node) & param_ids for point, node in nodes.items()}
        upstream = {point: ids for point, ids in upstream.items() if ids}
        shared = {point: ids & _reachable_params(root_node, stop=nodes[point]) for point, ids in upstream.items()}

        def name_of(key: int) -> str:
            return names[key][1][0]

        first = self.points[0]
        tied = shared.get(first, set())
        reach: dict[str, set[int]] = {point: upstream[point] for point in upstream if not shared[point]}
        if tied:
            # Usable if every block cut is broken only by the stem's shared parameters and no path from inside the
            # blocks reaches them except through the first block's input.
            returnable = [
                point
                for point in self.points[1:]
                if point in upstream
                and shared[point] <= tied
                and not _reachable_params(nodes[point], stop=nodes[first]) & tied
            ]
            if returnable:
                self.return_point = first
                reach = {point: upstream[point] for point in returnable}
        ordered = [point for point in self.points if point in reach]
        nested = all(reach[a] <= reach[b] for a, b in itertools.pairwise(ordered))
        self.valid_points = ordered if nested else []
        if not self.valid_points:
            self.return_point = None
            broken = sorted({name_of(k) for ids in shared.values() for k in ids})
            if not upstream:
                self.fallback_reason = "no block output is on the loss's backward path"
            elif not nested:
                self.fallback_reason = "the blocks' parameter sets do not form a chain"
            else:
                self.fallback_reason = (
                    f"parameters {broken[:4]} are reached from the loss by a path that skips the blocks "
                    "(a tied weight or a long skip connection), and not only through the stem"
                )
        stem = upstream.get(first, set()) if self.return_point is not None else set()
        for key in param_ids:
            region = 0 if key in stem else sum(key in reach[point] for point in self.valid_points)
            for name in names[key][1]:
                # A wrapped parameter has two tensors of one name (FSDP2's sharded one, registered now, and the
                # unsharded one in the graph); only the latter is reached from the cuts.
                self.region_by_name[name] = max(region, self.region_by_name.get(name, 0))
        self._factors = dict.fromkeys(self.valid_points, 1.0)
        if self.return_point is not None:
            self._factors[self.return_point] = 1.0
        # This step's backward has not run yet: hook it too, so it is scaled like every later one.
        for point in self._factors:
            self._register(point, self._pending[point])
        self._pending.clear()

    def set_region_scales(self, scales: Sequence[float]) -> None:
        """Set the hook factors from the scale of each region (``scales[0]`` is the global scale)."""
        if len(scales) != self.num_regions:
            raise ValueError(f"expected {self.num_regions} region scales, got {len(scales)}")
        # The k-th valid cut from the loss turns region k-1's scale into region k's.
        for k, point in enumerate(reversed(self.valid_points), start=1):
            self._factors[point] = scales[k] / scales[k - 1]
        if self.return_point is not None:  # back from the most upstream block region to the global scale
            self._factors[self.return_point] = scales[0] / scales[-1]

    def take_boundary_amax(self) -> list[torch.Tensor | None]:
        """The raw (scaled) amax of the gradient that arrived at each valid cut since the last call,
        ordered from the loss (index ``k - 1`` for the cut between regions ``k - 1`` and ``k``), then reset."""
        values = []
        for point in reversed(self.valid_points):
            amaxes = self._boundary_amax.get(point)
            values.append(None if amaxes is None else amaxes[0] if len(amaxes) == 1 else torch.stack(amaxes).amax())
        self._boundary_amax.clear()
        return values

    def region_names(self) -> list[str]:
        """A readable name per region: ``"head"`` for region 0, else the first block that region holds."""
        names = ["head"]  # with a return point the stem is in it too
        for point in reversed(self.valid_points):
            # The region upstream of a block's output cut starts at that block (or the stem, upstream of the input).
            names.append("stem" if point.endswith(":input") else point)
        return names

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles + self._naming_handles:
            handle.remove()
        self._handles.clear()
        self._naming_handles.clear()
