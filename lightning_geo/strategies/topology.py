"""The GPU interconnect of a machine or a cluster, as plain data: GPUs, the link between every pair, NUMA.

Detection lives in ``topology_nvml`` (NVML on a real GPU) and ``topology_smi`` (the text of
``nvidia-smi topo -m``); ``detect_node_topology`` picks the first that works, and
falls back to "every pair PHB" with a warning (a CPU run gets ``cpu_node_topology``).
Everything here is plain frozen dataclasses, so a topology pickles across ranks and compares
with ``==`` in tests.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from enum import Enum


class LinkKind(str, Enum):
    """How two devices reach each other, best first. The PCIe kinds are ``nvidia-smi topo -m``'s legend."""

    SELF = "X"
    NVLINK = "NV"  # a bonded set of NVLinks, direct or through an NVSwitch
    PIX = "PIX"  # at most one PCIe bridge
    PXB = "PXB"  # several PCIe bridges, no host bridge
    PHB = "PHB"  # through a PCIe host bridge (the CPU); also what VMs report for everything
    NODE = "NODE"  # between PCIe host bridges of one NUMA node
    SYS = "SYS"  # across the SMP interconnect between NUMA nodes (QPI/UPI, Infinity Fabric)
    NET = "NET"  # between nodes (InfiniBand, RoCE, Ethernet)
    CPU = "CPU"  # processes of a CPU-only run talking through gloo (shared memory / loopback TCP)

    @property
    def is_pcie(self) -> bool:
        """True for the PCIe paths PIX, PXB, PHB, NODE and SYS."""
        return self in (LinkKind.PIX, LinkKind.PXB, LinkKind.PHB, LinkKind.NODE, LinkKind.SYS)


@dataclass(frozen=True)
class Link:
    """The connection between two devices.

    Args:
        kind: the path ([`LinkKind`][lightning_geo.strategies.LinkKind]).
        nvlinks: for ``NVLINK``, the number of bonded links (``NV4`` -> 4); 0 otherwise.
        nvlink_version: NVLink generation (2 = V100, 3 = A100, 4 = H100, 5 = B200) when known, else None.
        nvswitch: True when the NVLinks go through an NVSwitch (every GPU reaches every other one at
            full bandwidth), False for direct GPU-to-GPU links or when unknown.
    """

    kind: LinkKind
    nvlinks: int = 0
    nvlink_version: int | None = None
    nvswitch: bool = False

    def __str__(self) -> str:
        return f"NV{self.nvlinks}" if self.kind is LinkKind.NVLINK else self.kind.value


SELF_LINK = Link(LinkKind.SELF)


@dataclass(frozen=True)
class GPU:
    """One device of a node.

    Args:
        index: the CUDA device index this process would use (``cuda:<index>``). Parsed ``nvidia-smi``
            text has NVML's order, which is the CUDA order only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
        name: the product name, or ``None`` when unknown.
        uuid: ``GPU-...`` UUID, or ``None``.
        pci_bus_id: ``00000000:18:00.0`` style bus id, or ``None``.
        memory_bytes: total device memory in bytes, or ``None`` when unknown.
        numa_node: NUMA node the GPU is attached to, or ``None``.
        cpu_affinity: the CPU list ``nvidia-smi`` prints (``"0-11,24-35"``), or ``None``.
        nvlink_domain: ``"<cluster uuid>.<clique id>"`` for multi-node NVLink (GB200 NVL72): GPUs of
            different nodes with the same domain talk over NVLink. ``None`` on ordinary machines.
    """

    index: int
    name: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    memory_bytes: int | None = None
    numa_node: int | None = None
    cpu_affinity: str | None = None
    nvlink_domain: str | None = None


@dataclass(frozen=True)
class NodeTopology:
    """The devices of one node and the link between every pair.

    Args:
        gpus: the devices, in CUDA index order. Empty for a CPU-only node.
        links: ``links[i][j]`` is the [`Link`][lightning_geo.strategies.Link] between ``gpus[i]`` and ``gpus[j]``
            (``SELF`` on the diagonal), symmetric.
        hostname: the node's host name.
        source: where it came from: ``"nvml"``, ``"nvidia-smi"``, ``"file:<path>"``, ``"cpu"``, ``"fallback"``
            (nothing could be read) or ``"manual"``.
        nics: names of the network devices ``nvidia-smi`` listed (``mlx5_0``), informational.
        warnings: what detection could not read (shown by ``lightning-geo topo`` and logged).
        device_type: ``"cuda"``, or ``"cpu"`` for a CPU-only node whose "devices" are gloo processes.
    """

    gpus: tuple[GPU, ...]
    links: tuple[tuple[Link, ...], ...]
    hostname: str = field(default_factory=socket.gethostname)
    source: str = "manual"
    nics: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    device_type: str = "cuda"

    def __post_init__(self) -> None:
        n = len(self.gpus)
        if len(self.links) != n or any(len(row) != n for row in self.links):
            raise ValueError(f"NodeTopology: links must be a {n}x{n} matrix for {n} GPUs")
        for i in range(n):
            for j in range(n):
                if self.links[i][j] != self.links[j][i]:
                    raise ValueError(
                        f"NodeTopology: the link GPU{i}-GPU{j} ({self.links[i][j]}) differs from "
                        f"GPU{j}-GPU{i} ({self.links[j][i]}); links must be symmetric"
                    )

    @property
    def num_gpus(self) -> int:
        """Number of devices on the node (0 for a CPU node)."""
        return len(self.gpus)

    @property
    def is_cpu(self) -> bool:
        """True for a CPU-only node (its processes run on gloo)."""
        return self.device_type == "cpu"

    def link(self, i: int, j: int) -> Link:
        """The link between local devices ``i`` and ``j``."""
        return self.links[i][j]

    def subset(self, indices: list[int] | tuple[int, ...]) -> NodeTopology:
        """The topology of the listed devices only, renumbered 0..k-1 in the given order.

        What a process sees with ``CUDA_VISIBLE_DEVICES`` set to these devices, or a Trainer with
        ``devices=k`` on a larger simulated node.
        """
        for i in indices:
            if not 0 <= i < self.num_gpus:
                raise ValueError(f"NodeTopology.subset: device {i} does not exist; the node has {self.num_gpus}")
        gpus = tuple(replace(self.gpus[i], index=k) for k, i in enumerate(indices))
        links = tuple(tuple(self.links[i][j] for j in indices) for i in indices)
        return replace(self, gpus=gpus, links=links)

    def nvlink_islands(self) -> list[list[int]]:
        """Groups of devices where every pair is joined by NVLink, largest first (singletons included).

        Found greedily: the largest NVLink clique is taken, then the largest among the rest, and so on, so
        a DGX-1 hybrid cube-mesh gives two islands of four even though NVLinks also cross between them.
        """
        remaining = list(range(self.num_gpus))
        islands: list[list[int]] = []
        while remaining:
            best = _largest_nvlink_clique(self, remaining)
            islands.append(best)
            remaining = [i for i in remaining if i not in best]
        return islands


