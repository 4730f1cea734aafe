"""Read a node's GPU interconnect through NVML (``pynvml``, from the ``nvidia-ml-py`` package).

Per GPU pair: the number of NVLinks (counted link by link from each GPU's remote PCI bus ids; links that
end at an NVSwitch make all such GPUs all-to-all with that many links), the NVLink generation, and the PCIe
path when there is no NVLink. Per GPU: name, UUID, PCI bus id, memory, NUMA node and the multi-node NVLink
domain (GB200 NVL72). P2P problems go to ``warnings``.

NVML numbers GPUs in PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``; CUDA numbers them fastest first
and only the visible ones. ``nvml_node_topology`` matches the two by UUID, so the result is in CUDA
order. ``pynvml`` is imported lazily; every NVML call goes through a ``nvml`` object so tests can pass a
fake.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from lightning_geo.strategies.topology import GPU, SELF_LINK, Link, LinkKind, NodeTopology

_T = TypeVar("_T")

# NVML_NVLINK_VERSION_* -> NVLink generation (1_0 P100, 2_0/2_2 V100, 3_0/3_1 A100, 4_0 H100, 5_0 B200, 6_0)
_NVLINK_GENERATIONS = {1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 4, 7: 5, 8: 6}
# pynvml defines NVML_P2P_CAPS_INDEX_READ as the tuple (0,) (a stray comma), so the value is spelled out here
_P2P_CAPS_INDEX_READ = 0
_P2P_STATUS_NAMES = {
    1: "chipset not supported",
    2: "GPU not supported",
    3: "IOH topology not supported",
    4: "disabled by regkey",
    5: "not supported",
    6: "unknown",
}


@dataclass(frozen=True)
class _NvLinkEnds:
    """Where one GPU's active NVLinks go."""

    gpu_peers: Counter[str]  # remote PCI bus id -> number of links to that GPU
    switch_links: int  # links that end at an NVSwitch
    version: int | None  # NVLink generation, None when unknown or no NVLink


def nvml_node_topology(cuda_uuids: list[str] | None = None, *, nvml: Any = None) -> NodeTopology:
    """The topology of this node's GPUs, read through NVML, in CUDA index order.

    Args:
        cuda_uuids: ``str(torch.cuda.get_device_properties(i).uuid)`` for every CUDA index ``i``, with or
            without the ``GPU-`` prefix; the result has exactly these GPUs, ``GPU.index`` = CUDA index. Default
            ``None``: read them from torch when ``torch.cuda.is_available()``, else take all GPUs in NVML order.
        nvml: the ``pynvml`` module (default) or an object with the same functions and constants (tests).

    Returns:
        A [`NodeTopology`][lightning_geo.strategies.NodeTopology] with ``source="nvml"``.

    Raises:
        RuntimeError: when NVML cannot be used (``pynvml`` missing, no driver, an NVML call failed) or a CUDA
            UUID is not among NVML's GPUs (e.g. a MIG instance).

    Example:
        ```python
        node = nvml_node_topology()
        node.link(0, 1)  # Link(kind=<LinkKind.NVLINK: 'NV'>, nvlinks=18, nvlink_version=4, nvswitch=True)
        ```
    """
    if nvml is None:
        nvml = _import_pynvml()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        raise RuntimeError(f"NVML could not be initialised ({err}); is the NVIDIA driver loaded?") from err
    try:
        return _read_node(nvml, cuda_uuids if cuda_uuids is not None else _torch_cuda_uuids())
    except nvml.NVMLError as err:
        raise RuntimeError(f"an NVML call failed while reading the topology: {err}") from err
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as err:
        raise RuntimeError("NVML is not available: pynvml cannot be imported (pip install nvidia-ml-py)") from err
    return pynvml


