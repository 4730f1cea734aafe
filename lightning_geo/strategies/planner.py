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

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lightning_geo.strategies import step_time
from lightning_geo.strategies.bandwidth import GB, Bandwidths
from lightning_geo.strategies.rings import device_order, ring_bandwidth
from lightning_geo.strategies.topology import ClusterTopology, LinkKind
from lightning_geo.utils.table import format_table

if TYPE_CHECKING:
    from lightning_geo.strategies.transformer_shape import TransformerShape

DDP_BUCKET_BYTES = 25 * 2**20
"""PyTorch DDP's default gradient bucket (``bucket_cap_mb=25``): one all-reduce per bucket."""

ACTIVATION_CHECKPOINT_FACTOR = 0.1
"""Share of activation memory kept with activation checkpointing of every block (block inputs only)."""

ASSUMED_HOST_MEMORY_BYTES = 512 * GB
"""Host memory per node taken for CPU offload (a common 8-GPU server has 512 GB to 2 TB): an offloaded plan whose
shards need more on one node does not fit (``host_memory_bytes`` sets it)."""

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
        tp_comm_bytes: bytes all-reduced inside a tensor-parallel group per micro-batch (forward and backward;
            one micro-batch per step when ``global_batch`` is unknown);
            ``None`` = ``activation_bytes / 4`` (a Megatron-style layer all-reduces its ``b*s*h`` hidden
            state four times while storing about ``34*b*s*h`` bytes of activations, Korthikanti et al. 2022).
        shape: the model's [`TransformerShape`][lightning_geo.strategies.transformer_shape.TransformerShape]
            (layers, widths, sequence length, micro-batch); ``None`` = unknown. With it, memory comes from the
            memory model (``lightning_geo.strategies.memory.estimate_memory``) and activations, tensor-parallel
            and pipeline traffic from the shapes, overriding ``activation_bytes`` and ``tp_comm_bytes``.
        global_batch: sequences per optimizer step over the whole world (the shape's micro-batch times the
            data-parallel ranks times the micro-batches of a pipeline or of accumulation); ``None`` = unknown. With
            ``shape`` it gives the work of a step, so that plans are ranked by estimated step time (compute, the
            pipeline bubble, recomputation, exposed communication) instead of communication alone, and pipeline
            plans can be weighed.
        compute_bytes: bytes per element of activations and of what tensor and pipeline parallel send; 2
            (bf16/fp16 autocast; 4 for fp32). Used with ``shape``.
        optimizer: the optimizer's name for the memory model (``"adamw"``, ``"geo_adamw"``, ``"geo_muon"``,
            ``"sgd"``); used only with ``shape``, where it replaces ``optimizer_bytes``.
    """

    parameters: float
    weight_bytes: float = 4.0
    grad_bytes: float = 4.0
    optimizer_bytes: float = 8.0
    activation_bytes: float = 0.0
    num_blocks: int | None = None
    tp_comm_bytes: float | None = None
    shape: TransformerShape | None = None
    global_batch: int | None = None
    compute_bytes: float = 2.0
    optimizer: str = "adamw"

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
        if self.global_batch is not None and (int(self.global_batch) != self.global_batch or self.global_batch < 1):
            raise ValueError(f"ModelSize: global_batch must be an integer >= 1 or None, got {self.global_batch!r}")

    @classmethod
    def from_shape(cls, shape: TransformerShape, *, global_batch: int | None = None, optimizer: str = "adamw",
                   param_bytes: float = 4.0, grad_bytes: float = 4.0, compute_bytes: float = 2.0) -> ModelSize:
        """A model size read off ``shape``: its parameter count and layers, ``optimizer``'s state, weights of
        ``param_bytes``, gradients of ``grad_bytes`` and activations of ``compute_bytes`` per element (4, 4, 2:
        fp32 master weights and gradients, bf16 autocast)."""
        from lightning_geo.strategies.memory import optimizer_state_bytes

        share = shape.layers * shape.matrix_parameters / shape.parameters
        return cls(shape.parameters, weight_bytes=param_bytes, grad_bytes=grad_bytes,
                   optimizer_bytes=optimizer_state_bytes(optimizer, matrix_share=share), num_blocks=shape.layers,
                   shape=shape, global_batch=global_batch, compute_bytes=compute_bytes, optimizer=optimizer)

    @property
    def tokens_per_step(self) -> float | None:
        """Tokens of one optimizer step (``global_batch x seq_len``), or None when the shape or batch is unknown."""
        if self.shape is None or self.global_batch is None:
            return None
        return float(self.global_batch * self.shape.seq_len)

    @property
    def boundary_bytes(self) -> float:
        """Bytes of the hidden state one micro-batch sends from a pipeline stage to the next (forward; the backward
        sends as much back)."""
        if self.shape is not None:
            sh = self.shape
            return sh.micro_batch * sh.seq_len * sh.hidden * self.compute_bytes
        assert self.num_blocks is not None
        return self.activation_bytes / (17 * self.num_blocks)  # ~34 s b h bytes per layer in 16 bits

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
        """Bytes a tensor-parallel group all-reduces per micro-batch (``tp_comm_bytes`` or its default): with a
        shape, ``4 b s h`` per layer in the compute dtype (two all-reduces forward, two backward)."""
        if self.tp_comm_bytes is not None:
            return self.tp_comm_bytes
        if self.shape is not None:
            sh = self.shape
            return 4 * sh.layers * sh.micro_batch * sh.seq_len * sh.hidden * self.compute_bytes
        return self.activation_bytes / 4


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
        host_bytes: host memory per node the plan's CPU offload keeps (0 without offload).
        comm_seconds: estimated communication time per optimizer step, nothing overlapped.
        breakdown: seconds per dimension: ``{"tensor": .., "shard": .., "replicate": ..}`` (and ``"pipeline"``).
        bandwidths_gbps: bottleneck GB/s of each dimension's groups (absent for a size-1 dimension).
        step: the estimated step time by cause ([`StepTime`][lightning_geo.strategies.step_time.StepTime]), when
            the work of a step is known (``ModelSize.shape`` and ``global_batch``); else None.
    """

    replicate: int
    shard: int
    tensor: int
    device_order: tuple[int, ...] = ()
    activation_checkpointing: bool = False
    pipeline: int = 1
    cpu_offload: bool = False
    memory_bytes: float = 0.0
    host_bytes: float = 0.0
    comm_seconds: float = 0.0
    breakdown: dict[str, float] = field(default_factory=dict, compare=False)
    bandwidths_gbps: dict[str, float] = field(default_factory=dict, compare=False)
    step: step_time.StepTime | None = field(default=None, compare=False)

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
        """A text table of every candidate: mesh, memory per GPU, estimated communication (and step time and
        throughput when the work of a step is known) and verdict."""
        timed = any(c.plan.step is not None for c in self.candidates)
        rows = []
        for rank, c in enumerate(self.candidates, start=1):
            p = c.plan
            row: list[object] = [
                rank,
                p.name + (" +AC" if p.activation_checkpointing else "") + (" +offload" if p.cpu_offload else ""),
                (f"{p.pipeline}x" if p.pipeline > 1 else "") + f"{p.replicate}x{p.shard}x{p.tensor}",
                f"{p.memory_bytes / GB:.2f}",
                _format_seconds(p.comm_seconds),
            ]
            if timed:
                row += [_format_seconds(p.step.seconds) if p.step else "-",
                        f"{p.step.tokens_per_second_per_gpu:,.0f}" if p.step else "-"]
            rows.append([*row, c.reason])
        headers = ["#", "plan", "(P)xRxSxT", "GB/GPU", "comm/step"] + (["step", "tok/s/GPU"] if timed else [])
        return format_table([*headers, "verdict"], rows)


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


