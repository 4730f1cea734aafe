"""Apply a [`Plan`][lightning_geo.strategies.Plan] to a LightningModule that did not parallelize itself.

Order matters and follows torchtitan: tensor parallel first (it rewrites Linear weights as DTensors on the
``tensor_parallel`` mesh), then activation checkpointing around each block, then FSDP2 ``fully_shard`` on
each block and on every top-level child that holds parameters. A 2-D ``(replicate, shard)`` mesh makes
``fully_shard`` run HSDP; a shard size of 1 makes it plain replication.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from lightning_geo.strategies.planner import Plan

if TYPE_CHECKING:
    from torch.distributed.fsdp import OffloadPolicy
    from torch.distributed.tensor.parallel import ParallelStyle

STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")
_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity, nn.LeakyReLU, nn.Mish)


def find_blocks(module: nn.Module) -> tuple[str, list[nn.Module]]:
    """The repeated blocks of ``module``: the ``nn.ModuleList`` / ``nn.Sequential`` of at least two children
    of one class holding the most parameters, as ``(qualified name, blocks)``; ``("", [])`` if there is none.
    """
    best_name, best, best_params = "", [], 0
    for name, child in module.named_modules():
        if not isinstance(child, (nn.ModuleList, nn.Sequential)) or len(child) < 2:
            continue
        members = list(child)
        if len({type(m) for m in members}) != 1 or not any(True for _ in members[0].parameters()):
            continue
        params = sum(p.numel() for p in child.parameters())
        if params > best_params:
            best_name, best, best_params = name, members, params
    return best_name, best


def linear_pair_plan(module: nn.Module) -> dict[str, ParallelStyle]:
    """A tensor-parallel plan for the standard MLP pairs it can recognise, keyed by qualified name.

    Inside any ``nn.Sequential``, ``Linear(a, b)`` followed (after elementwise layers only) by
    ``Linear(b, a)`` becomes column-wise then row-wise parallel: each rank holds ``b / T`` hidden units and
    one all-reduce joins the outputs. Attention projections are not recognised (they need head-aware
    splitting); pass ``tensor_parallel_plan=`` for those.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan: dict[str, ParallelStyle] = {}
    for name, seq in module.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        k = 0
        while k < len(children):
            first_name, first = children[k]
            if isinstance(first, nn.Linear):
                j = k + 1
                while j < len(children) and isinstance(children[j][1], _ELEMENTWISE):
                    j += 1
                if j < len(children) and isinstance(children[j][1], nn.Linear):
                    second_name, second = children[j]
                    if first.out_features == second.in_features and first.in_features == second.out_features:
                        prefix = f"{name}." if name else ""
                        plan[prefix + first_name] = ColwiseParallel()
                        plan[prefix + second_name] = RowwiseParallel()
                        k = j + 1
                        continue
            k += 1
    return plan


def apply_tensor_parallel(module: nn.Module, mesh: DeviceMesh, plan: Mapping[str, ParallelStyle] | None) -> int:
    """Apply ``plan`` (qualified name -> ``ParallelStyle``; default ``linear_pair_plan``) on ``mesh``.

    Returns the number of modules parallelized. Raises ``ValueError`` when there is nothing to parallelize
    or a hidden size does not divide by the tensor-parallel size.
    """
    from torch.distributed.tensor.parallel import parallelize_module

    plan = dict(plan) if plan is not None else linear_pair_plan(module)
    if not plan:
        raise ValueError(
            "GeoHybridStrategy: the plan asks for tensor parallel but the model offers no tensor-parallel plan "
            "and no Linear -> activation -> Linear pair was recognised; pass tensor_parallel_plan={...} or "
            "force a plan without tensor parallel (plan='fsdp' / mesh=(R, S, 1))"
        )
    size = mesh.size()
    modules = dict(module.named_modules())
    for name in plan:
        if name not in modules:
            raise ValueError(f"GeoHybridStrategy: tensor_parallel_plan names {name!r}, which the model does not have")
        target = modules[name]
        if isinstance(target, nn.Linear) and target.out_features % size and target.in_features % size:
            raise ValueError(
                f"GeoHybridStrategy: {name!r} is Linear({target.in_features}, {target.out_features}); "
                f"neither size divides by the tensor-parallel size {size}"
            )
    parallelize_module(module, mesh, plan)
    return len(plan)


