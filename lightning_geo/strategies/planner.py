"""The parallel planner: every ``(replicate, shard, tensor)`` mesh, its memory and its communication time.

Pure functions, no processes. [`plan_parallelism`][lightning_geo.strategies.plan_parallelism] enumerates the meshes
whose product is the world size, keeps those that fit in GPU memory, estimates each one's communication time per
optimizer step with the alpha-beta model (Thakur, Rabenseifner & Gropp 2005) and picks the cheapest:

- ring all-reduce of ``n`` bytes over ``p`` ranks: ``2(p-1)/p * n/B + 2(p-1) * alpha``
- ring reduce-scatter and all-gather: ``(p-1)/p * n/B + (p-1) * alpha`` each

where ``B`` is the bottleneck bandwidth of the best ring through the group (``ring_bandwidth``)
and ``alpha`` its worst hop latency. Per step, with ``M`` bytes of gradients:

- replicate (DDP): all-reduce ``M`` over the replicate group, in 25 MB buckets;
- shard (FSDP2, reshard after forward): all-gather in forward, all-gather in backward, reduce-scatter of
  the gradients: ``3 (S-1)/S * M/B``, one collective per block and direction;
- replicate x shard (HSDP): the shard group's traffic, plus an all-reduce of each ``M/S`` shard across
  the replicate group;
- tensor parallel of size ``T`` (inside a node): an all-reduce of ``ModelSize.tp_comm_bytes`` per step,
  and every data-parallel volume divided by ``T``.

The model does not know the step's compute time, so it cannot credit overlap: the figure is the
communication a step would expose if none of it overlapped. It ranks plans; it does not predict step time.
Ranks are laid out row-major over ``(replicate, shard, tensor)``, so the innermost, most talkative
dimension gets consecutive ranks, and each node's GPUs are numbered by ``device_order`` so
that consecutive ranks sit on the fastest links.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lightning_geo.strategies.bandwidth import GB, Bandwidths
from lightning_geo.strategies.rings import Device, device_order, ring_bandwidth
from lightning_geo.strategies.topology import ClusterTopology, LinkKind
from lightning_geo.utils.table import format_table

DDP_BUCKET_BYTES = 25 * 2**20
"""PyTorch DDP's default gradient bucket (``bucket_cap_mb=25``): one all-reduce per bucket."""

ACTIVATION_CHECKPOINT_FACTOR = 0.1
"""Share of activation memory kept with activation checkpointing of every block (block inputs only)."""

ASSUMED_GPU_MEMORY_BYTES = 8 * GB
"""Memory every GPU is taken to have when the topology does not say (a saved ``nvidia-smi topo -m``): a plan
that needs more than this (after ``memory_fraction``) is refused until the memory is given."""