def mesh_groups(shape: tuple[int, ...], dim: int) -> list[list[int]]:
    """The rank groups along ``dim`` of a row-major mesh of any number of dimensions (for ``(replicate, shard,
    tensor)``: 0 replicate, 1 shard, 2 tensor; the last dimension is the innermost, on consecutive ranks)."""
    if not 0 <= dim < len(shape):
        raise ValueError(f"dim must be in [0, {len(shape)}), got {dim}")
    stride = math.prod(shape[dim + 1:])
    return [[base + j * stride for j in range(shape[dim])] for base in _group_starts(shape, dim)]


def _group_starts(shape: tuple[int, ...], dim: int, modulus: int | None = None) -> Iterator[int]:
    """The first rank of every group along ``dim`` of a row-major mesh, in order; with ``modulus``, only enough of
    them to cover every ``first rank % modulus`` there is (an index past ``modulus`` along a dimension repeats the
    remainders of one below it)."""
    strides = [math.prod(shape[k + 1:]) for k in range(len(shape))]
    others = [k for k in range(len(shape)) if k != dim]
    sizes = (shape[k] if modulus is None else min(shape[k], modulus) for k in others)
    for index in itertools.product(*(range(n) for n in sizes)):
        yield sum(i * strides[k] for i, k in zip(index, others, strict=True))


