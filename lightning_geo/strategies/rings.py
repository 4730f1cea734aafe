"""Where ranks sit and how fast a group of them can run a ring collective.

Two pure functions the planner builds on:

- ``device_order``: the order in which a node's GPUs get consecutive local ranks, so that devices joined
  by the fastest links (NVLink islands, then PCIe switches, then sockets) are neighbours. GPU numbering is
  not always contiguous: a bridge can pair GPU0 with GPU3.
- ``ring_bandwidth``: the bottleneck bandwidth of the best ring through a group of devices, the ``B``
  of the alpha-beta model (a ring collective runs at the speed of its slowest hop).
"""

from __future__ import annotations

from functools import lru_cache

from lightning_geo.strategies.bandwidth import Bandwidths
from lightning_geo.strategies.topology import ClusterTopology, NodeTopology

Device = tuple[int, int]
"""A device of a cluster: ``(node rank, local CUDA index)``."""

_EXACT_RING_MAX = 10  # exact bottleneck ring by dynamic programming up to this many devices (2^10 * 10^2 steps)


def device_order(node: NodeTopology, bandwidths: Bandwidths) -> tuple[int, ...]:
    """Local device indices in the order that gives the fastest links to neighbouring ranks.

    Complete-linkage agglomerative clustering: repeatedly merge the two groups whose slowest pair is the
    fastest (ties: smaller groups first, then lower indices), and read the devices off the merge tree. A
    DGX-1 gives ``0 1 2 3 4 5 6 7``; A30s bridged 0-3 and 1-2 give ``0 3 1 2 ...``.
    """
    clusters: list[list[int]] = [[i] for i in range(node.num_gpus)]
    bw = [[bandwidths.bandwidth(node.link(i, j)) for j in range(node.num_gpus)] for i in range(node.num_gpus)]
    while len(clusters) > 1:
        best: tuple[float, int, int, int, int] | None = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                slowest = min(bw[i][j] for i in clusters[a] for j in clusters[b])
                key = (-slowest, len(clusters[a]) + len(clusters[b]), min(clusters[a] + clusters[b]), a, b)
                if best is None or key < best:
                    best = key
        assert best is not None
        a, b = best[3], best[4]
        first, second = sorted((clusters[a], clusters[b]), key=min)
        clusters[a] = first + second
        del clusters[b]
    return tuple(clusters[0])


def ring_bandwidth(topology: ClusterTopology, devices: list[Device] | tuple[Device, ...],
                   bandwidths: Bandwidths) -> tuple[float, float]:
    """``(bytes/s, seconds)``: bottleneck bandwidth and worst hop latency of the best ring through ``devices``.

    Inside a node the best ring is found exactly (up to 10 devices; beyond that the given order is used).
    A group spanning nodes crosses the network at least twice, so its bandwidth is the smaller of the
    network's and the best ring inside each node's part. A group of one device is free (infinite).
    """
    devices = tuple(devices)
    if len(devices) < 2:
        return float("inf"), 0.0
    by_node: dict[int, list[int]] = {}
    for node, local in devices:
        by_node.setdefault(node, []).append(local)
    slowest, latency = float("inf"), 0.0
    for node, locals_ in by_node.items():
        if len(locals_) > 1:
            b, lat = _node_ring(topology.nodes[node], tuple(sorted(locals_)), bandwidths)
            slowest, latency = min(slowest, b), max(latency, lat)
    if len(by_node) > 1:
        nodes = sorted(by_node)
        cross = topology.link((nodes[0], by_node[nodes[0]][0]), (nodes[1], by_node[nodes[1]][0]))
        slowest = min(slowest, bandwidths.bandwidth(cross))
        latency = max(latency, bandwidths.latency(cross))
    return slowest, latency


def _node_ring(node: NodeTopology, members: tuple[int, ...], bandwidths: Bandwidths) -> tuple[float, float]:
    return _node_ring_cached(node, members, bandwidths)


@lru_cache(maxsize=4096)
def _node_ring_cached(node: NodeTopology, members: tuple[int, ...], bandwidths: Bandwidths) -> tuple[float, float]:
    n = len(members)
    bw = [[bandwidths.bandwidth(node.link(i, j)) for j in members] for i in members]
    if n == 2:
        cycle = [0, 1]
    elif n <= _EXACT_RING_MAX:
        cycle = _bottleneck_cycle(bw)
    else:
        cycle = list(range(n))
    hops = [(cycle[k], cycle[(k + 1) % n]) for k in range(n)]
    slowest = min(bw[a][b] for a, b in hops)
    latency = max(bandwidths.latency(node.link(members[a], members[b])) for a, b in hops)
    return slowest, latency


def _bottleneck_cycle(bw: list[list[float]]) -> list[int]:
    """The Hamiltonian cycle that maximises its slowest edge (held-karp style DP over subsets, start at 0)."""
    n = len(bw)
    full = (1 << n) - 1
    # best[mask][last]: the best bottleneck of a path from 0 through `mask` ending at `last`
    best = [[-1.0] * n for _ in range(1 << n)]
    parent = [[-1] * n for _ in range(1 << n)]
    best[1][0] = float("inf")
    for mask in range(1, 1 << n):
        if not mask & 1:
            continue
        for last in range(n):
            here = best[mask][last]
            if here < 0:
                continue
            for nxt in range(1, n):
                if mask & (1 << nxt):
                    continue
                value = min(here, bw[last][nxt])
                m2 = mask | (1 << nxt)
                if value > best[m2][nxt]:
                    best[m2][nxt], parent[m2][nxt] = value, last
    end = max(range(1, n), key=lambda last: min(best[full][last], bw[last][0]))
    cycle, mask, last = [], full, end
    while last != -1:
        cycle.append(last)
        last, mask = parent[mask][last], mask & ~(1 << last)
    return cycle[::-1]