@dataclass(frozen=True)
class ModelSize:
    """What the planner needs to know about the model, per parameter and per GPU.

    Args:
        parameters: number of parameters (``7e9`` is fine).
        weight_bytes: bytes per parameter of the weights kept by the optimizer; 4 (fp32 master weights).
        grad_bytes: bytes per parameter of the gradients, also the bytes per element communicated; 4.
        optimizer_bytes: bytes per parameter of optimizer state; 8 (Adam's two fp32 moments).
        activation_bytes: activation memory of one GPU's micro-batch without checkpointing, in bytes; 0 when
            unknown (then only the model state counts toward memory and tensor parallel is not planned).
        num_blocks: number of repeated blocks (transformer layers), the units FSDP gathers one at a time;
            ``None`` = ``round(parameters ** (1/3) / 50)``, at least 1, which gives the layer counts of the
            GPT family (125M: 10, 1.3B: 22, 7B: 38, 70B: 82).
        tp_comm_bytes: bytes all-reduced inside a tensor-parallel group per step (forward and backward);
            ``None`` = ``activation_bytes / 4`` (a Megatron-style layer all-reduces its ``b*s*h`` hidden
            state four times while storing about ``34*b*s*h`` bytes of activations, Korthikanti et al. 2022).
    """

    parameters: float
    weight_bytes: float = 4.0
    grad_bytes: float = 4.0
    optimizer_bytes: float = 8.0
    activation_bytes: float = 0.0
    num_blocks: int | None = None
    tp_comm_bytes: float | None = None

    def __post_init__(self) -> None:
        if not self.parameters >= 0:
            raise ValueError(f"ModelSize: parameters must be >= 0, got {self.parameters!r}")
        for name in ("weight_bytes", "grad_bytes", "optimizer_bytes", "activation_bytes"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"ModelSize: {name} must be >= 0, got {getattr(self, name)!r}")
        if self.num_blocks is None:
            object.__setattr__(self, "num_blocks", max(1, round(self.parameters ** (1 / 3) / 50)))
        elif int(self.num_blocks) != self.num_blocks or self.num_blocks < 1:
            raise ValueError(f"ModelSize: num_blocks must be an integer >= 1 or None, got {self.num_blocks!r}")
        if self.tp_comm_bytes is not None and not self.tp_comm_bytes >= 0:
            raise ValueError(f"ModelSize: tp_comm_bytes must be >= 0 or None, got {self.tp_comm_bytes!r}")

    @property
    def state_bytes(self) -> float:
        """Bytes of weights, gradients and optimizer state of the whole model."""
        return self.parameters * (self.weight_bytes + self.grad_bytes + self.optimizer_bytes)

    @property
    def gradient_bytes(self) -> float:
        """Bytes of one full set of gradients (what a step communicates)."""
        return self.parameters * self.grad_bytes

    @property
    def tensor_parallel_bytes(self) -> float:
        """Bytes a tensor-parallel group all-reduces per step (``tp_comm_bytes`` or its default)."""
        return self.activation_bytes / 4 if self.tp_comm_bytes is None else self.tp_comm_bytes


@dataclass(frozen=True)
class Plan:
    """One way to lay out the world: a ``(replicate, shard, tensor)`` mesh and what it costs.

    Args:
        replicate: size of the replicate dimension (copies of the model state).
        shard: size of the shard dimension (FSDP2 shards the state over it).
        tensor: size of the tensor-parallel dimension (1 = none).
        device_order: per node, the local CUDA indices in local-rank order.
        activation_checkpointing: whether blocks recompute their activations in backward.
        pipeline: number of pipeline stages (1 = none); the stages are the outermost mesh dimension, so a plan
            uses ``pipeline x replicate x shard x tensor`` ranks.
        cpu_offload: whether FSDP2 keeps the sharded parameters, gradients and optimizer state in CPU memory
            (``CPUOffloadPolicy``).
        memory_bytes: estimated peak memory per GPU (model state, gathered block, activations).
        comm_seconds: estimated communication time per optimizer step, nothing overlapped.
        breakdown: seconds per dimension: ``{"tensor": .., "shard": .., "replicate": ..}``.
        bandwidths_gbps: bottleneck GB/s of each dimension's groups (absent for a size-1 dimension).
    """

    replicate: int
    shard: int
    tensor: int
    device_order: tuple[int, ...] = ()
    activation_checkpointing: bool = False
    pipeline: int = 1
    cpu_offload: bool = False
    memory_bytes: float = 0.0
    comm_seconds: float = 0.0
    breakdown: dict[str, float] = field(default_factory=dict, compare=False)
    bandwidths_gbps: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def mesh_shape(self) -> tuple[int, int, int]:
        """``(replicate, shard, tensor)``."""
        return self.replicate, self.shard, self.tensor

    @property
    def world_size(self) -> int:
        """Number of ranks the plan uses."""
        return self.pipeline * self.replicate * self.shard * self.tensor

    @property
    def name(self) -> str:
        """A short name: ``single device``, ``DDP``, ``FSDP``, ``HSDP 2x4``, ``TP2 + FSDP``..."""
        r, s, t = self.mesh_shape
        if self.world_size == 1:
            return "single device"
        if s == 1 and r > 1:
            data = "DDP"
        elif r == 1 and s > 1:
            data = "FSDP"
        elif r > 1 and s > 1:
            data = f"HSDP {r}x{s}"
        else:
            data = ""
        tensor = f"TP{t}" if t > 1 else ""
        pipeline = f"PP{self.pipeline}" if self.pipeline > 1 else ""
        return " + ".join(part for part in (pipeline, tensor, data) if part)