def _all_reduce(nbytes: float, p: int, bw: float, alpha: float, messages: int) -> float:
    return 0.0 if p == 1 else 2 * (p - 1) / p * nbytes / bw + 2 * (p - 1) * alpha * messages


def _gather_or_scatter(nbytes: float, p: int, bw: float, alpha: float, messages: int) -> float:
    return 0.0 if p == 1 else (p - 1) / p * nbytes / bw + (p - 1) * alpha * messages


def estimate_plan(topology: ClusterTopology, model: ModelSize, shape: tuple[int, int, int], *,
                  bandwidths: Bandwidths | None = None, activation_checkpointing: bool = False,
                  cpu_offload: bool = False, pipeline: int = 1, order: tuple[int, ...] | None = None,
                  efficiency: float = step_time.DEFAULT_EFFICIENCY) -> Plan:
    """Memory per GPU, communication per step and (when the work of a step is known) step time of one mesh:
    ``pipeline`` stages of a ``(replicate, shard, tensor)`` mesh each (no fit check).

    The stages are the outermost dimension: stage ``k`` holds ranks ``k W/p .. (k+1) W/p - 1``, so the
    data-parallel and tensor-parallel groups stay on the nearest ranks and the pipeline's sends cross the slowest
    links (nodes), as in torchtitan and Megatron-LM.
    """
    bandwidths = bandwidths or Bandwidths()
    r, s, t = shape
    p = pipeline
    if p < 1 or r * s * t * p != topology.world_size:
        raise ValueError(f"mesh {p}x{r}x{s}x{t} (pipeline x replicate x shard x tensor) has {r * s * t * p} ranks "
                         f"but the world size is {topology.world_size}")
    order = tuple(order) if order is not None else device_order(topology.nodes[0], bandwidths)
    full = (p, r, s, t)

    speeds: dict[str, tuple[float, float]] = {}
    first = topology.nodes[0]
    alike = all((node.links is first.links or node.links == first.links)
                and (node.gpus is first.gpus or node.gpus == first.gpus) for node in topology.nodes)
    per_node = topology.gpus_per_node
    for dim, name in enumerate(("pipeline", "replicate", "shard", "tensor")):
        if full[dim] == 1:
            continue
        stride = math.prod(full[dim + 1:])
        if alike:  # a group's links depend only on where it starts inside a node: one group per start
            starts: dict[int, int] = {}
            for base in _group_starts(full, dim, per_node):
                starts.setdefault(base % per_node, base)
            groups = [[base + j * stride for j in range(full[dim])] for base in starts.values()]
        else:
            groups = mesh_groups(full, dim)
        rings = [_group_ring(topology, group, order, bandwidths, cached=alike) for group in groups]
        speeds[name] = (min(b for b, _ in rings), max(a for _, a in rings))

    blocks = model.num_blocks
    assert blocks is not None  # ModelSize.__post_init__ sets it
    stage_blocks = max(1, math.ceil(blocks / p))
    micro = model.shape.micro_batch if model.shape is not None else 1
    global_batch = model.global_batch
    microbatches = max(1, global_batch // (r * s * micro)) if global_batch else 1  # per replica and step
    grads = model.gradient_bytes / (t * p)
    breakdown = {"pipeline": 0.0, "tensor": 0.0, "shard": 0.0, "replicate": 0.0}
    if p > 1:
        bw, alpha = speeds["pipeline"]
        breakdown["pipeline"] = 2 * microbatches * (model.boundary_bytes / t / bw + alpha)
    if t > 1:
        bw, alpha = speeds["tensor"]
        breakdown["tensor"] = microbatches * _all_reduce(model.tensor_parallel_bytes / p, t, bw, alpha,
                                                         4 * stage_blocks)
    if s > 1:
        bw, alpha = speeds["shard"]
        breakdown["shard"] = 3 * _gather_or_scatter(grads, s, bw, alpha, stage_blocks)
    if r > 1:
        bw, alpha = speeds["replicate"]
        messages = stage_blocks if s > 1 else max(1, math.ceil(grads / DDP_BUCKET_BYTES))
        breakdown["replicate"] = _all_reduce(grads / s, r, bw, alpha, messages)

    memory, host_per_rank = _plan_memory(model, r, s, t, p, activation_checkpointing, cpu_offload,
                                         foreach=not topology.is_cpu)
    step = None
    tokens = model.tokens_per_step
    if tokens is not None and model.shape is not None:
        sh = model.shape
        matrix_params = model.parameters - (0 if sh.tied_embeddings else sh.vocab * sh.hidden)
        flops = tokens * step_time.flops_per_token(matrix_params, sh.layers, sh.hidden, sh.seq_len,
                                                   recompute=activation_checkpointing)
        gpu_name = next((g.name for node in topology.nodes for g in node.gpus if g.name), None)
        per_rank_state = model.parameters * (model.weight_bytes + model.grad_bytes) / (s * t * p)
        offload = (per_rank_state + model.state_bytes / (s * t * p)) / (step_time.OFFLOAD_GBPS * GB) \
            if cpu_offload else 0.0
        step = step_time.estimate_step_time(
            flops=flops, gpus=topology.world_size, peak=step_time.peak_tflops(gpu_name) * 1e12,
            efficiency=efficiency, tokens=tokens, critical_comm=breakdown["pipeline"] + breakdown["tensor"],
            overlapped_comm=breakdown["shard"] + breakdown["replicate"],
            bubble_share=step_time.pipeline_bubble(p, microbatches), offload_seconds=offload)
    return Plan(
        replicate=r, shard=s, tensor=t, device_order=tuple(order),
        activation_checkpointing=activation_checkpointing, pipeline=p, cpu_offload=cpu_offload,
        memory_bytes=memory,
        host_bytes=host_per_rank * topology.gpus_per_node,
        comm_seconds=sum(breakdown.values()),
        breakdown={k: v for k, v in breakdown.items() if k != "pipeline" or p > 1},
        bandwidths_gbps={name: b / GB for name, (b, _) in speeds.items()},
        step=step,
    )


_ring_cache: dict[tuple, tuple[float, float]] = {}
"""Ring bandwidth and latency of a group of a cluster of alike nodes, by the node's links, where the group starts
in a node, its stride and size (the planner asks for the same groups across meshes and variants)."""


def _group_ring(topology: ClusterTopology, group: list[int], order: tuple[int, ...], bandwidths: Bandwidths,
                cached: bool) -> tuple[float, float]:
    """``ring_bandwidth`` of the ranks ``group`` (rank ``k`` on node ``k // per_node``, GPU ``order[k % per_node]``);
    with ``cached`` (every node alike) looked up by the group's pattern first."""
    per_node = topology.gpus_per_node
    key = (topology.nodes[0].links, per_node, group[0] % per_node, group[1] - group[0], len(group), order, bandwidths)
    if cached and key in _ring_cache:
        return _ring_cache[key]
    ring = ring_bandwidth(topology, [(rank // per_node, order[rank % per_node]) for rank in group], bandwidths)
    if cached:
        if len(_ring_cache) > 50_000:
            _ring_cache.clear()
        _ring_cache[key] = ring
    return ring


def _plan_memory(model: ModelSize, r: int, s: int, t: int, p: int, activation_checkpointing: bool,
                 cpu_offload: bool, foreach: bool) -> tuple[float, float]:
    """Peak bytes per GPU and host bytes per rank: the memory model's with a shape, else state / (s t p), a gathered
    block and the activations (1F1B keeps ``p`` micro-batches of ``1/p`` of the layers on the first stage: as many
    as one micro-batch of the whole model); offload moves the state to the host. ``foreach``: the optimizer's
    multi-tensor step (torch's default on CUDA) holds a parameter-sized temporary."""
    if model.shape is not None:
        from lightning_geo.strategies.memory import estimate_memory

        estimate = estimate_memory(
            model.shape, replicate=r, shard=s, tensor=t, pipeline=p, activation_checkpointing=activation_checkpointing,
            cpu_offload=cpu_offload, optimizer=model.optimizer, param_bytes=model.weight_bytes,
            grad_bytes=model.grad_bytes, compute_bytes=model.compute_bytes, foreach=foreach,
        )
        return estimate.total, estimate.cpu_bytes
    blocks = model.num_blocks
    assert blocks is not None
    host = model.state_bytes / (s * t * p) if cpu_offload else 0.0
    state = 0.0 if cpu_offload else model.state_bytes / (s * t * p)
    gathered_block = 2 * model.parameters * model.weight_bytes / blocks / t if s > 1 or cpu_offload else 0.0
    activations = model.activation_bytes / t
    if activation_checkpointing:
        activations *= ACTIVATION_CHECKPOINT_FACTOR
    return state + gathered_block + activations, host


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
    max_pipeline: int = 1,
    pipelines: list[int] | None = None,
    cpu_offload: bool | str = "auto",
    efficiency: float = step_time.DEFAULT_EFFICIENCY,
    host_memory_bytes: float = ASSUMED_HOST_MEMORY_BYTES,
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
        activation_checkpointing: ``"auto"`` turns checkpointing on for a mesh only when the mesh does not fit
            without it; ``True`` checkpoints every plan; ``False`` never.
        cpu_offload: ``"auto"`` turns FSDP2's CPU offload on for a data-parallel mesh only when it does not fit
            otherwise; ``True`` offloads every data-parallel plan; ``False`` never. Where a mesh could fit either
            with checkpointing or with offload, the one with the smaller estimated step time is taken (with no
            step estimate: checkpointing, then offload, then both).
        shapes: restrict the search to these meshes (used for forced plans); default every mesh.
        prefer_simpler_within: a simpler plan (DDP, then FSDP, then HSDP, then tensor parallel) is chosen
            over the cheapest one when its estimate is within this fraction of it; 0.1. The estimate is a
            model, and a simpler plan has fewer collectives to go wrong and overlaps better.
        memory_argument: how messages ask for the GPU memory when it is unknown: the caller's own argument
            or flag with an example value (``"gpu_memory_gb=80"``, ``"--gpu-memory-gb 80"``).
        max_pipeline: most pipeline stages considered; 1 (none). Pipeline plans are weighed only when the work
            of a step is known (``model.shape`` and ``model.global_batch``): their cost is the bubble.
        pipelines: restrict the search to these numbers of stages (used for forced plans); default 1 up to
            ``max_pipeline``.
        efficiency: share of the GPUs' peak FLOP/s a step's compute reaches, for the step-time estimate
            ([`step_time`][lightning_geo.strategies.step_time]); 0.45.
        host_memory_bytes: host memory per node CPU offload may fill (after ``memory_fraction``);
            ``ASSUMED_HOST_MEMORY_BYTES``.

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

    if cpu_offload not in (True, False, "auto"):
        raise ValueError(f"cpu_offload must be True, False or 'auto', got {cpu_offload!r}")
    if int(max_pipeline) != max_pipeline or max_pipeline < 1:
        raise ValueError(f"max_pipeline must be an integer >= 1, got {max_pipeline!r}")
    if not host_memory_bytes > 0:
        raise ValueError(f"host_memory_bytes must be > 0, got {host_memory_bytes!r}")
    host_capacity = host_memory_bytes * memory_fraction
    timed = model.tokens_per_step is not None
    if timed and not any(g.name for node in topology.nodes for g in node.gpus) and not topology.is_cpu:
        warnings.append(f"the GPU model is unknown: step times assume {step_time.DEFAULT_PEAK_TFLOPS:g} TFLOP/s "
                        "per GPU (an A100's bf16 peak); they rank plans, their seconds are rough")
    if pipelines is None:
        pipelines = [1]
        if max_pipeline > 1 and not timed:
            warnings.append("pipeline plans need the work of a step (ModelSize.shape and global_batch) to weigh "
                            "their bubble; they are not considered")
        elif max_pipeline > 1:
            assert model.num_blocks is not None
            pipelines += [p for p in range(2, min(max_pipeline, model.num_blocks) + 1) if topology.world_size % p == 0]

    order = device_order(topology.nodes[0], bandwidths)
    scored: list[tuple[tuple, Plan, bool]] = []
    for p in pipelines:
        stage_cluster = topology.world_size // p
        candidate_shapes = shapes if shapes is not None else mesh_shapes(
            stage_cluster, min(topology.gpus_per_node, stage_cluster) if p > 1 else topology.gpus_per_node,
            allow_tensor_parallel, max_tensor_parallel)
        for shape in candidate_shapes:
            if math.prod(shape) * p != topology.world_size:
                continue
            plan, fits = _fitting_variant(topology, model, shape, p, bandwidths, order, capacity,
                                          activation_checkpointing, cpu_offload, efficiency, host_capacity)
            helped = (activation_checkpointing == "auto" and plan.activation_checkpointing) or \
                (cpu_offload == "auto" and plan.cpu_offload)
            cost = plan.step.seconds if plan.step is not None else plan.comm_seconds
            # fitting plans first; among them (without a step estimate) ones that need no recomputation or
            # offload, then the cheapest, then fewer stages, less tensor parallel and less sharding (simpler)
            key = (not fits, helped and not timed, cost, p, shape[2], shape[1])
            scored.append((key, plan, fits))
    if not scored:
        raise ValueError("no mesh to plan: the world size and the allowed shapes leave no candidate")
    if prefer_simpler_within < 0:
        raise ValueError(f"prefer_simpler_within must be >= 0, got {prefer_simpler_within!r}")
    scored.sort(key=lambda item: item[0])
    leader = scored[0][0][:2]
    peers = [item for item in scored if item[0][:2] == leader
             and item[0][2] <= scored[0][0][2] * (1 + prefer_simpler_within)]
    simplest = min(peers, key=lambda item: (_complexity(item[1]), item[0]))
    scored.remove(simplest)
    scored.insert(0, simplest)
    if not scored[0][2]:
        scored.sort(key=lambda item: (item[1].host_bytes > host_capacity, item[1].memory_bytes))
        smallest = scored[0][1]
        warnings.append(
            f"no plan fits in {capacity / GB:.1f} GB per GPU; the smallest needs {smallest.memory_bytes / GB:.1f} GB"
            if capacity is not None and smallest.host_bytes <= host_capacity else
            f"no plan fits: the offloaded state needs {smallest.host_bytes / GB:.0f} GB of host memory per node, "
            f"more than {host_capacity / GB:.0f} GB"
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


def _fitting_variant(topology: ClusterTopology, model: ModelSize, shape: tuple[int, int, int], pipeline: int,
                     bandwidths: Bandwidths, order: tuple[int, ...], capacity: float | None,
                     activation_checkpointing: bool | str, cpu_offload: bool | str,
                     efficiency: float, host_capacity: float) -> tuple[Plan, bool]:
    """The variant of one mesh to rank: as asked, or under ``"auto"`` plain if it fits, else the fitting variant
    (checkpointing, offload, both) with the least estimated step time, else the one needing the least memory."""
    data_parallel = shape[0] * shape[1] > 1
    acs = [activation_checkpointing] if isinstance(activation_checkpointing, bool) else [False, True]
    offloads = [cpu_offload and data_parallel] if isinstance(cpu_offload, bool) else (
        [False, True] if data_parallel else [False])
    variants = []
    for ac in acs:
        if ac and model.activation_bytes == 0 and model.shape is None and activation_checkpointing == "auto":
            continue  # nothing known to save
        for off in dict.fromkeys(offloads):
            plan = estimate_plan(topology, model, shape, bandwidths=bandwidths, activation_checkpointing=ac,
                                 cpu_offload=off, pipeline=pipeline, order=order, efficiency=efficiency)
            fits = (capacity is None or plan.memory_bytes <= capacity) and plan.host_bytes <= host_capacity
            helps = (ac and activation_checkpointing == "auto") + 2 * (off and cpu_offload == "auto")
            cost = plan.step.seconds if plan.step is not None else helps
            variants.append((not fits, helps > 0, cost, helps, plan))
    variants.sort(key=lambda v: v[:4])
    best = variants[0]
    if best[0]:  # nothing fits: the least GPU memory of the variants that need no more host memory than there is
        best = min(variants, key=lambda v: (v[4].host_bytes > host_capacity, v[4].memory_bytes))
    return best[4], not best[0]


def _complexity(plan: Plan) -> int:
    return (8 * (plan.pipeline > 1) + 4 * (plan.tensor > 1) + (plan.shard > 1)
            + (plan.shard > 1 and plan.replicate > 1))


def _verdict(plan: Plan, fits: bool, chosen: Plan, capacity: float | None, is_chosen: bool) -> str:
    if is_chosen:
        return "chosen" if fits else "chosen, but does not fit"
    if not fits and (capacity is None or plan.memory_bytes <= capacity):  # host memory ruled it out
        return f"does not fit: its offloaded state needs {plan.host_bytes / GB:.0f} GB of host memory per node"
    if not fits:
        assert capacity is not None  # only a known capacity rules a plan out
        need, have = plan.memory_bytes / GB, capacity / GB
        digits = 1 if f"{need:.1f}" != f"{have:.1f}" else 3  # "15.5 GB > 15.5 GB" says nothing
        return f"does not fit: {need:.{digits}f} GB > {have:.{digits}f} GB"
    if plan.step is not None and chosen.step is not None and chosen.step.seconds > 0:
        ratio = plan.step.seconds / chosen.step.seconds
        if ratio < 1:
            return f"{ratio:.2f}x the step time, but more complex"
        return f"{ratio:.2f}x the step time"
    if plan.cpu_offload and not chosen.cpu_offload:
        return "needs CPU offload"
    if plan.activation_checkpointing and not chosen.activation_checkpointing:
        return "needs activation checkpointing (recompute)"
    if plan.comm_seconds < chosen.comm_seconds:
        return f"{plan.comm_seconds / chosen.comm_seconds:.2f}x the communication, but more complex"
    if chosen.comm_seconds > 0:
        return f"{plan.comm_seconds / chosen.comm_seconds:.2f}x the communication"
    return "more communication" if plan.comm_seconds > 0 else "same cost, more sharding"
