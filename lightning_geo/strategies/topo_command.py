"""``lightning-geo topo``: the detected (or a saved) topology as an island map, and the ranked plan table."""

from __future__ import annotations

from lightning_geo.strategies.bandwidth import GB, Bandwidths
from lightning_geo.strategies.planner import ModelSize, PlanReport, plan_parallelism
from lightning_geo.strategies.rings import device_order
from lightning_geo.strategies.topology import ClusterTopology, LinkKind, NodeTopology, single_node
from lightning_geo.utils.table import format_table


def island_map(node: NodeTopology, bandwidths: Bandwidths | None = None) -> str:
    """A compact text map of a node: its NVLink islands, the link between islands, and the rank order.

    Islands are lettered A, B, ...; the matrix shows the fastest link between any GPU of one island and any
    of the other (what a ring joining them would use). A CPU node (gloo processes) has one line instead.
    """
    bandwidths = bandwidths or Bandwidths()
    name = "node" if node.source.startswith("file:") else node.hostname  # a file's node is not this machine
    lines = [f"{name}: {_device_count(node)}, topology from {node.source}"]
    if node.is_cpu:  # no islands: every pair of gloo processes shares one link kind
        lines.append(f"  processes 0-{node.num_gpus - 1} on this CPU, joined by gloo "
                     f"(assumed {bandwidths.cpu:g} GB/s, {bandwidths.cpu_latency_us:g} us per hop)")
    else:
        lines.extend(_island_lines(node, bandwidths))
    lines.extend(f"  warning: {w}" for w in node.warnings)
    return "\n".join(lines)


def _device_count(node: NodeTopology) -> str:
    return f"{node.num_gpus} {'process' if node.is_cpu else 'GPU'}(s)"


def _island_lines(node: NodeTopology, bandwidths: Bandwidths) -> list[str]:
    islands = node.nvlink_islands()
    lines: list[str] = []
    for letter, island in zip(_letters(len(islands)), islands, strict=True):
        members = " ".join(f"GPU{i}" for i in island)
        if len(island) > 1:
            links = {str(node.link(i, j)) for i in island for j in island if i < j}
            detail = f"NVLink {'/'.join(sorted(links))}"
            if any(node.link(i, j).nvswitch for i in island for j in island if i < j):
                detail += " via NVSwitch"
        else:
            detail = "no NVLink"
        numa = {n for i in island if (n := node.gpus[i].numa_node) is not None}
        numa_text = f", NUMA {'/'.join(str(n) for n in sorted(numa))}" if numa else ""
        lines.append(f"  island {letter}: {members} ({detail}{numa_text})")
    if len(islands) > 1:
        rows = []
        for a, island_a in zip(_letters(len(islands)), islands, strict=True):
            row: list[object] = [a]
            for island_b in islands:
                if island_a is island_b:
                    row.append("-")
                    continue
                best = max((node.link(i, j) for i in island_a for j in island_b), key=bandwidths.bandwidth)
                row.append(str(best))
            rows.append(row)
        lines.append("  links between islands (fastest pair):")
        lines.extend("    " + line for line in format_table(["", *_letters(len(islands))], rows).splitlines())
    lines.append("  local rank order: " + " ".join(f"GPU{i}" for i in device_order(node, bandwidths)))
    return lines


def _memory_line(report: PlanReport, gpu_memory_gb: float | None) -> str:
    """What GB/GPU is checked against, and the flag that sets it."""
    if report.gpu_memory_bytes is None:
        return ("GB/GPU: estimated peak per GPU; GPU memory unknown, nothing ruled out for it "
                "(--gpu-memory-gb sets the memory of one GPU)")
    given = f"--gpu-memory-gb {gpu_memory_gb:g}" if gpu_memory_gb is not None else "the detected memory"
    fitting = sum(c.fits for c in report.candidates)
    return (f"GB/GPU: estimated peak per GPU, checked against {report.gpu_memory_bytes / GB:.1f} GB (90% of {given}; "
            f"--gpu-memory-gb sets it); {fitting} of {len(report.candidates)} plans fit")


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + k) if k < 26 else f"I{k}" for k in range(n)]


