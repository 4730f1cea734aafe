"""What kind of layer a module is, judged by what it computes rather than by its exact class.

Models people train do not all use ``nn.Linear``: Hugging Face GPT-2 projects with
``transformers.pytorch_utils.Conv1D`` (a transposed linear layer), quantized layers subclass
``nn.Linear``, and LoRA adapters wrap a linear ``base_layer``. GEO's probes watch all of them.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn
from torch.nn.modules.conv import _ConvNd


def _is_hf_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D: y = x @ weight + bias with a 2-D (in, out) weight; matched by name so
    # that transformers stays an optional dependency.
    weight = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and isinstance(weight, nn.Parameter) and weight.dim() == 2


def is_linear_like(module: nn.Module) -> bool:
    """Whether ``module`` is a linear or convolution layer: ``nn.Linear`` and its subclasses (quantized and
    bitsandbytes layers among them), ``nn.Conv1d/2d/3d``, Hugging Face's ``Conv1D``, or an adapter (LoRA)
    whose ``base_layer`` is one of those."""
    if isinstance(module, (nn.Linear, _ConvNd)) or _is_hf_conv1d(module):
        return True
    base = getattr(module, "base_layer", None)
    return isinstance(base, nn.Module) and is_linear_like(base)


def linear_like_layers(root: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """``(qualified name, module, qualified name of its weight)`` of every linear-like layer in ``root``.

    An adapter is yielded in place of the ``base_layer`` it wraps (its output is the layer's output), so no
    output is counted twice.
    """
    wrapped: set[int] = set()
    for name, module in root.named_modules():
        if id(module) in wrapped or not is_linear_like(module):
            continue
        base = getattr(module, "base_layer", None)
        if isinstance(base, nn.Module) and is_linear_like(base):
            wrapped.add(id(base))
            yield name, module, f"{name}.base_layer.weight" if name else "base_layer.weight"
        else:
            yield name, module, f"{name}.weight" if name else "weight"