@dataclass(frozen=True)
class Candidate:
    """A plan the planner considered, whether it fits and, for the ones not chosen, why they lost."""

    plan: Plan
    fits: bool
    reason: str


@dataclass(frozen=True)
class PlanReport:
    """The chosen plan, every candidate ranked best first, and what the planner could not know.

    Args:
        chosen: the plan to run.
        candidates: every plan considered, best first (the chosen one first).
        warnings: missing information (unknown GPU memory, a topology that hides its links).
        gpu_memory_bytes: memory per GPU the fit was checked against (after ``memory_fraction``), or None.
    """

    chosen: Plan
    candidates: tuple[Candidate, ...]
    warnings: tuple[str, ...] = ()
    gpu_memory_bytes: float | None = None

    def table(self) -> str:
        """A text table of every candidate: mesh, memory per GPU, estimated communication and verdict."""
        rows = []
        for rank, c in enumerate(self.candidates, start=1):
            p = c.plan
            rows.append([
                rank,
                p.name + (" +AC" if p.activation_checkpointing else ""),
                f"{p.replicate}x{p.shard}x{p.tensor}",
                f"{p.memory_bytes / GB:.2f}",
                _format_seconds(p.comm_seconds),
                c.reason,
            ])
        return format_table(["#", "plan", "RxSxT", "GB/GPU", "comm/step", "verdict"], rows)