def _torch_cuda_uuids() -> list[str] | None:
    """CUDA's device UUIDs in CUDA index order, or ``None`` when torch sees no CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]


def _read_node(nvml: Any, cuda_uuids: list[str] | None) -> NodeTopology:
    handles = [nvml.nvmlDeviceGetHandleByIndex(k) for k in range(nvml.nvmlDeviceGetCount())]
    if not handles:
        raise RuntimeError("NVML sees no GPUs")
    all_buses = [_bus_id(nvml.nvmlDeviceGetPciInfo(h).busId) for h in handles]
    order = _cuda_order(nvml, handles, cuda_uuids)  # NVML index of each CUDA device
    chosen = [handles[k] for k in order]
    buses = [all_buses[k] for k in order]
    ends = [_nvlink_ends(nvml, h, set(all_buses)) for h in chosen]
    warnings: list[str] = []
    n = len(chosen)
    links = [[SELF_LINK] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            links[i][j] = links[j][i] = _pair_link(nvml, (i, j), chosen, buses, ends, warnings)
    gpus = tuple(_gpu(nvml, h, index=k, bus=buses[k]) for k, h in enumerate(chosen))
    warnings += _p2p_warnings(nvml, chosen)
    return NodeTopology(gpus, tuple(tuple(row) for row in links), source="nvml", warnings=tuple(warnings))


def _cuda_order(nvml: Any, handles: list[Any], cuda_uuids: list[str] | None) -> list[int]:
    """The NVML index of every CUDA device (all NVML devices in NVML order when ``cuda_uuids`` is None)."""
    if cuda_uuids is None:
        return list(range(len(handles)))
    if not cuda_uuids:
        raise RuntimeError("no CUDA devices to describe (cuda_uuids is empty)")
    nvml_index = {_normalize_uuid(nvml.nvmlDeviceGetUUID(h)): k for k, h in enumerate(handles)}
    order = []
    for cuda_index, uuid in enumerate(cuda_uuids):
        k = nvml_index.get(_normalize_uuid(uuid))
        if k is None:
            raise RuntimeError(f"CUDA device {cuda_index} (UUID {uuid}) is not among the {len(handles)} GPUs NVML "
                               "sees (a MIG instance?)")
        order.append(k)
    return order


def _nvlink_ends(nvml: Any, handle: Any, gpu_buses: set[str]) -> _NvLinkEnds:
    """Count one GPU's active NVLinks per remote GPU and to NVSwitches."""
    peers: Counter[str] = Counter()
    switch_links = 0
    versions: set[int] = set()
    for link in range(nvml.NVML_NVLINK_MAX_LINKS):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
                continue
        except nvml.NVMLError:
            continue  # past the GPU's real links, or a GPU without NVLink
        remote = _try(nvml, nvml.nvmlDeviceGetNvLinkRemoteDeviceType, handle, link)
        if remote == nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH:
            switch_links += 1
        elif remote in (nvml.NVML_NVLINK_DEVICE_TYPE_GPU, None):  # None: old driver, judge by the bus id
            bus = _bus_id(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)
            if remote is not None or bus in gpu_buses:
                peers[bus] += 1
        version = _try(nvml, nvml.nvmlDeviceGetNvLinkVersion, handle, link)
        if version in _NVLINK_GENERATIONS:
            versions.add(_NVLINK_GENERATIONS[version])
    return _NvLinkEnds(peers, switch_links, min(versions) if versions else None)


def _pair_link(nvml: Any, pair: tuple[int, int], handles: list[Any], buses: list[str], ends: list[_NvLinkEnds],
               warnings: list[str]) -> Link:
    """NVLink (switched or direct) between the two GPUs if any, else their PCIe path."""
    i, j = pair
    a, b = ends[i], ends[j]
    known = [v for v in (a.version, b.version) if v is not None]
    version = min(known) if known else None
    if a.switch_links and b.switch_links:
        return Link(LinkKind.NVLINK, nvlinks=min(a.switch_links, b.switch_links), nvlink_version=version,
                    nvswitch=True)
    direct = a.gpu_peers[buses[j]]
    if direct:
        return Link(LinkKind.NVLINK, nvlinks=direct, nvlink_version=version)
    try:
        level = nvml.nvmlDeviceGetTopologyCommonAncestor(handles[i], handles[j])
    except nvml.NVMLError as err:
        warnings.append(f"GPU{i}-GPU{j}: NVML cannot tell the PCIe path ({err}); assuming PHB")
        return Link(LinkKind.PHB)
    return Link(_pcie_kind(nvml, level, pair))