def _largest_nvlink_clique(node: NodeTopology, candidates: list[int]) -> list[int]:
    best: list[int] = [candidates[0]]

    def grow(clique: list[int], rest: list[int]) -> None:
        nonlocal best
        if len(clique) > len(best):
            best = list(clique)
        for k, i in enumerate(rest):
            if len(clique) + len(rest) - k <= len(best):
                return
            if all(node.link(i, j).kind is LinkKind.NVLINK for j in clique):
                grow([*clique, i], rest[k + 1 :])

    for k, start in enumerate(candidates):
        grow([start], candidates[k + 1 :])
    return sorted(best)


def cpu_node_topology(num_processes: int, hostname: str | None = None) -> NodeTopology:
    """A node with ``num_processes`` CPU processes joined by ``LinkKind.CPU`` links (gloo)."""
    if num_processes < 1:
        raise ValueError(f"cpu_node_topology: num_processes must be >= 1, got {num_processes}")
    gpus = tuple(GPU(index=i, name="cpu") for i in range(num_processes))
    links = tuple(tuple(SELF_LINK if i == j else Link(LinkKind.CPU) for j in range(num_processes))
                  for i in range(num_processes))
    return NodeTopology(gpus, links, hostname=hostname or socket.gethostname(), source="cpu", device_type="cpu")


@dataclass(frozen=True)
class ClusterTopology:
    """The nodes of a run. Global rank ``r`` runs on node ``r // gpus_per_node``.

    Args:
        nodes: one [`NodeTopology`][lightning_geo.strategies.NodeTopology] per node, in node-rank order. All must have
            the same number of devices (Lightning runs the same number of processes on every node).
    """

    nodes: tuple[NodeTopology, ...]

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("ClusterTopology needs at least one node")
        if any(node.num_gpus == 0 for node in self.nodes):
            raise ValueError("ClusterTopology: a node has no devices; use cpu_node_topology() for a CPU run")
        counts = {node.num_gpus for node in self.nodes}
        if len(counts) > 1:
            raise ValueError(f"ClusterTopology: every node must have the same number of devices, got {sorted(counts)}")

    @property
    def num_nodes(self) -> int:
        """Number of nodes."""
        return len(self.nodes)

    @property
    def gpus_per_node(self) -> int:
        """Devices per node (for a CPU cluster, processes per node)."""
        return self.nodes[0].num_gpus

    @property
    def world_size(self) -> int:
        """Total number of devices (processes)."""
        return self.num_nodes * self.gpus_per_node

    @property
    def is_cpu(self) -> bool:
        """True when the run has no GPUs."""
        return self.nodes[0].is_cpu

    def link(self, a: tuple[int, int], b: tuple[int, int]) -> Link:
        """The link between device ``a = (node, local index)`` and device ``b``.

        Devices on different nodes talk over the network, unless both GPUs report the same multi-node
        NVLink domain (then it is NVLink through the NVSwitch fabric).
        """
        (node_a, i), (node_b, j) = a, b
        if node_a == node_b:
            return self.nodes[node_a].link(i, j)
        gpu_a, gpu_b = self.nodes[node_a].gpus[i], self.nodes[node_b].gpus[j]
        if gpu_a.nvlink_domain is not None and gpu_a.nvlink_domain == gpu_b.nvlink_domain:
            return Link(LinkKind.NVLINK, nvlinks=18, nvlink_version=5, nvswitch=True)
        return Link(LinkKind.NET)


def single_node(node: NodeTopology, num_nodes: int = 1) -> ClusterTopology:
    """A cluster of ``num_nodes`` copies of ``node`` (for planning and simulation), named ``node0``, ``node1``..."""
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if num_nodes == 1:
        return ClusterTopology((node,))
    return ClusterTopology(tuple(replace(node, hostname=f"node{k}") for k in range(num_nodes)))
