"""The largest activation gradient inside each scaling region, measured at the outputs of the linear-like layers.

A region's parameter gradients and the gradients at its boundaries do not bound what flows inside it: in
a pre-norm transformer block the residual-stream gradient between attention and MLP can be several
times the one at the block's output, and it is cast to fp16 at the attention projection's output. So on
measuring steps (``ActivationGradAmax.armed``) the amax of each linear-like layer's output gradient
(``nn.Linear``, convolutions, Hugging Face's ``Conv1D``, LoRA wrappers:
``lightning_geo.utils.layers.is_linear_like``) is taken, one reduction per layer and no host sync,
and counted in the region of the layer's weight: that gradient is at the region's scale. Disarmed, the
hooks register nothing and the step costs no kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_geo.utils.layers import linear_like_layers


class ActivationGradAmax:
    """Max-accumulates, per region, the amax of the output gradients of the linear-like layers of ``root``.

    Args:
        root: The model.
        region_of: Maps the qualified name of a layer's weight to its region index (0: the global region).
    """

    def __init__(self, root: nn.Module, region_of: Callable[[str], int]) -> None:
        self.region_of = region_of
        self.armed = True  # measure the next forwards' layer output gradients
        self._amax: list[tuple[int, torch.Tensor]] = []  # (region, scaled amax) per layer output gradient
        self.layer_names: list[str] = []
        self._handles: list[RemovableHandle] = []
        for name, module, weight_name in linear_like_layers(root):
            self.layer_names.append(name)
            self._handles.append(module.register_forward_hook(self._make_hook(weight_name)))

    def _make_hook(self, weight_name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._on_forward(module, weight_name, output)

        return hook

    def _on_forward(self, module: nn.Module, weight_name: str, output: Any) -> None:
        if not (
            self.armed
            and module.training
            and torch.is_grad_enabled()
            and isinstance(output, torch.Tensor)
            and output.requires_grad
            and torch._C._current_graph_task_id() == -1  # not a forward re-run by activation checkpointing
        ):
            return
        def on_grad(grad: torch.Tensor) -> None:
            region = self.region_of(weight_name)  # looked up now: the first step finds the regions after its forward
            self._amax.append((region, torch.linalg.vector_norm(grad.detach(), math.inf, dtype=torch.float32)))

        output.register_hook(on_grad)

    def take(self) -> tuple[list[int], torch.Tensor | None]:
        """The region of each measured layer output gradient since the last call and their scaled amaxes
        (float32, one per gradient; ``None`` if nothing was measured), then reset."""
        if not self._amax:
            return [], None
        regions = [r for r, _ in self._amax]
        values = torch.stack([a for _, a in self._amax])
        self._amax.clear()
        return regions, values

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