def _pcie_kind(nvml: Any, level: int, pair: tuple[int, int]) -> LinkKind:
    kinds = {
        nvml.NVML_TOPOLOGY_INTERNAL: LinkKind.PIX,  # the same board (multi-GPU cards)
        nvml.NVML_TOPOLOGY_SINGLE: LinkKind.PIX,
        nvml.NVML_TOPOLOGY_MULTIPLE: LinkKind.PXB,
        nvml.NVML_TOPOLOGY_HOSTBRIDGE: LinkKind.PHB,
        nvml.NVML_TOPOLOGY_NODE: LinkKind.NODE,
        nvml.NVML_TOPOLOGY_SYSTEM: LinkKind.SYS,
    }
    if level not in kinds:
        raise RuntimeError(f"NVML returned an unknown topology level {level} for GPU{pair[0]}-GPU{pair[1]}")
    return kinds[level]


def _p2p_warnings(nvml: Any, handles: list[Any]) -> list[str]:
    """One warning per reason for the GPU pairs whose P2P reads NVML reports as not OK."""
    failed: dict[str, list[str]] = {}
    for i in range(len(handles)):
        for j in range(i + 1, len(handles)):
            try:
                status = nvml.nvmlDeviceGetP2PStatus(handles[i], handles[j], _P2P_CAPS_INDEX_READ)
            except nvml.NVMLError as err:
                reason = f"query failed: {err}"
            else:
                if status == nvml.NVML_P2P_STATUS_OK:
                    continue
                reason = _P2P_STATUS_NAMES.get(status, f"status {status}")
            failed.setdefault(reason, []).append(f"{i}-{j}")
    return [f"P2P reads are not OK between GPU pairs {', '.join(pairs)} ({reason}); NCCL copies through host "
            "memory there" for reason, pairs in failed.items()]


def _gpu(nvml: Any, handle: Any, *, index: int, bus: str) -> GPU:
    memory = _try(nvml, nvml.nvmlDeviceGetMemoryInfo, handle)
    numa = _try(nvml, nvml.nvmlDeviceGetNumaNodeId, handle)
    return GPU(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        pci_bus_id=bus,
        memory_bytes=None if memory is None else int(memory.total),
        numa_node=numa if numa is not None and numa >= 0 else None,
        nvlink_domain=_fabric_domain(nvml, handle),
    )


def _fabric_domain(nvml: Any, handle: Any) -> str | None:
    """``"<clusterUuid hex>.<cliqueId>"`` when the GPU is registered in a multi-node NVLink fabric, else None.

    Requires state COMPLETED, status SUCCESS and a nonzero cluster UUID (a single HGX H100 node reports
    COMPLETED with an all-zero UUID). Drivers or ``pynvml`` versions without ``nvmlDeviceGetGpuFabricInfoV``
    give None.
    """
    info_type = getattr(nvml, "c_nvmlGpuFabricInfoV_t", None)
    if info_type is None:
        return None
    info = info_type()
    try:
        nvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
    except nvml.NVMLError:
        return None
    cluster = bytes(info.clusterUuid)
    if info.state != nvml.NVML_GPU_FABRIC_STATE_COMPLETED or info.status != nvml.NVML_SUCCESS or not any(cluster):
        return None
    return f"{cluster.hex()}.{info.cliqueId}"


def _try(nvml: Any, fn: Callable[..., _T], *args: Any) -> _T | None:
    """``fn(*args)``, or None when NVML says the call is not supported or failed."""
    try:
        return fn(*args)
    except nvml.NVMLError:
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _normalize_uuid(uuid: str | bytes) -> str:
    text = _text(uuid).strip().lower()
    return text.removeprefix("gpu-")


def _bus_id(raw: str | bytes) -> str:
    """``00000000:18:00.0``: upper case, 8-digit domain (NVML's legacy format has 4)."""
    text = _text(raw).strip().upper()
    domain, sep, rest = text.partition(":")
    return f"{int(domain, 16):08X}:{rest}" if sep and rest.count(":") == 1 else text
