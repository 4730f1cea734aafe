"""``GeoHybridStrategy`` (``strategy="geo_hybrid"``): detect the interconnect, plan the mesh, apply it.

A subclass of Lightning's ``ModelParallelStrategy`` (FSDP2 + DTensor on a DeviceMesh). In
``setup_environment`` every node detects its own topology, rank 0's view of the cluster is gathered, the
planner picks a ``(replicate, shard, tensor)`` mesh and the DeviceMesh is built with the GPUs numbered so
that the innermost dimension sits on the fastest links. In ``setup``, a LightningModule that does not
override ``configure_model`` is parallelized by the plan (``parallelize``); one that does gets the mesh
as ``self.device_mesh`` (dims ``data_parallel_replicate``, ``data_parallel_shard``, ``tensor_parallel``,
and the flattened ``data_parallel`` Lightning's own examples use) and parallelizes itself. A plan with pipeline
stages (``pipeline=N``) adds an outermost ``pipeline`` dim; the module is then split into stages and every step
runs through a pipeline schedule (``lightning_geo.strategies.pipeline``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.init import _materialize_distributed_module
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import ModelParallelStrategy, ParallelStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.tensor import DTensor

from lightning_geo.strategies.bandwidth import GB, Bandwidths
from lightning_geo.strategies.checkpoint import (
    LIGHTNING_METADATA,
    UnreadableCheckpointError,
    checkpoint_problem,
    unreadable_message,
)
from lightning_geo.strategies.checkpoint_swap import (
    fsync_file,
    linked_version,
    remove_checkpoint,
    swap_in,
    version_folder,
)
from lightning_geo.strategies.parallelize import count_parameters, find_blocks, parallelize
from lightning_geo.strategies.pipeline import (
    SCHEDULES,
    PipelineRunner,
    build_pipeline,
    clip_grad_norm_,
    load_stage_checkpoint,
    stage_optimizer_state,
)
from lightning_geo.strategies.planner import (
    ASSUMED_HOST_MEMORY_BYTES,
    ModelSize,
    Plan,
    PlanReport,
    mesh_shapes,
    plan_parallelism,
)
from lightning_geo.strategies.rings import device_order
from lightning_geo.strategies.topology import ClusterTopology, NodeTopology, cpu_node_topology
from lightning_geo.utils.dashboard import DashboardSection
from lightning_geo.utils.geo_logging import log_geo_scalars, log_geo_text

log = logging.getLogger(__name__)

PLAN_KINDS = ("auto", "ddp", "fsdp", "hsdp", "tensor_parallel")
MESH_DIM_NAMES = ("data_parallel_replicate", "data_parallel_shard", "tensor_parallel")
PIPELINE_DIM_NAME = "pipeline"
"""The outermost mesh dim of a plan with pipeline stages (the mesh is then 4-D; without stages it stays 3-D)."""


LEAVE_TIMEOUT = timedelta(seconds=10)
"""How long a rank leaving at interpreter exit waits for the others to leave too (a gloo group only)."""


def _leave_process_group() -> None:
    """At interpreter exit: on gloo, wait (at most ``LEAVE_TIMEOUT``) until every rank is leaving; then destroy
    the group. A gloo rank that shut its group down while a peer still held its connections aborted now and then
    after a finished run ("terminate called without an active exception")."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_backend() == "gloo":
        # a rank that died, or one still training, only costs the others the timeout
        with contextlib.suppress(RuntimeError):
            torch.distributed.monitored_barrier(timeout=LEAVE_TIMEOUT)
    torch.distributed.destroy_process_group()


