"""Sampled underflow measurement: the share of fp16 activation-gradient elements that are zero.

The gradient arriving at a layer's output in an fp16 backward is computed by the layers after it;
an element whose true value is below fp16's smallest subnormal (2**-24 divided by the loss scale in
effect) comes out as exactly zero: it was flushed. Zeros that are exact in any precision count too:
after a ReLU, and in causal attention the query of the first position, whose gradient is zero (so each
fused ``qkv`` projection reads at least ``1 / (3 * seq_len)``). Such a floor is the same in every arm,
so compare arms rather than read the absolute values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_geo.utils.layers import linear_like_layers


class UnderflowProbe:
    """Measures, on armed forwards, the zero share of each linear-like layer's fp16 output gradient.

    Args:
        root: The model; every linear-like layer inside it is watched (``nn.Linear`` and subclasses,
            ``nn.Conv*``, Hugging Face ``Conv1D``, LoRA wrappers: ``lightning_geo.utils.layers.is_linear_like``).
        dtype: Only output gradients of this dtype are counted. Default ``torch.float16``.

    Example:
        ```python
        probe = UnderflowProbe(model)
        probe.armed = True          # the next forward/backward is measured
        loss.backward()
        fractions = probe.take()    # {"blocks.0.attn.qkv": 0.012, ...}
        ```
    """

    def __init__(self, root: nn.Module, dtype: torch.dtype = torch.float16) -> None:
        self.dtype = dtype
        self._layers = [(name, module) for name, module, _ in linear_like_layers(root)]
        self._counts: dict[str, tuple[torch.Tensor, int]] = {}  # name -> (zero elements, elements)
        self._handles: list[RemovableHandle] = []

    @property
    def armed(self) -> bool:
        """Whether forwards are measured; the hooks exist only while armed, so a disarmed probe costs nothing."""
        return bool(self._handles)

    @armed.setter
    def armed(self, value: bool) -> None:
        if value and not self._handles:
            self._handles = [module.register_forward_hook(self._make_hook(name)) for name, module in self._layers]
        elif not value:
            self.remove()

    def _make_hook(self, name: str) -> Any:
        def on_grad(grad: torch.Tensor) -> None:
            if grad.dtype != self.dtype:
                return
            zeros, total = self._counts.get(name, (0, 0))
            self._counts[name] = (zeros + (grad == 0).sum(), total + grad.numel())  # zeros stay on the device

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(on_grad)

        return hook

    @property
    def layer_names(self) -> list[str]:
        """Qualified names of the watched layers."""
        return [name for name, _ in self._layers]

    def take(self) -> dict[str, float]:
        """Zero share per layer measured since the last call (empty if nothing was measured), then reset."""
        if not self._counts:
            return {}
        zeros = torch.stack([z for z, _ in self._counts.values()]).tolist()  # one host sync
        totals = [total for _, total in self._counts.values()]
        result = {name: z / t for name, z, t in zip(self._counts, zeros, totals, strict=True) if t > 0}
        self._counts.clear()
        return result

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def summarize_underflow(fractions: dict[str, float]) -> tuple[float, float, str]:
    """``(mean over layers, worst layer's share, worst layer's name)``; NaNs and ``""`` if empty."""
    if not fractions:
        return float("nan"), float("nan"), ""
    worst = max(fractions, key=fractions.__getitem__)
    return sum(fractions.values()) / len(fractions), fractions[worst], worst
