"""Documented default bandwidths and latencies of each link kind, used by the cost model.

The figures are effective unidirectional bandwidths between a pair of devices, in GB/s (1e9 bytes/s), and
per-hop latencies in microseconds. Override any of them (``Bandwidths(net=50.0)``) to match your machine,
or measure your own with ``nccl-tests`` (``all_reduce_perf``'s bus bandwidth is the figure to use).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from lightning_geo.strategies.topology import Link, LinkKind

GB = 1e9


@dataclass(frozen=True)
class Bandwidths:
    """Effective bandwidth per link kind (GB/s, one direction) and latency (microseconds).

    Defaults, with where they come from (stas00/ml-engineering ``network/README.md``, nccl-tests):

    Args:
        nvlink_per_link: GB/s of one NVLink lane per direction; a pair joined by ``NV#`` gets ``# x`` this.
            25 GB/s for NVLink 2-4 (V100, A100, H100: 18 links = 450 GB/s); NVLink 5 (B200) doubles it.
        nvlink5_per_link: GB/s per NVLink 5 lane (B200, GB200): 50.
        pix: one PCIe switch between the GPUs: 24 (PCIe 4 x16 reaches about 26 pinned).
        pxb: several PCIe switches: 20.
        phb: through the CPU's host bridge: 16.
        node: between host bridges of one socket: 12.
        sys: across sockets (UPI / Infinity Fabric): 8.
        net: between nodes, per GPU: 25 (InfiniBand HDR, 200 Gb/s per GPU; NDR is 50).
        cpu: between gloo processes of a CPU run on one machine: 2 (loopback / shared memory, measured
            order of magnitude on a laptop-class CPU).
        nvlink_latency_us, pcie_latency_us, net_latency_us, cpu_latency_us: per-hop latency (alpha) of a
            ring step: 1, 2, 5 and 30 microseconds (NCCL's small-message all-reduce on 8 NVLink GPUs takes
            about 20 us over its 14 ring steps).
    """

    nvlink_per_link: float = 25.0
    nvlink5_per_link: float = 50.0
    pix: float = 24.0
    pxb: float = 20.0
    phb: float = 16.0
    node: float = 12.0
    sys: float = 8.0
    net: float = 25.0
    cpu: float = 2.0
    nvlink_latency_us: float = 1.0
    pcie_latency_us: float = 2.0
    net_latency_us: float = 5.0
    cpu_latency_us: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Bandwidths: {f.name} must be a positive number, got {value!r}")

    @classmethod
    def from_overrides(cls, overrides: dict[str, float] | Bandwidths | None) -> Bandwidths:
        """The defaults with ``overrides`` (a dict of field names to values) applied; names are checked."""
        if overrides is None:
            return cls()
        if isinstance(overrides, Bandwidths):
            return overrides
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"Bandwidths: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**overrides)

    def bandwidth(self, link: Link) -> float:
        """Bytes per second over ``link`` (one direction). ``SELF`` is infinite."""
        kind = link.kind
        if kind is LinkKind.SELF:
            return float("inf")
        if kind is LinkKind.NVLINK:
            per_link = self.nvlink5_per_link if (link.nvlink_version or 0) >= 5 else self.nvlink_per_link
            return max(link.nvlinks, 1) * per_link * GB
        per_kind = {
            LinkKind.PIX: self.pix,
            LinkKind.PXB: self.pxb,
            LinkKind.PHB: self.phb,
            LinkKind.NODE: self.node,
            LinkKind.SYS: self.sys,
            LinkKind.NET: self.net,
            LinkKind.CPU: self.cpu,
        }
        return per_kind[kind] * GB

    def latency(self, link: Link) -> float:
        """Seconds per hop over ``link``."""
        if link.kind is LinkKind.SELF:
            return 0.0
        if link.kind is LinkKind.NVLINK:
            return self.nvlink_latency_us * 1e-6
        if link.kind is LinkKind.NET:
            return self.net_latency_us * 1e-6
        if link.kind is LinkKind.CPU:
            return self.cpu_latency_us * 1e-6
        return self.pcie_latency_us * 1e-6
