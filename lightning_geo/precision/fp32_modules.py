"""Non-uniform precision: find modules whose fp16 forward overflows and run them in float32.

No loss scale can fix a *forward* overflow (an activation above 65504, as in T5's feed-forward
layers): GradScaler then halves its scale on every step until training dies. Here a probe watches
module outputs on chosen steps; a module whose output is non-finite or beyond the fp16 range while its
inputs are finite is where the overflow starts, and it is promoted: its forward then runs with
autocast disabled and its floating inputs cast to float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn
from torch.utils.hooks import RemovableHandle


def _to_float32(value: Any) -> Any:
    """``value`` with every floating tensor below float64 cast to float32, in any (nested) collection."""

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float64 else tensor

    return apply_to_collection(value, torch.Tensor, cast)


def _forward_in_fp32(original: Callable[..., Any], device_type: str, *args: Any, **kwargs: Any) -> Any:
    with torch.autocast(device_type, enabled=False):
        return original(*_to_float32(args), **_to_float32(kwargs))


def promote_to_fp32(module: nn.Module, device_type: str) -> None:
    """Make ``module`` run in float32 under autocast (idempotent).

    Args:
        module: The module to promote; its parameters are left as they are (float32 under AMP).
        device_type: The autocast device type to disable (``"cuda"``, ``"cpu"``, ...).
    """
    if is_promoted(module):
        return
    # A functools.partial of module-level functions keeps the module picklable and deep-copyable.
    module.forward = functools.partial(_forward_in_fp32, module.forward, device_type)


def is_promoted(module: nn.Module) -> bool:
    """Whether [`promote_to_fp32`][lightning_geo.precision.promote_to_fp32] has been applied to ``module``."""
    forward = module.__dict__.get("forward")
    return isinstance(forward, functools.partial) and forward.func is _forward_in_fp32


def _floating_tensors(value: Any) -> list[torch.Tensor]:
    """The non-empty floating tensors in ``value``, in any (nested) collection."""
    found: list[torch.Tensor] = []
    apply_to_collection(value, torch.Tensor, lambda t: found.append(t) if t.is_floating_point() and t.numel() else None)
    return found


def _amax(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    if not tensors:
        return None
    # A NaN becomes +inf, so that comparisons see it (NaN > x is False).
    amaxes = torch.stack([t.detach().abs().amax().float() for t in tensors])
    return amaxes.nan_to_num(nan=math.inf, posinf=math.inf).amax()


class ForwardOverflowProbe:
    """Forward hooks that, when armed, flag modules whose output leaves the fp16 range.

    A module is flagged if its output is non-finite while its floating inputs are finite: the overflow
    starts there (an fp16 result beyond 65504 is inf; a float32 value beyond it, such as a promoted
    module's output, is flagged where an fp16 operation downstream turns it into inf). Of a flagged
    module and its flagged descendants only the deepest are reported: the parent only inherits it.
    Arming costs two reductions per module and forward; a disarmed probe has no hooks.

    Args:
        root: The module to watch: every submodule of it (not ``root`` itself).
    """

    def __init__(self, root: nn.Module) -> None:
        self._modules = [(name, module) for name, module in root.named_modules() if name]
        self._names = [name for name, _ in self._modules]
        self._flags: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []

    @property
    def armed(self) -> bool:
        """Whether the hooks are in place; they are registered when armed and removed when disarmed, so a
        disarmed probe costs nothing."""
        return bool(self._handles)

    @armed.setter
    def armed(self, value: bool) -> None:
        if value and not self._handles:
            self._handles = [
                module.register_forward_hook(self._make_hook(name), with_kwargs=True) for name, module in self._modules
            ]
        elif not value:
            self.remove()

    @property
    def names(self) -> list[str]:
        """Qualified names of the watched modules, in the order of
        [`take_flags`][lightning_geo.precision.ForwardOverflowProbe.take_flags]."""
        return list(self._names)

    def _make_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if is_promoted(module):
                return
            out_amax = _amax(_floating_tensors(output))
            if out_amax is None:
                return
            in_amax = _amax(_floating_tensors(args) + _floating_tensors(kwargs))
            in_amax = torch.zeros_like(out_amax) if in_amax is None else in_amax.to(out_amax.device)
            # Non-finite from finite inputs: the overflow starts here. (An fp16 result beyond 65504 is inf; a
            # float32 one beyond it is harmless until an fp16 operation downstream turns it into inf, and that
            # operation's module is the one flagged.)
            flag = ~torch.isfinite(out_amax) & torch.isfinite(in_amax)
            previous = self._flags.get(name)
            self._flags[name] = flag if previous is None else previous | flag

        return hook

    def take_flags(self) -> torch.Tensor | None:
        """One float per watched module (1.0: flagged) since the last call, or ``None`` if nothing ran armed."""
        if not self._flags:
            return None
        device = next(iter(self._flags.values())).device
        values = [self._flags.get(name, torch.zeros((), dtype=torch.bool, device=device)) for name in self._names]
        self._flags.clear()
        return torch.stack(values).float()

    def culprits(self, flags: torch.Tensor) -> list[str]:
        """The deepest flagged modules: flagged names none of whose descendants is flagged."""
        flagged = [name for name, flag in zip(self._names, flags.tolist(), strict=True) if flag > 0]
        return [name for name in flagged if not any(other.startswith(name + ".") for other in flagged)]

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