def apply_activation_checkpointing(blocks_owner: nn.Module, blocks: list[nn.Module]) -> None:
    """Wrap every block in ``torch.utils.checkpoint`` (non-reentrant), in place in its container."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for index, block in enumerate(blocks):
        wrapped = checkpoint_wrapper(block)
        if isinstance(blocks_owner, (nn.ModuleList, nn.Sequential)):
            blocks_owner[index] = wrapped
        blocks[index] = wrapped


def offload_policy(cpu_offload: bool) -> OffloadPolicy:
    """FSDP2's ``CPUOffloadPolicy`` when ``cpu_offload``, else its no-offload ``OffloadPolicy``. Host memory is pinned
    only with CUDA: pinning needs an accelerator (on a CPU the copies are plain, and move nothing)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

    return CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()


def apply_data_parallel(module: nn.Module, mesh: DeviceMesh, blocks: list[nn.Module],
                        cpu_offload: bool = False) -> list[str]:
    """``fully_shard`` each block, then every top-level child with parameters, then the module itself if it
    holds parameters directly (its step methods then gather them, see ``register_fsdp_forward_method``).
    With ``cpu_offload`` every unit keeps its shards in CPU memory (FSDP2's ``CPUOffloadPolicy``; the optimizer
    then steps on the CPU).

    Returns the qualified names of the top-level units sharded (for the log).
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    policy = offload_policy(cpu_offload)
    for block in blocks:
        fully_shard(block, mesh=mesh, offload_policy=policy)
    units = []
    for name, child in module.named_children():
        if any(True for _ in child.parameters()):
            fully_shard(child, mesh=mesh, offload_policy=policy)
            units.append(name)
    if any(True for _ in module.parameters(recurse=False)):
        fully_shard(module, mesh=mesh, offload_policy=policy)
        for method in STEP_METHODS:
            if callable(getattr(module, method, None)):
                register_fsdp_forward_method(module, method)
        units.append("<root>")
    return units


def parallelize(module: nn.Module, mesh: DeviceMesh, plan: Plan,
                tensor_parallel_plan: Mapping[str, ParallelStyle] | None = None) -> dict[str, object]:
    """Apply ``plan`` to ``module`` on ``mesh`` (dims ``data_parallel_replicate``, ``data_parallel_shard``,
    ``tensor_parallel``). Returns what was done, for the log. A world of one is left untouched.
    """
    done: dict[str, object] = {"blocks": 0, "tensor_parallel_modules": 0, "activation_checkpointing": False,
                               "units": []}
    if plan.world_size == 1:
        return done
    blocks_name, blocks = find_blocks(module)
    done["blocks"] = len(blocks)
    done["blocks_name"] = blocks_name
    if plan.tensor > 1:
        done["tensor_parallel_modules"] = apply_tensor_parallel(module, mesh["tensor_parallel"], tensor_parallel_plan)
    if plan.activation_checkpointing and blocks:
        apply_activation_checkpointing(module.get_submodule(blocks_name), blocks)
        done["activation_checkpointing"] = True
    if plan.replicate * plan.shard > 1:
        dp_mesh = mesh["data_parallel_replicate", "data_parallel_shard"]
        done["units"] = apply_data_parallel(module, dp_mesh, blocks, cpu_offload=plan.cpu_offload)
        done["cpu_offload"] = plan.cpu_offload
    return done


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(number of parameters, bytes per parameter)`` of ``module`` (meta tensors count too)."""
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    nbytes = max((p.element_size() for p in params), default=torch.finfo(torch.float32).bits // 8)
    return total, nbytes