def _format_seconds(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def mesh_shapes(world_size: int, gpus_per_node: int, allow_tensor_parallel: bool,
                max_tensor_parallel: int = 8) -> list[tuple[int, int, int]]:
    """Every ``(replicate, shard, tensor)`` with product ``world_size``; tensor parallel stays inside a node."""
    shapes = []
    for t in range(1, world_size + 1):
        if world_size % t or (t > 1 and (not allow_tensor_parallel or t > max_tensor_parallel
                                         or gpus_per_node % t)):
            continue
        data = world_size // t
        for s in range(1, data + 1):
            if data % s == 0:
                shapes.append((data // s, s, t))
    return shapes


def mesh_groups(shape: tuple[int, int, int], dim: int) -> list[list[int]]:
    """The rank groups along ``dim`` (0 replicate, 1 shard, 2 tensor) of a row-major mesh."""
    r, s, t = shape
    ranks = [[[i * s * t + j * t + k for k in range(t)] for j in range(s)] for i in range(r)]
    if dim == 2:
        return [ranks[i][j] for i in range(r) for j in range(s)]
    if dim == 1:
        return [[ranks[i][j][k] for j in range(s)] for i in range(r) for k in range(t)]
    return [[ranks[i][j][k] for i in range(r)] for j in range(s) for k in range(t)]


def rank_devices(topology: ClusterTopology, bandwidths: Bandwidths,
                 order: tuple[int, ...] | None = None) -> list[Device]:
    """``(node, local index)`` of every global rank, with each node's GPUs in ``device_order``."""
    order = order if order is not None else device_order(topology.nodes[0], bandwidths)
    per_node = topology.gpus_per_node
    return [(rank // per_node, order[rank % per_node]) for rank in range(topology.world_size)]


def _all_reduce(nbytes: float, p: int, bw: float, alpha: float, messages: int) -> float:
    return 0.0 if p == 1 else 2 * (p - 1) / p * nbytes / bw + 2 * (p - 1) * alpha * messages


def _gather_or_scatter(nbytes: float, p: int, bw: float, alpha: float, messages: int) -> float:
    return 0.0 if p == 1 else (p - 1) / p * nbytes / bw + (p - 1) * alpha * messages


def estimate_plan(topology: ClusterTopology, model: ModelSize, shape: tuple[int, int, int], *,
                  bandwidths: Bandwidths | None = None, activation_checkpointing: bool = False,
                  order: tuple[int, ...] | None = None) -> Plan:
    """Memory per GPU and communication time per step of one mesh ``shape`` (no fit check)."""
    bandwidths = bandwidths or Bandwidths()
    r, s, t = shape
    if r * s * t != topology.world_size:
        raise ValueError(f"mesh {r}x{s}x{t} has {r * s * t} ranks but the world size is {topology.world_size}")
    order = order if order is not None else device_order(topology.nodes[0], bandwidths)
    devices = rank_devices(topology, bandwidths, order)

    speeds: dict[str, tuple[float, float]] = {}
    for dim, name in enumerate(("replicate", "shard", "tensor")):
        if shape[dim] > 1:
            rings = [ring_bandwidth(topology, [devices[rank] for rank in group], bandwidths)
                     for group in mesh_groups(shape, dim)]
            speeds[name] = (min(b for b, _ in rings), max(a for _, a in rings))

    grads = model.gradient_bytes / t
    blocks = model.num_blocks
    assert blocks is not None  # ModelSize.__post_init__ sets it
    breakdown = {"tensor": 0.0, "shard": 0.0, "replicate": 0.0}
    if t > 1:
        bw, alpha = speeds["tensor"]
        breakdown["tensor"] = _all_reduce(model.tensor_parallel_bytes, t, bw, alpha, 4 * blocks)
    if s > 1:
        bw, alpha = speeds["shard"]
        breakdown["shard"] = 3 * _gather_or_scatter(grads, s, bw, alpha, blocks)
    if r > 1:
        bw, alpha = speeds["replicate"]
        messages = blocks if s > 1 else max(1, math.ceil(grads / DDP_BUCKET_BYTES))
        breakdown["replicate"] = _all_reduce(grads / s, r, bw, alpha, messages)

    state = model.state_bytes / (s * t)
    gathered_block = 2 * model.parameters * model.weight_bytes / blocks / t if s > 1 else 0.0  # with prefetch
    activations = model.activation_bytes / t
    if activation_checkpointing:
        activations *= ACTIVATION_CHECKPOINT_FACTOR
    return Plan(
        replicate=r, shard=s, tensor=t, device_order=tuple(order),
        activation_checkpointing=activation_checkpointing,
        memory_bytes=state + gathered_block + activations,
        comm_seconds=sum(breakdown.values()),
        breakdown=breakdown,
        bandwidths_gbps={name: b / GB for name, (b, _) in speeds.items()},
    )


def _usable_memory(topology: ClusterTopology, gpu_memory_bytes: float | None,
                   memory_fraction: float) -> float | None:
    if gpu_memory_bytes is None:
        known = [g.memory_bytes for node in topology.nodes for g in node.gpus if g.memory_bytes]
        if not known or topology.is_cpu:
            return None
        gpu_memory_bytes = min(known)
    return gpu_memory_bytes * memory_fraction


def plan_parallelism(
    topology: ClusterTopology,
    model: ModelSize,
    *,
    bandwidths: Bandwidths | dict[str, float] | None = None,
    gpu_memory_bytes: float | None = None,
    memory_fraction: float = 0.9,
    allow_tensor_parallel: bool = False,
    max_tensor_parallel: int = 8,
    activation_checkpointing: bool | str = "auto",
    shapes: list[tuple[int, int, int]] | None = None,
    prefer_simpler_within: float = 0.1,
    memory_argument: str = "gpu_memory_bytes=80e9",
) -> PlanReport:
    """Choose the mesh with the least estimated communication among those that fit in GPU memory.

    Args:
        topology: the cluster ([`ClusterTopology`][lightning_geo.strategies.ClusterTopology]).
        model: the model's size ([`ModelSize`][lightning_geo.strategies.ModelSize]).
        bandwidths: link speeds ([`Bandwidths`][lightning_geo.strategies.Bandwidths] or a dict of overrides); defaults
            documented there.
        gpu_memory_bytes: memory per GPU in bytes; default: the smallest the topology reports. When unknown
            (a text topology) every GPU is assumed to have ``ASSUMED_GPU_MEMORY_BYTES``: a plan within it
            is chosen with a warning, a bigger one is refused. A CPU topology (gloo processes) rules nothing
            out for memory.
        memory_fraction: share of GPU memory the plan may use (the rest is CUDA context, allocator slack,
            temporary buffers); 0.9.
        allow_tensor_parallel: consider tensor-parallel meshes (the model must offer a plan); False.
        max_tensor_parallel: largest tensor-parallel size considered; 8.
        activation_checkpointing: ``"auto"`` adds a checkpointed variant of a mesh that only fits with it,
            ranked after every plan that fits without (recomputation costs about a third more compute,
            which the estimate does not include); ``True`` checkpoints every plan; ``False`` never.
        shapes: restrict the search to these meshes (used for forced plans); default every mesh.
        prefer_simpler_within: a simpler plan (DDP, then FSDP, then HSDP, then tensor parallel) is chosen
            over the cheapest one when its estimate is within this fraction of it; 0.1. The estimate is a
            model, and a simpler plan has fewer collectives to go wrong and overlaps better.
        memory_argument: how messages ask for the GPU memory when it is unknown: the caller's own argument
            or flag with an example value (``"gpu_memory_gb=80"``, ``"--gpu-memory-gb 80"``).

    Returns:
        A [`PlanReport`][lightning_geo.strategies.PlanReport]. When no mesh fits, the one needing the least memory is
            chosen and the report
        says so in ``warnings`` (the strategy turns that into an error).

    Raises:
        ValueError: for a bad argument, or when the GPU memory is unknown and the chosen plan needs more than
            ``ASSUMED_GPU_MEMORY_BYTES`` per GPU (naming ``memory_argument``).
    """
    bandwidths = Bandwidths.from_overrides(bandwidths)
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
    if activation_checkpointing not in (True, False, "auto"):
        raise ValueError(f"activation_checkpointing must be True, False or 'auto', got {activation_checkpointing!r}")
    warnings = list(dict.fromkeys(w for node in topology.nodes for w in node.warnings))
    hidden = topology.gpus_per_node >= 3 and not topology.is_cpu and all(  # 2 GPUs may really both sit on PHB
        node.link(i, j).kind is LinkKind.PHB
        for node in topology.nodes for i in range(node.num_gpus) for j in range(node.num_gpus) if i != j
    )
    if hidden and not any("every GPU pair reports PHB" in w for w in warnings):
        warnings.append("every GPU pair reports PHB: the topology is hidden (a VM?); all links are assumed equal, "
                        "so the plan favours the least traffic")
    capacity = _usable_memory(topology, gpu_memory_bytes, memory_fraction)
    if capacity is None and not topology.is_cpu:
        warnings.append(f"GPU memory is unknown: no plan is ruled out for memory, and one needing more than the "
                        f"{ASSUMED_GPU_MEMORY_BYTES / GB:g} GB every GPU is assumed to have is refused (pass "
                        f"{memory_argument} for 80 GB GPUs)")
    if allow_tensor_parallel and shapes is None and model.tensor_parallel_bytes == 0:
        warnings.append("tensor parallel needs an activation estimate (ModelSize.activation_bytes or "
                        "tp_comm_bytes); it is not considered")
        allow_tensor_parallel = False

    order = device_order(topology.nodes[0], bandwidths)
    candidate_shapes = shapes if shapes is not None else mesh_shapes(
        topology.world_size, topology.gpus_per_node, allow_tensor_parallel, max_tensor_parallel)
    scored: list[tuple[tuple, Plan, bool]] = []
    for shape in candidate_shapes:
        variants = [activation_checkpointing] if isinstance(activation_checkpointing, bool) else [False, True]
        for ac in variants:
            plan = estimate_plan(topology, model, shape, bandwidths=bandwidths,
                                 activation_checkpointing=ac, order=order)
            fits = capacity is None or plan.memory_bytes <= capacity
            if activation_checkpointing == "auto" and ac and (not fits or model.activation_bytes == 0):
                continue  # a checkpointed variant only when it is what makes the mesh fit
            if activation_checkpointing == "auto" and not ac and not fits and model.activation_bytes > 0:
                continue  # the checkpointed variant stands for it
            # fitting plans first; among them, ones without recomputation, then less communication, then
            # less tensor parallel and less sharding (simpler, fewer collectives)
            key = (not fits, ac and activation_checkpointing == "auto", plan.comm_seconds, shape[2], shape[1])
            scored.append((key, plan, fits))
    if not scored:
        raise ValueError("no mesh to plan: the world size and the allowed shapes leave no candidate")
    if prefer_simpler_within < 0:
        raise ValueError(f"prefer_simpler_within must be >= 0, got {prefer_simpler_within!r}")
    scored.sort(key=lambda item: item[0])
    leader = scored[0][0][:2]
    peers = [item for item in scored if item[0][:2] == leader
             and item[1].comm_seconds <= scored[0][1].comm_seconds * (1 + prefer_simpler_within)]
    simplest = min(peers, key=lambda item: (_complexity(item[1]), item[0]))
    scored.remove(simplest)
    scored.insert(0, simplest)
    if not scored[0][2]:
        assert capacity is not None  # only a known capacity rules a plan out
        scored.sort(key=lambda item: item[1].memory_bytes)
        warnings.append(
            f"no plan fits in {capacity / GB:.1f} GB per GPU; the smallest needs "
            f"{scored[0][1].memory_bytes / GB:.1f} GB"
        )
    chosen = scored[0][1]
    if capacity is None and not topology.is_cpu and chosen.memory_bytes > ASSUMED_GPU_MEMORY_BYTES * memory_fraction:
        raise ValueError(
            f"GPU memory is unknown (topology from {topology.nodes[0].source}) and the cheapest plan, {chosen.name}, "
            f"needs {chosen.memory_bytes / GB:.1f} GB per GPU, more than the {ASSUMED_GPU_MEMORY_BYTES / GB:g} GB "
            f"every GPU is assumed to have: pass the memory of one GPU ({memory_argument} for 80 GB GPUs)"
        )
    candidates = tuple(
        Candidate(plan, fits, _verdict(plan, fits, chosen, capacity, index == 0))
        for index, (_, plan, fits) in enumerate(scored)
    )
    return PlanReport(chosen, candidates, tuple(warnings), capacity)


def _complexity(plan: Plan) -> int:
    return 4 * (plan.tensor > 1) + (plan.shard > 1) + (plan.shard > 1 and plan.replicate > 1)


def _verdict(plan: Plan, fits: bool, chosen: Plan, capacity: float | None, is_chosen: bool) -> str:
    if is_chosen:
        return "chosen" if fits else "chosen, but does not fit"
    if not fits:
        assert capacity is not None  # only a known capacity rules a plan out
        need, have = plan.memory_bytes / GB, capacity / GB
        digits = 1 if f"{need:.1f}" != f"{have:.1f}" else 3  # "15.5 GB > 15.5 GB" says nothing
        return f"does not fit: {need:.{digits}f} GB > {have:.{digits}f} GB"
    if plan.activation_checkpointing and not chosen.activation_checkpointing:
        return "needs activation checkpointing (recompute)"
    if plan.comm_seconds < chosen.comm_seconds:
        return f"{plan.comm_seconds / chosen.comm_seconds:.2f}x the communication, but more complex"
    if chosen.comm_seconds > 0:
        return f"{plan.comm_seconds / chosen.comm_seconds:.2f}x the communication"
    return "more communication" if plan.comm_seconds > 0 else "same cost, more sharding"
