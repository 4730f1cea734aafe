"""``GeoHybridStrategy`` (``strategy="geo_hybrid"``): detect the interconnect, plan the mesh, apply it.

A subclass of Lightning's ``ModelParallelStrategy`` (FSDP2 + DTensor on a DeviceMesh). In
``setup_environment`` every node detects its own topology, rank 0's view of the cluster is gathered, the
planner picks a ``(replicate, shard, tensor)`` mesh and the DeviceMesh is built with the GPUs numbered so
that the innermost dimension sits on the fastest links. In ``setup``, a LightningModule that does not
override ``configure_model`` is parallelized by the plan (``parallelize``); one that does gets the mesh
as ``self.device_mesh`` (dims ``data_parallel_replicate``, ``data_parallel_shard``, ``tensor_parallel``,
and the flattened ``data_parallel`` Lightning's own examples use) and parallelizes itself.
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
from lightning_geo.strategies.planner import ModelSize, Plan, PlanReport, mesh_shapes, plan_parallelism
from lightning_geo.strategies.rings import device_order
from lightning_geo.strategies.topology import ClusterTopology, NodeTopology, cpu_node_topology
from lightning_geo.utils.dashboard import DashboardSection
from lightning_geo.utils.geo_logging import log_geo_scalars, log_geo_text

log = logging.getLogger(__name__)

PLAN_KINDS = ("auto", "ddp", "fsdp", "hsdp", "tensor_parallel")
MESH_DIM_NAMES = ("data_parallel_replicate", "data_parallel_shard", "tensor_parallel")


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
    tensor-parallel group read the same samples), shuffled for training as under DDP. With one replica (one
    device, or tensor parallel only) no sampler is injected: the loaders keep your sampler and order, as in a
    plain single-device run. ``use_distributed_sampler=False`` leaves the sharding to you in both cases.

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
        save_distributed_checkpoint, process_group_backend, timeout: as for ``ModelParallelStrategy``.
    """

    strategy_name = "geo_hybrid"
    geo_dashboard_section: ClassVar[DashboardSection] = DashboardSection.for_part(
        "strategy",
        {
            "mesh: replicate x shard x tensor, world size": (r"^geo/strategy/(replicate|shard|tensor|world_size)$",),
            "estimated communication per step (ms)": (r"^geo/strategy/est_comm_ms$",),
            "estimated memory per device (GB)": (r"^geo/strategy/est_memory_gb$",),
            "activation checkpointing (0/1) and plans compared": (
                r"^geo/strategy/(activation_checkpointing|candidates)$",
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
        world = cluster.world_size
        if self._forced_mesh is not None:
            r, s, t = self._forced_mesh
            if r * s * t != world:
                raise ValueError(
                    f"GeoHybridStrategy: mesh={self._forced_mesh} has {r * s * t} ranks but the run has {world} "
                    f"(devices={cluster.gpus_per_node} x num_nodes={cluster.num_nodes})"
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
        )
        if not report.candidates[0].fits:
            raise ValueError(
                f"GeoHybridStrategy: no {'forced ' if shapes else ''}plan fits in "
                f"{(report.gpu_memory_bytes or 0) / GB:.1f} GB per GPU (memory_fraction={self._memory_fraction}). "
                "Use more GPUs, a smaller model, activation_checkpointing=True, or correct the estimate with "
                f"gpu_memory_gb= / model_size=.\n{report.table()}"
            )
        for warning in report.warnings:
            rank_zero_warn(f"GeoHybridStrategy: {warning}")
        return report

    def _build_mesh(self, plan: Plan) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(self.root_device.type, plan.mesh_shape, mesh_dim_names=MESH_DIM_NAMES)
        # kept here: torch deprecates reading a flattened dim back from the root mesh (mesh["data_parallel"])
        self._data_parallel_mesh = mesh[MESH_DIM_NAMES[0], MESH_DIM_NAMES[1]]._flatten("data_parallel")
        return mesh

    def _describe(self) -> str:
        assert self.report is not None and self.cluster is not None
        plan = self.report.chosen
        return (
            f"{plan.name} (mesh replicate x shard x tensor = {plan.replicate}x{plan.shard}x{plan.tensor}) on "
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
        if is_overridden("configure_model", self.lightning_module):
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
            "replicate": plan.replicate,
            "shard": plan.shard,
            "tensor": plan.tensor,
            "world_size": plan.world_size,
            "est_comm_ms": plan.comm_seconds * 1e3,
            "est_memory_gb": plan.memory_bytes / GB,
            "activation_checkpointing": plan.activation_checkpointing,
            "candidates": len(self.report.candidates),
        }, step=trainer.global_step, throttle=False)
        warnings = "".join(f"\n- {w}" for w in self.report.warnings)
        text = (f"**{self._describe()}**\n\napplied: {self.applied}\n\n```\n{self.report.table()}\n```"
                + (f"\n\nwarnings:{warnings}" if warnings else ""))
        log_geo_text(trainer, "strategy", "plan", text, step=trainer.global_step, throttle=False)

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

    def _load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None) -> dict[str, Any]:
        assert self.model is not None
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