def topo_report(
    node: NodeTopology,
    *,
    params: float,
    nodes: int = 1,
    gpus_per_node: int | None = None,
    gpu_memory_gb: float | None = None,
    bandwidths: Bandwidths | None = None,
    activation_gb: float = 0.0,
    bytes_per_param: float = 16.0,
    model: str | None = None,
    seq_len: int | None = None,
    micro_batch: int | None = None,
    global_batch: int | None = None,
    max_pipeline: int = 1,
    tensor_parallel: bool = False,
) -> tuple[str, PlanReport]:
    """The island map and the plan table for a model of ``params`` parameters, as text.

    Args:
        node: one node's topology (every node is assumed alike).
        params: model parameters.
        nodes: number of nodes; 1.
        gpus_per_node: use only the first this many GPUs of the node; default all.
        gpu_memory_gb: GPU memory in GB; default what the topology reports (unknown for a text file: then a
            plan needing more than ``ASSUMED_GPU_MEMORY_BYTES`` is refused).

    Raises:
        ValueError: for a bad argument (naming its flag), a model too big to plan without ``--gpu-memory-gb``, or
            one for which no plan fits in the GPU memory.
        bandwidths: link speeds; default [`Bandwidths`][lightning_geo.strategies.Bandwidths].
        activation_gb: activation memory per GPU in GB; 0 (unknown).
        bytes_per_param: weights + gradients + optimizer state per parameter; 16 (fp32 weights and
            gradients, Adam's two fp32 moments). Split as 4 + 4 + the rest.
        model: a name of ``KNOWN_MODELS`` (``llama3.1-70b``...): plan for its shape with the memory model
            (activations from the shapes, bf16 compute, AdamW) instead of ``params`` and ``activation_gb``.
        seq_len, micro_batch: override the known model's sequence length (8192 for Llama) and micro-batch (1).
        global_batch: sequences per optimizer step; with ``model`` it gives the step's work, so plans are ranked by
            estimated step time and pipelines can be weighed.
        max_pipeline: most pipeline stages considered; 1.
        tensor_parallel: consider tensor-parallel meshes; False.
    """
    bandwidths = bandwidths or Bandwidths()
    if gpus_per_node is not None:
        if not 1 <= gpus_per_node <= node.num_gpus:
            raise ValueError(f"--gpus-per-node must be between 1 and {node.num_gpus} (the node's GPUs), "
                             f"got {gpus_per_node}")
        node = node.subset(list(range(gpus_per_node)))
    if bytes_per_param < 8:
        raise ValueError(f"--bytes-per-param must be >= 8 (4 for weights and 4 for gradients), got {bytes_per_param}")
    cluster: ClusterTopology = single_node(node, nodes)
    if model is not None:
        from lightning_geo.strategies.known_models import known_model

        shape = known_model(model, seq_len=seq_len, micro_batch=micro_batch)
        size = ModelSize.from_shape(shape, global_batch=global_batch)
        params = size.parameters
    elif global_batch is not None or seq_len is not None or micro_batch is not None:
        raise ValueError("--global-batch, --seq-len and --micro-batch need --model (a known model's shape)")
    else:
        size = ModelSize(params, optimizer_bytes=bytes_per_param - 8, activation_bytes=activation_gb * GB)
    report = plan_parallelism(cluster, size, bandwidths=bandwidths,
                              gpu_memory_bytes=None if gpu_memory_gb is None else gpu_memory_gb * GB,
                              memory_argument="--gpu-memory-gb 80", max_pipeline=max_pipeline,
                              allow_tensor_parallel=tensor_parallel)
    if not report.candidates[0].fits:
        assert report.gpu_memory_bytes is not None  # only a known memory rules a plan out
        smallest = report.chosen
        raise ValueError(
            f"no plan fits in {report.gpu_memory_bytes / GB:.1f} GB per GPU (90% of --gpu-memory-gb or of the "
            f"detected memory): the smallest, {smallest.name}, needs {smallest.memory_bytes / GB:.1f} GB; use more "
            "GPUs (--nodes), a smaller model (--params) or less state per parameter (--bytes-per-param)"
        )
    header = ((f"plan for {model} ({params:.3g} parameters, {size.shape.seq_len} tokens x {size.shape.micro_batch} "
               f"per micro-batch{f', {global_batch} per step' if global_batch else ''}; "
               if model is not None and size.shape is not None else f"plan for {params:.3g} parameters (")
              + f"{size.state_bytes / GB:.1f} GB of weights, gradients and "
              f"optimizer state) on {nodes} node(s) x {_device_count(node)}"
              + ("" if nodes == 1 else f", nodes joined by {LinkKind.NET.value} at {bandwidths.net:g} GB/s per GPU"))
    text = "\n".join([island_map(node, bandwidths), "", header, report.table(), _memory_line(report, gpu_memory_gb)]
                     + [f"warning: {w}" for w in report.warnings if w not in node.warnings])
    return text, report