class GeoHybridStrategy(ModelParallelStrategy):
    """Choose DDP, FSDP, HSDP or tensor parallel from the detected topology and a cost model, and apply it.

    ``import lightning_geo`` registers it as ``Trainer(strategy="geo_hybrid")``; pass an instance to set
    arguments. The plan is printed on rank 0 and logged to TensorBoard (``geo/strategy/*``); ``report``
    holds it after set-up.

    Data loading: with ``Trainer(use_distributed_sampler=True)`` (Lightning's default) and several
    data-parallel replicas, each loader gets a ``DistributedSampler`` over the replicas (the ranks of one
    tensor-parallel group, and every pipeline stage of one replica, read the same samples), shuffled for
    training as under DDP. With one replica (one device, or tensor parallel or pipeline stages only) no sampler
    is injected: the loaders keep your sampler and order, as in a plain single-device run.
    ``use_distributed_sampler=False`` leaves the sharding to you in both cases.

    Args:
        plan: what to choose among: ``"auto"`` (default: the cheapest plan that fits), ``"ddp"``, ``"fsdp"``,
            ``"hsdp"`` (the best replicate x shard split with both > 1) or ``"tensor_parallel"``.
        mesh: force the exact ``(replicate, shard, tensor)`` mesh; the product must be the world size.
        topology: ``None`` (detect: NVML, else ``nvidia-smi topo -m``, else CPU), a path to a saved
            ``nvidia-smi topo -m`` output, or a [`NodeTopology`][lightning_geo.strategies.NodeTopology] /
            [`ClusterTopology`][lightning_geo.strategies.ClusterTopology] (for simulation: a CPU run then plans as if on
            those GPUs). A node topology with more GPUs than the Trainer's ``devices`` is cut to the first ``devices``.
        model_size: a [`ModelSize`][lightning_geo.strategies.ModelSize], or a parameter count; default: counted from the
            module at set-up (weights and gradients in the parameters' dtype, Adam state of 8 bytes per parameter,
            activations unknown). Pass it when ``configure_model`` creates the layers.
        bandwidths: [`Bandwidths`][lightning_geo.strategies.Bandwidths] or a dict overriding its documented defaults
            (GB/s, us).
        gpu_memory_gb: memory per GPU in GB (1e9 bytes); default: what NVML reports; unknown for a text
            topology (then no plan is ruled out for memory, but one needing more than
            ``ASSUMED_GPU_MEMORY_BYTES`` per GPU is refused: pass it).
        memory_fraction: share of GPU memory a plan may use; 0.9.
        activation_checkpointing: ``"auto"`` (only when it is what makes a plan fit), ``True`` or ``False``.
        tensor_parallel_plan: ``{qualified module name: ParallelStyle}`` for tensor parallel; without it the
            strategy recognises ``Linear -> activation -> Linear`` pairs when a plan asks for tensor parallel.
            ``"auto"`` planning considers tensor parallel only when this is given.
        prefer_simpler_within: a simpler plan wins when its estimate is within this fraction of the
            cheapest; 0.1.
        cpu_offload: ``"auto"`` (only when it is what makes a data-parallel plan fit), ``True`` or ``False``: FSDP2
            keeps the sharded parameters, gradients and optimizer state in host memory (``CPUOffloadPolicy``; the
            optimizer steps on the CPU).
        host_memory_gb: host memory per node in GB that offloaded state may fill (after ``memory_fraction``); 512.
        pipeline: number of pipeline stages, the outermost mesh dim: the world is ``pipeline x replicate x shard x
            tensor`` ranks, and the planner chooses (or ``mesh`` forces) the mesh of each stage's ranks; 1 (none).
            The module must offer ``pipeline_parts()`` (see ``lightning_geo.strategies.pipeline``, which also says
            what runs differently: the strategy runs each step through the stages, and the module's step methods
            are not called). Not with ``configure_model``, a loss-scaling precision (``"16-mixed"``) or
            ``save_distributed_checkpoint=False``; no ``predict``.
        pipeline_schedule: ``"1f1b"`` (default), ``"gpipe"`` or ``"interleaved_1f1b"`` (two stages per rank).
        n_microbatches: micro-batches per batch under pipeline parallelism; must divide the batch of each
            data-parallel replica; default ``2 * pipeline``.
        save_distributed_checkpoint, process_group_backend, timeout: as for ``ModelParallelStrategy``.
    """

    strategy_name = "geo_hybrid"
    geo_dashboard_section: ClassVar[DashboardSection] = DashboardSection.for_part(
        "strategy",
        {
            "mesh: replicate x shard x tensor, world size": (
                r"^geo/strategy/(pipeline|replicate|shard|tensor|world_size)$",
            ),
            "estimated communication per step (ms)": (r"^geo/strategy/est_comm_ms$",),
            "estimated memory per device (GB)": (r"^geo/strategy/est_memory_gb$",),
            "activation checkpointing, CPU offload (0/1) and plans compared": (
                r"^geo/strategy/(activation_checkpointing|cpu_offload|candidates)$",
            ),
        },
    )
    """This part's section of the GEO dashboard (see ``lightning_geo.utils.dashboard``)."""

    def __init__(
        self,
        plan: str = "auto",
        *,
        mesh: tuple[int, int, int] | None = None,
        topology: str | Path | NodeTopology | ClusterTopology | None = None,
        model_size: ModelSize | float | None = None,
        bandwidths: Bandwidths | Mapping[str, float] | None = None,
        gpu_memory_gb: float | None = None,
        memory_fraction: float = 0.9,
        activation_checkpointing: bool | str = "auto",
        tensor_parallel_plan: Mapping[str, Any] | None = None,
        prefer_simpler_within: float = 0.1,
        cpu_offload: bool | str = "auto",
        host_memory_gb: float = ASSUMED_HOST_MEMORY_BYTES / GB,
        pipeline: int = 1,
        pipeline_schedule: str = "1f1b",
        n_microbatches: int | None = None,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        if plan not in PLAN_KINDS:
            raise ValueError(f"GeoHybridStrategy: plan must be one of {PLAN_KINDS}, got {plan!r}")
        if mesh is not None:
            if (not isinstance(mesh, (tuple, list)) or len(mesh) != 3
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in mesh)):
                raise ValueError(
                    f"GeoHybridStrategy: mesh must be three positive integers (replicate, shard, tensor), got {mesh!r}"
                )
            mesh = (mesh[0], mesh[1], mesh[2])
        if topology is not None and not isinstance(topology, (str, Path, NodeTopology, ClusterTopology)):
            raise TypeError(
                "GeoHybridStrategy: topology must be None, a path to `nvidia-smi topo -m` output, a NodeTopology "
                f"or a ClusterTopology, got {type(topology).__name__}"
            )
        if isinstance(topology, (str, Path)) and not Path(topology).is_file():
            raise FileNotFoundError(f"GeoHybridStrategy: topology file {str(topology)!r} does not exist")
        if model_size is not None and not isinstance(model_size, ModelSize) and (
            isinstance(model_size, bool) or not isinstance(model_size, (int, float)) or model_size <= 0
        ):
            raise ValueError(
                f"GeoHybridStrategy: model_size must be a ModelSize or a positive parameter count, got {model_size!r}"
            )
        if gpu_memory_gb is not None and not (isinstance(gpu_memory_gb, (int, float)) and gpu_memory_gb > 0):
            raise ValueError(f"GeoHybridStrategy: gpu_memory_gb must be a positive number of GB, got {gpu_memory_gb!r}")
        if not isinstance(memory_fraction, (int, float)) or not 0 < memory_fraction <= 1:
            raise ValueError(f"GeoHybridStrategy: memory_fraction must be in (0, 1], got {memory_fraction!r}")
        if activation_checkpointing not in (True, False, "auto"):
            raise ValueError(
                "GeoHybridStrategy: activation_checkpointing must be True, False or 'auto', "
                f"got {activation_checkpointing!r}"
            )
        if not isinstance(prefer_simpler_within, (int, float)) or prefer_simpler_within < 0:
            raise ValueError(f"GeoHybridStrategy: prefer_simpler_within must be >= 0, got {prefer_simpler_within!r}")
        if cpu_offload not in (True, False, "auto"):
            raise ValueError(f"GeoHybridStrategy: cpu_offload must be True, False or 'auto', got {cpu_offload!r}")
        if isinstance(host_memory_gb, bool) or not isinstance(host_memory_gb, (int, float)) or not host_memory_gb > 0:
            raise ValueError(f"GeoHybridStrategy: host_memory_gb must be a number of GB > 0, got {host_memory_gb!r}")
        self._cpu_offload = cpu_offload
        self._host_memory_gb = float(host_memory_gb)
        if isinstance(pipeline, bool) or not isinstance(pipeline, int) or pipeline < 1:
            raise ValueError(f"GeoHybridStrategy: pipeline must be a number of stages >= 1, got {pipeline!r}")
        if pipeline_schedule not in SCHEDULES:
            raise ValueError(
                f"GeoHybridStrategy: pipeline_schedule must be one of {SCHEDULES}, got {pipeline_schedule!r}"
            )
        if n_microbatches is not None and (
            isinstance(n_microbatches, bool) or not isinstance(n_microbatches, int) or n_microbatches < 1
        ):
            raise ValueError(
                f"GeoHybridStrategy: n_microbatches must be a positive integer or None, got {n_microbatches!r}"
            )
        if n_microbatches is not None and pipeline_schedule == "1f1b" and n_microbatches < pipeline:
            raise ValueError(
                f"GeoHybridStrategy: the 1F1B schedule needs n_microbatches >= pipeline stages, got "
                f"n_microbatches={n_microbatches} for pipeline={pipeline}"
            )
        self._plan_kind = plan
        self._forced_mesh = mesh
        self._topology_arg = topology
        self._model_size_arg = model_size
        self._bandwidths = Bandwidths.from_overrides(
            dict(bandwidths) if isinstance(bandwidths, Mapping) else bandwidths
        )
        self._gpu_memory_gb = gpu_memory_gb
        self._memory_fraction = float(memory_fraction)
        self._activation_checkpointing = activation_checkpointing
        if tensor_parallel_plan is not None and not isinstance(tensor_parallel_plan, Mapping):
            raise TypeError(
                f"GeoHybridStrategy: tensor_parallel_plan={tensor_parallel_plan!r} must be a mapping "
                "{qualified module name: ParallelStyle} (ColwiseParallel(), RowwiseParallel(), ...) or None"
            )
        self._tensor_parallel_plan = tensor_parallel_plan
        self._prefer_simpler_within = float(prefer_simpler_within)
        self._pipeline = pipeline
        self._pipeline_schedule = pipeline_schedule
        self._n_microbatches = n_microbatches
        self.pipeline_runner: PipelineRunner | None = None
        """This rank's pipeline stages and schedule (after set-up of a plan with pipeline stages)."""
        self.report: PlanReport | None = None
        self.cluster: ClusterTopology | None = None
        self.applied: dict[str, object] = {}
        self._given_devices: list[torch.device] | None = None
        self._data_parallel_mesh: Any = None

    def _configure_launcher(self) -> None:
        # One process has nothing to launch; without a launcher Lightning also accepts the strategy in a notebook
        # (it refuses any strategy whose launcher is not interactive-compatible, even for one device).
        if self.num_processes * self.num_nodes == 1:
            self._launcher = None
            return
        super()._configure_launcher()

    @property
    def plan(self) -> Plan:
        """The chosen plan (after set-up)."""
        if self.report is None:
            raise RuntimeError("GeoHybridStrategy: the plan is made in setup_environment(); it is not known yet")
        return self.report.chosen

    # ----------------------------------------------------------------- set-up: topology, plan, mesh

    def setup_environment(self) -> None:
        node = self._local_topology()
        order = device_order(node, self._bandwidths)
        assert self.parallel_devices is not None
        if self.parallel_devices[0].type == "cuda":
            # consecutive local ranks go to the GPUs joined by the fastest links (GPU0-GPU3 bridges...);
            # from the devices the Trainer gave, so that a second fit/validate does not reorder twice
            if self._given_devices is None:
                self._given_devices = list(self.parallel_devices)
            self.parallel_devices = [self._given_devices[i] for i in order]
        self._setup_distributed()
        self.cluster = self._gather_cluster(node)
        self.report = self._make_plan(self.cluster, self._model_size())
        self._device_mesh = self._build_mesh(self.report.chosen)
        assert self.lightning_module is not None
        self.lightning_module._device_mesh = self._device_mesh
        rank_zero_info(f"GeoHybridStrategy: {self._describe()}")

    def _setup_distributed(self) -> None:
        """Lightning's TCP rendezvous for several processes; an in-memory store for one.

        The DeviceMesh needs a process group even for one process. Lightning's rendezvous would write
        ``MASTER_ADDR``/``MASTER_PORT`` into ``os.environ`` (or reuse a port an earlier run left there) and its
        store would keep listening on that port until garbage-collected, so a DDP run started later from this
        process, or a ``python -m ... --devices 2`` it launches, inheriting the port, failed with EADDRINUSE.
        A world of one needs no network: it gets a ``HashStore`` and leaves the environment untouched.

        A group of several processes this strategy creates is destroyed at interpreter exit, whatever the
        backend (a one-process group is destroyed at teardown). Lightning does that for NCCL only, and a gloo
        group left to interpreter finalization can abort the process after a successful run ("terminate called
        without an active exception", pytorch/pytorch#190489).
        """
        if torch.distributed.is_initialized():
            super()._setup_distributed()
            return
        if self.num_processes * self.num_nodes > 1:
            super()._setup_distributed()
            atexit.unregister(_leave_process_group)  # once, however many fits this process runs
            atexit.register(_leave_process_group)
            return
        ParallelStrategy.setup_environment(self)  # what ModelParallelStrategy's own version does first
        reset_seed()
        self.set_world_ranks()
        self._process_group_backend = self._get_process_group_backend()
        torch.distributed.init_process_group(
            self._process_group_backend, store=torch.distributed.HashStore(), rank=0, world_size=1,
            timeout=self._timeout,
        )

    def _local_topology(self) -> NodeTopology:
        assert self.parallel_devices is not None
        devices = self._given_devices or self.parallel_devices
        n = len(devices)
        given = self._topology_arg
        if isinstance(given, ClusterTopology):
            if given.num_nodes != self.num_nodes:
                raise ValueError(
                    f"GeoHybridStrategy: the topology has {given.num_nodes} nodes but the Trainer runs num_nodes="
                    f"{self.num_nodes}"
                )
            node = given.nodes[self.node_rank]
        elif isinstance(given, NodeTopology):
            node = given
        elif given is not None:
            from lightning_geo.strategies.topology_smi import read_topology_file

            node = read_topology_file(given)
        elif self.parallel_devices[0].type == "cuda":
            from lightning_geo.strategies.topology_detect import detect_node_topology

            node = detect_node_topology()
            indices = [d.index for d in devices]
            if max(indices) >= node.num_gpus:
                raise RuntimeError(
                    f"GeoHybridStrategy: the Trainer uses cuda:{max(indices)} but the detected topology has "
                    f"{node.num_gpus} GPUs"
                )
            return node.subset(indices)
        else:
            return cpu_node_topology(n)
        if node.num_gpus < n:
            raise ValueError(
                f"GeoHybridStrategy: the topology has {node.num_gpus} devices per node but the Trainer runs {n} "
                "processes per node"
            )
        return node.subset(list(range(n))) if node.num_gpus > n else node

    def _gather_cluster(self, node: NodeTopology) -> ClusterTopology:
        if self.world_size == 1:
            return ClusterTopology((node,))
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, (self.node_rank, self.local_rank, node))
        nodes = {rank: topo for rank, local, topo in gathered if local == 0}
        return ClusterTopology(tuple(nodes[k] for k in sorted(nodes)))

    def _model_size(self) -> ModelSize:
        if isinstance(self._model_size_arg, ModelSize):
            return self._model_size_arg
        assert self.lightning_module is not None
        count, nbytes = count_parameters(self.lightning_module)
        if self._model_size_arg is not None:
            count = int(self._model_size_arg)
        elif count == 0:
            rank_zero_warn(
                "GeoHybridStrategy: the module has no parameters before configure_model(), so the plan assumes a "
                "model of size 0 (communication-free, any plan fits). Pass model_size=<parameter count>."
            )
        blocks = len(find_blocks(self.lightning_module)[1]) or None
        return ModelSize(count, weight_bytes=nbytes, grad_bytes=nbytes, num_blocks=blocks)

    def _candidate_shapes(self, cluster: ClusterTopology) -> list[tuple[int, int, int]] | None:
        """The ``(replicate, shard, tensor)`` meshes of each pipeline stage's ranks to plan among."""
        if cluster.world_size % self._pipeline:
            raise ValueError(
                f"GeoHybridStrategy: pipeline={self._pipeline} stages must divide the {cluster.world_size} ranks of "
                "the run"
            )
        world = cluster.world_size // self._pipeline
        if self._forced_mesh is not None:
            r, s, t = self._forced_mesh
            if r * s * t != world:
                stages = f" x pipeline={self._pipeline} = {r * s * t * self._pipeline}" if self._pipeline > 1 else ""
                raise ValueError(
                    f"GeoHybridStrategy: mesh={self._forced_mesh} has {r * s * t}{stages} ranks but the run has "
                    f"{cluster.world_size} (devices={cluster.gpus_per_node} x num_nodes={cluster.num_nodes})"
                )
            if t > 1 and cluster.gpus_per_node % t:
                raise ValueError(
                    f"GeoHybridStrategy: mesh={self._forced_mesh}: the tensor-parallel size {t} must divide the "
                    f"{cluster.gpus_per_node} devices per node (tensor parallel stays inside a node)"
                )
            return [self._forced_mesh]
        if self._plan_kind == "auto":
            return None
        every = mesh_shapes(world, cluster.gpus_per_node, allow_tensor_parallel=True)
        wanted = {
            "ddp": [(r, s, t) for r, s, t in every if s == 1 and t == 1],
            "fsdp": [(r, s, t) for r, s, t in every if r == 1 and t == 1],
            "hsdp": [(r, s, t) for r, s, t in every if r > 1 and s > 1 and t == 1],
            "tensor_parallel": [(r, s, t) for r, s, t in every if t > 1],
        }[self._plan_kind]
        if not wanted:
            raise ValueError(
                f"GeoHybridStrategy: plan={self._plan_kind!r} is impossible with {world} processes "
                f"({cluster.gpus_per_node} per node); "
                + ("HSDP needs a world size that splits into replicate > 1 and shard > 1"
                   if self._plan_kind == "hsdp" else "tensor parallel needs more than one device per node")
            )
        return wanted

    def _make_plan(self, cluster: ClusterTopology, model: ModelSize) -> PlanReport:
        shapes = self._candidate_shapes(cluster)
        report = plan_parallelism(
            cluster, model,
            bandwidths=self._bandwidths,
            gpu_memory_bytes=None if self._gpu_memory_gb is None else self._gpu_memory_gb * GB,
            memory_fraction=self._memory_fraction,
            allow_tensor_parallel=shapes is not None or self._tensor_parallel_plan is not None,
            activation_checkpointing=self._activation_checkpointing,
            shapes=shapes,
            prefer_simpler_within=self._prefer_simpler_within,
            memory_argument="gpu_memory_gb=80",
            pipelines=[self._pipeline] if self._pipeline > 1 else None,
            cpu_offload=self._cpu_offload,
            host_memory_bytes=self._host_memory_gb * GB,
        )
        if not report.candidates[0].fits:
            raise ValueError(
                f"GeoHybridStrategy: no {'forced ' if shapes else ''}plan fits in "
                f"{(report.gpu_memory_bytes or 0) / GB:.1f} GB per GPU (memory_fraction={self._memory_fraction}). "
                "Use more GPUs, a smaller model, activation_checkpointing=True, cpu_offload=True (with the host memory "
                "in host_memory_gb=), or correct the estimate with "
                f"gpu_memory_gb= / model_size=.\n{report.table()}"
            )
        for warning in report.warnings:
            rank_zero_warn(f"GeoHybridStrategy: {warning}")
        return report

    def _build_mesh(self, plan: Plan) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        if plan.pipeline > 1:
            mesh = init_device_mesh(self.root_device.type, (plan.pipeline, *plan.mesh_shape),
                                    mesh_dim_names=(PIPELINE_DIM_NAME, *MESH_DIM_NAMES))
        else:
            mesh = init_device_mesh(self.root_device.type, plan.mesh_shape, mesh_dim_names=MESH_DIM_NAMES)
        # kept here: torch deprecates reading a flattened dim back from the root mesh (mesh["data_parallel"])
        self._data_parallel_mesh = mesh[MESH_DIM_NAMES[0], MESH_DIM_NAMES[1]]._flatten("data_parallel")
        return mesh

    def _describe(self) -> str:
        assert self.report is not None and self.cluster is not None
        plan = self.report.chosen
        stages = f"{plan.pipeline} pipeline stages x " if plan.pipeline > 1 else ""
        return (
            f"{plan.name} (mesh {stages}replicate x shard x tensor = {plan.replicate}x{plan.shard}x{plan.tensor}) on "
            f"{self.cluster.num_nodes} node(s) x {self.cluster.gpus_per_node} device(s), topology from "
            f"{self.cluster.nodes[0].source}; estimated communication {plan.comm_seconds * 1e3:.2f} ms/step, "
            f"{plan.memory_bytes / GB:.2f} GB/GPU"
        )

    # ----------------------------------------------------------------- set-up: apply the plan

    def setup(self, trainer: pl.Trainer) -> None:
        """Apply the plan (unless the module parallelizes itself in ``configure_model``), then set up as
        ``ModelParallelStrategy`` does: materialize, move, optimizers, precision."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        assert self.model is not None and self.accelerator is not None and self.lightning_module is not None
        self.accelerator.setup(trainer)
        if any(isinstance(mod, FullyShardedDataParallel) for mod in self.model.modules()):
            raise TypeError(
                "GeoHybridStrategy: found modules wrapped in FSDP1 (FullyShardedDataParallel); it applies FSDP2 "
                "(fully_shard) itself. Remove the wrapping, or use strategy='fsdp'."
            )
        if self.plan.pipeline > 1:
            self._check_pipeline_setup()
            if not self.applied:
                self.pipeline_runner, done = build_pipeline(
                    self.lightning_module, self.device_mesh, self.plan, self.root_device,
                    schedule=self._pipeline_schedule, n_microbatches=self._n_microbatches,
                    tensor_parallel_plan=dict(self._tensor_parallel_plan) if self._tensor_parallel_plan else None,
                )
                self.applied = {"by": "geo_hybrid", **done}
                # the norm to clip is the whole model's, over every stage (this plugin instance only)
                group = self.device_mesh[PIPELINE_DIM_NAME].get_group()
                plugin = self.precision_plugin

                def clip_by_norm(optimizer: Any, clip_val: float) -> None:
                    clip_grad_norm_(list(plugin.main_params(optimizer)), float(clip_val), group)

                plugin.clip_grad_by_norm = clip_by_norm  # type: ignore[method-assign]
        elif is_overridden("configure_model", self.lightning_module):
            self.applied = {"by": "configure_model"}
        elif not self.applied:  # fit then validate re-runs setup on the same, already parallelized module
            self.applied = {"by": "geo_hybrid", **parallelize(self.lightning_module, self.device_mesh, self.plan,
                                                               self._tensor_parallel_plan)}
        _materialize_distributed_module(self.model, self.root_device)
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            _optimizers_to_device(self.optimizers, self.root_device)
        self._keep_user_sampler_without_data_parallelism(trainer)
        self._log_plan(trainer)

    def _check_pipeline_setup(self) -> None:
        assert self.lightning_module is not None
        stages = f"GeoHybridStrategy: a plan with {self.plan.pipeline} pipeline stages"
        if is_overridden("configure_model", self.lightning_module):
            raise ValueError(
                f"{stages} splits the module itself, but {type(self.lightning_module).__name__} overrides "
                "configure_model(); build the layers in __init__ (and offer pipeline_parts()), or use pipeline=1"
            )
        if not self.lightning_module.automatic_optimization:
            raise ValueError(
                f"{stages} runs forward, backward and the optimizer step through its schedule; manual optimization "
                "(automatic_optimization=False) cannot drive it: use automatic optimization or pipeline=1"
            )
        plugin = self.precision_plugin
        # Lightning's own plugins change the backward only through a GradScaler; another one may do anything
        own = [c.__name__ for c in type(plugin).__mro__
               if not c.__module__.startswith("lightning.") and {"backward", "pre_backward"} & set(vars(c))]
        if getattr(plugin, "scaler", None) is not None or own:
            raise ValueError(
                f"{stages} runs backward inside its schedule, so the precision plugin {type(plugin).__name__} cannot "
                "scale the loss before it; use precision='bf16-mixed', 'bf16-true' or '32-true'"
            )
        if not self._save_distributed_checkpoint:
            raise ValueError(
                f"{stages}: each rank holds only its stage, so a checkpoint must be distributed; "
                "use save_distributed_checkpoint=True"
            )

    def _keep_user_sampler_without_data_parallelism(self, trainer: pl.Trainer) -> None:
        # Lightning counts every ModelParallelStrategy as distributed and replaces the loaders' samplers with a
        # DistributedSampler, shuffle=True for training, even over one data-parallel replica: a one-device run
        # would silently lose the user's order. With one replica there is nothing to split, so keep the user's.
        assert self._data_parallel_mesh is not None
        connector = trainer._accelerator_connector
        if self._data_parallel_mesh.size() == 1 and connector.use_distributed_sampler:
            connector.use_distributed_sampler = False

    def _log_plan(self, trainer: pl.Trainer) -> None:
        assert self.report is not None
        plan = self.report.chosen
        log_geo_scalars(trainer, "strategy", {
            "pipeline": plan.pipeline,
            "replicate": plan.replicate,
            "shard": plan.shard,
            "tensor": plan.tensor,
            "world_size": plan.world_size,
            "est_comm_ms": plan.comm_seconds * 1e3,
            "est_memory_gb": plan.memory_bytes / GB,
            "activation_checkpointing": plan.activation_checkpointing,
            "cpu_offload": plan.cpu_offload,
            "candidates": len(self.report.candidates),
        }, step=trainer.global_step, throttle=False)
        warnings = "".join(f"\n- {w}" for w in self.report.warnings)
        text = (f"**{self._describe()}**\n\napplied: {self.applied}\n\n```\n{self.report.table()}\n```"
                + (f"\n\nwarnings:{warnings}" if warnings else ""))
        log_geo_text(trainer, "strategy", "plan", text, step=trainer.global_step, throttle=False)

    # ----------------------------------------------------------------- steps under pipeline parallelism

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """The module's ``training_step``; under pipeline parallelism, forward and backward of every micro-batch
        through the stages instead, returning the batch's mean loss on every rank (``backward`` then does nothing)."""
        if self.pipeline_runner is None:
            return super().training_step(*args, **kwargs)
        assert self.lightning_module is not None
        batch = args[0] if args else kwargs["batch"]
        batch_idx = args[1] if len(args) > 1 else kwargs["batch_idx"]
        accumulate = self.lightning_module.trainer.accumulate_grad_batches
        runner = self.pipeline_runner
        # Lightning zeroes the gradients between training_step and backward (at the first batch of an
        # accumulation): the schedule's gradients are put aside until backward, and zeroed here instead
        if batch_idx % accumulate == 0:
            runner.zero_gradients()
        with self.precision_plugin.train_step_context():
            loss = runner.train_step(batch, accumulate=accumulate)
        runner.put_aside_gradients()
        self._report_loss("train", loss, batch)
        return loss

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        """The module's ``validation_step``; under pipeline parallelism, a forward pass through the stages giving
        the batch's mean loss to every rank (and to ``PipelineParts.on_loss``)."""
        if self.pipeline_runner is None:
            return super().validation_step(*args, **kwargs)
        return self._pipeline_eval_step("val", self.precision_plugin.val_step_context(), args, kwargs)

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        """As ``validation_step``, reported as ``"test"``."""
        if self.pipeline_runner is None:
            return super().test_step(*args, **kwargs)
        return self._pipeline_eval_step("test", self.precision_plugin.test_step_context(), args, kwargs)

    def _pipeline_eval_step(self, stage: str, context: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        assert self.pipeline_runner is not None
        batch = args[0] if args else kwargs["batch"]
        with context:
            loss = self.pipeline_runner.eval_step(batch)
        self._report_loss(stage, loss, batch)
        return loss

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        """The module's ``predict_step``; refused under pipeline parallelism (the outputs live on the last stage)."""
        if self.pipeline_runner is None:
            return super().predict_step(*args, **kwargs)
        raise RuntimeError(
            "GeoHybridStrategy: predict is not supported with pipeline stages (only the last stage holds the "
            "outputs); predict from a checkpoint with pipeline=1"
        )

    def _report_loss(self, stage: str, loss: torch.Tensor, batch: Any) -> None:
        assert self.pipeline_runner is not None and self.pipeline_runner.parts.on_loss is not None
        self.pipeline_runner.parts.on_loss(stage, loss, batch)

    def backward(self, closure_loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """As ``Strategy.backward``; under pipeline parallelism the schedule already ran backward in
        ``training_step``, so only the hooks run (``on_before_backward`` and ``on_after_backward``)."""
        if self.pipeline_runner is None:
            return super().backward(closure_loss, optimizer, *args, **kwargs)
        assert self.lightning_module is not None
        self.pipeline_runner.put_back_gradients()
        self.pre_backward(closure_loss)
        closure_loss = self.precision_plugin.pre_backward(closure_loss, self.lightning_module)
        closure_loss = self.precision_plugin.post_backward(closure_loss, self.lightning_module)
        self.post_backward(closure_loss)
        return closure_loss

    def teardown(self) -> None:
        """As ``ModelParallelStrategy``; a one-process run also leaves its (world size 1) process group, so
        that the Python process is left as a single-device run would leave it."""
        super().teardown()
        if self.world_size == 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._device_mesh = None
            self._data_parallel_mesh = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any | None = None
    ) -> None:
        """As ``ModelParallelStrategy``, but a kill while saving never leaves ``filepath`` half-written.

        A distributed checkpoint (the default) is written into a new hidden folder beside ``filepath``
        (``.last.ckpt.geo-<token>``) and, once every rank has written it, ``filepath`` becomes a link to it in one
        atomic rename; the folder it named before is then removed. A kill at any moment leaves ``filepath`` on the
        previous complete checkpoint, so ``fit(ckpt_path="last")`` always resumes. A single-file checkpoint
        (``save_distributed_checkpoint=False``) is written by Lightning, to a temporary file renamed into place.
        """
        path = Path(self.broadcast(str(filepath)))
        if not self._save_distributed_checkpoint:
            if self.is_global_zero and linked_version(path) is not None:  # this name was a folder version before
                remove_checkpoint(path)
            self.barrier("geo_hybrid_checkpoint_cleared")
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        folder = Path(self.broadcast(str(version_folder(path))))
        super().save_checkpoint(checkpoint, folder, storage_options=storage_options)
        if self.is_global_zero:
            fsync_file(folder / LIGHTNING_METADATA)
        self.barrier("geo_hybrid_checkpoint_written")
        if self.is_global_zero:
            swap_in(path, folder)
        self.barrier("geo_hybrid_checkpoint_swapped")

    def remove_checkpoint(self, filepath: str | Path) -> None:
        """Remove a checkpoint (on rank 0): a link this strategy made with the folder it names, a folder or a
        file."""
        if self.is_global_zero:
            remove_checkpoint(Path(filepath))

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        """As ``ModelParallelStrategy``; also for a one-process run on the single-device plan.

        That plan leaves the module unsharded (plain tensors, no DTensor), and Lightning's loader looks for a
        module with DTensor parameters to load into and refuses the checkpoint without one, although the
        distributed checkpoint it saved reads back into plain tensors all the same. So a single-device
        ``geo_hybrid`` checkpoint could be written but not resumed or tested from.

        Raises:
            UnreadableCheckpointError: (a ``ValueError``) when the checkpoint is truncated, corrupt or incomplete,
                naming ``checkpoint_path`` and what is wrong; the reader's own error is its ``__cause__``.
        """
        try:
            return self._load_checkpoint(checkpoint_path, weights_only)
        except (Exception, CheckpointException) as err:  # CheckpointException is a BaseException
            problem = checkpoint_problem(checkpoint_path) if Path(checkpoint_path).exists() else None
            if problem is None:  # a readable checkpoint that does not fit the model: the loader's error says why
                raise
            raise UnreadableCheckpointError(
                unreadable_message("ckpt_path", checkpoint_path, problem)
                + "; resume from another checkpoint, or save this one again"
            ) from err

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """As ``ModelParallelStrategy``; with pipeline stages, this rank's stage only, one key per parameter
        (``stage_optimizer_state``)."""
        if self.pipeline_runner is None:
            return super().optimizer_state(optimizer)
        assert self.model is not None
        return stage_optimizer_state(self.model, getattr(optimizer, "_optimizer", optimizer))

    def _load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None) -> dict[str, Any]:
        assert self.model is not None and self.lightning_module is not None
        if self.pipeline_runner is not None:
            path = Path(self.broadcast(str(checkpoint_path)))
            if not path.is_dir():
                raise ValueError(
                    f"GeoHybridStrategy: {str(path)!r} is not a distributed checkpoint folder; a run with pipeline "
                    "stages resumes only from one (save_distributed_checkpoint=True)"
                )
            return load_stage_checkpoint(path, self.model, self.optimizers,
                                         strict=self.lightning_module.strict_loading, weights_only=weights_only)
        if any(isinstance(p, DTensor) for p in self.model.parameters()):
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        import lightning.fabric.strategies.model_parallel as fabric_model_parallel

        find_module = fabric_model_parallel._has_dtensor_modules
        fabric_model_parallel._has_dtensor_modules = lambda module: module is self.model  # type: ignore[assignment]
        try:
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        finally:
            fabric_model_parallel._has_dtensor_modules = find_module

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        """Data-parallel replicas and this rank's index among them: the ranks of one tensor-parallel group
        read the same batch."""
        if self._data_parallel_mesh is None:
            raise RuntimeError("GeoHybridStrategy: the device mesh is built in setup_environment(); not yet")
        dp = self._data_parallel_mesh
        return {"num_replicas": dp.size(), "rank": dp.get_local_rank()}


def register_geo_hybrid() -> None:
    """Register ``"geo_hybrid"`` in Lightning's strategy registry; calling it again does nothing."""
    if GeoHybridStrategy.strategy_name not in StrategyRegistry:
        StrategyRegistry.register(
            GeoHybridStrategy.strategy_name,
            GeoHybridStrategy,
            description="GEO: DDP / FSDP / HSDP / tensor parallel chosen from the detected GPU topology",
        )
