"""The parallel planner: mesh enumeration, ring bandwidth, device order, memory fit and the choices it makes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from lightning_geo.strategies.bandwidth import GB, Bandwidths
from lightning_geo.strategies.planner import (
    ASSUMED_HOST_MEMORY_BYTES,
    ModelSize,
    estimate_plan,
    mesh_groups,
    mesh_shapes,
    plan_parallelism,
)
from lightning_geo.strategies.rings import device_order, ring_bandwidth
from lightning_geo.strategies.topology import (
    GPU,
    SELF_LINK,
    ClusterTopology,
    Link,
    LinkKind,
    NodeTopology,
    cpu_node_topology,
    single_node,
)
from lightning_geo.strategies.topology_smi import read_topology_file
from lightning_geo.strategies.transformer_shape import TransformerShape


def node_from_rows(rows: list[str], memory_gb: float | None = 80) -> NodeTopology:
    """A node from rows of ``nvidia-smi topo -m`` link tokens (``X``, ``NV4``, ``PIX``...)."""

    def link(token: str) -> Link:
        if token == "X":
            return SELF_LINK
        if token.startswith("NV"):
            return Link(LinkKind.NVLINK, nvlinks=int(token[2:]))
        return Link(LinkKind(token))

    links = tuple(tuple(link(t) for t in row.split()) for row in rows)
    memory = None if memory_gb is None else memory_gb * GB
    return NodeTopology(tuple(GPU(i, memory_bytes=memory) for i in range(len(rows))), links)


def all_pairs(n: int, token: str, memory_gb: float | None = 80) -> NodeTopology:
    return node_from_rows([" ".join("X" if i == j else token for j in range(n)) for i in range(n)], memory_gb)


HGX_H100 = all_pairs(8, "NV18")
# A30s with NVLink bridges 0-3 and 1-2 (non-adjacent numbering), PCIe in between (file 21, first socket)
A30_BRIDGES = node_from_rows(["X NODE NODE NV4", "NODE X NV4 PIX", "NODE NV4 X PIX", "NV4 PIX PIX X"], 24)
VM_ALL_PHB = all_pairs(8, "PHB", memory_gb=24)


def test_mesh_shapes_cover_every_factorisation_and_keep_tensor_parallel_inside_a_node():
    assert sorted(mesh_shapes(4, 4, allow_tensor_parallel=False)) == [(1, 4, 1), (2, 2, 1), (4, 1, 1)]
    with_tp = mesh_shapes(8, 4, allow_tensor_parallel=True)
    assert (1, 1, 8) not in with_tp  # 8 > 4 GPUs per node
    assert (2, 1, 4) in with_tp and (1, 2, 4) in with_tp
    assert all(r * s * t == 8 for r, s, t in with_tp)


def test_mesh_groups_are_row_major_with_tensor_innermost():
    assert mesh_groups((2, 2, 2), 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert mesh_groups((2, 2, 2), 1) == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert mesh_groups((2, 2, 2), 0) == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_device_order_puts_bridged_pairs_on_consecutive_ranks():
    assert device_order(A30_BRIDGES, Bandwidths()) == (0, 3, 1, 2)
    rtx = node_from_rows([" ".join("X" if i == j else ("PIX" if (i < 4) == (j < 4) else "SYS") for j in range(8))
                          for i in range(8)])
    order = device_order(rtx, Bandwidths())
    assert set(order[:4]) in ({0, 1, 2, 3}, {4, 5, 6, 7})


def test_ring_bandwidth_is_the_slowest_hop_of_the_best_ring():
    bw = Bandwidths()
    ring, _ = ring_bandwidth(single_node(A30_BRIDGES), [(0, 0), (0, 3)], bw)
    assert ring == 4 * bw.nvlink_per_link * GB
    # 0-3 NV4, 3-1 PIX, 1-2 NV4, 2-0 NODE: the best ring through all four still crosses NODE once
    ring, _ = ring_bandwidth(single_node(A30_BRIDGES), [(0, i) for i in range(4)], bw)
    assert ring == bw.node * GB
    two_nodes = single_node(HGX_H100, 2)
    ring, latency = ring_bandwidth(two_nodes, [(0, 0), (0, 1), (1, 0), (1, 1)], bw)
    assert ring == bw.net * GB and latency == bw.net_latency_us * 1e-6


def test_one_nvlink_clique_and_a_model_that_fits_replicates():
    report = plan_parallelism(single_node(HGX_H100), ModelSize(1.3e9))
    assert report.chosen.mesh_shape == (8, 1, 1) and report.chosen.name == "DDP"
    assert report.candidates[0].reason == "chosen"
    assert not report.warnings


def test_the_same_clique_with_a_model_that_does_not_fit_shards():
    report = plan_parallelism(single_node(HGX_H100), ModelSize(7e9))  # 112 GB of state > 72 GB usable
    assert report.chosen.shard > 1
    assert not report.chosen.cpu_offload and not report.chosen.activation_checkpointing
    ddp = next(c for c in report.candidates if c.plan.mesh_shape == (8, 1, 1))
    # offloaded, DDP's 8 copies of 112 GB would need 896 GB of host memory, more than a node is assumed to have
    assert not ddp.fits and ddp.reason == "does not fit: 112.0 GB > 72.0 GB"
    assert report.chosen.memory_bytes <= 0.9 * 80 * GB


def test_cpu_offload_only_when_it_makes_a_plan_fit_and_the_host_has_the_memory():
    big_host = plan_parallelism(single_node(HGX_H100), ModelSize(7e9), host_memory_bytes=2000 * GB)
    assert big_host.chosen.shard > 1 and not big_host.chosen.cpu_offload  # sharding fits without offload
    ddp = next(c for c in big_host.candidates if c.plan.mesh_shape == (8, 1, 1))
    assert ddp.fits and ddp.plan.cpu_offload and ddp.reason == "needs CPU offload"
    assert ddp.plan.host_bytes == pytest.approx(8 * 112 * GB)
    only_ddp = plan_parallelism(single_node(HGX_H100), ModelSize(7e9), shapes=[(8, 1, 1)],
                                host_memory_bytes=2000 * GB)
    assert only_ddp.chosen.cpu_offload and only_ddp.candidates[0].fits
    never = plan_parallelism(single_node(HGX_H100), ModelSize(7e9), shapes=[(8, 1, 1)], cpu_offload=False,
                             host_memory_bytes=2000 * GB)
    assert not never.candidates[0].fits and not never.chosen.cpu_offload
    small_host = plan_parallelism(single_node(HGX_H100), ModelSize(7e9), shapes=[(8, 1, 1)])
    assert not small_host.candidates[0].fits and any("no plan fits in 72.0 GB" in w for w in small_host.warnings)


def test_nvlink_pairs_joined_by_pcie_get_hsdp_with_the_shard_group_inside_each_pair():
    report = plan_parallelism(single_node(A30_BRIDGES), ModelSize(1e9))
    plan = report.chosen
    assert plan.mesh_shape == (2, 2, 1)
    assert plan.device_order == (0, 3, 1, 2)  # shard groups = ranks (0,1) and (2,3) = GPUs {0,3} and {1,2}
    assert plan.bandwidths_gbps["shard"] == pytest.approx(4 * Bandwidths().nvlink_per_link)
    ddp = next(c.plan for c in report.candidates if c.plan.mesh_shape == (4, 1, 1))
    assert ddp.comm_seconds > 1.5 * plan.comm_seconds


def test_two_nodes_over_infiniband_shard_inside_the_node_and_replicate_across():
    report = plan_parallelism(single_node(HGX_H100, num_nodes=2), ModelSize(7e9))
    assert report.chosen.mesh_shape == (2, 8, 1)
    assert report.chosen.bandwidths_gbps == {"replicate": Bandwidths().net, "shard": 18 * Bandwidths().nvlink_per_link}
    fsdp = next(c.plan for c in report.candidates if c.plan.mesh_shape == (1, 16, 1))
    assert fsdp.comm_seconds > 5 * report.chosen.comm_seconds


def test_a_vm_without_topology_information_gets_a_safe_default_and_a_warning():
    report = plan_parallelism(single_node(VM_ALL_PHB), ModelSize(125e6))
    assert report.chosen.name == "DDP"
    assert any("PHB" in w for w in report.warnings)
    big = plan_parallelism(single_node(VM_ALL_PHB), ModelSize(2e9))  # 32 GB of state > 21.6 GB usable
    assert big.chosen.shard > 1 and big.candidates[0].fits


def test_unknown_gpu_memory_rules_nothing_out_and_says_so():
    report = plan_parallelism(single_node(all_pairs(4, "NV4", memory_gb=None)), ModelSize(1e8))
    assert all(c.fits for c in report.candidates)
    assert any("memory is unknown" in w for w in report.warnings)


def test_unknown_gpu_memory_refuses_a_plan_that_may_not_fit():
    with pytest.raises(ValueError, match=r"GPU memory is unknown .* needs 1120.0 GB per GPU.*gpu_memory_bytes="):
        plan_parallelism(single_node(all_pairs(4, "NV4", memory_gb=None)), ModelSize(70e9))


def test_activation_checkpointing_only_when_it_makes_a_plan_fit():
    model = ModelSize(1e8, activation_bytes=90 * GB)  # activations alone overflow a GPU
    report = plan_parallelism(single_node(HGX_H100), model)
    assert report.chosen.activation_checkpointing
    small = plan_parallelism(single_node(HGX_H100), ModelSize(1e8, activation_bytes=1 * GB))
    assert not small.chosen.activation_checkpointing
    never = plan_parallelism(single_node(HGX_H100), model, activation_checkpointing=False)
    assert not never.candidates[0].fits and any("no plan fits" in w for w in never.warnings)


def test_tensor_parallel_is_planned_only_when_allowed_and_costed():
    model = ModelSize(1e9, activation_bytes=8 * GB)
    assert all(c.plan.tensor == 1 for c in plan_parallelism(single_node(HGX_H100), model).candidates)
    allowed = plan_parallelism(single_node(HGX_H100), model, allow_tensor_parallel=True)
    assert any(c.plan.tensor > 1 for c in allowed.candidates)
    no_estimate = plan_parallelism(single_node(HGX_H100), ModelSize(1e9), allow_tensor_parallel=True)
    assert all(c.plan.tensor == 1 for c in no_estimate.candidates)
    assert any("tensor parallel needs an activation estimate" in w for w in no_estimate.warnings)


def test_estimates_follow_the_alpha_beta_formulas():
    bw = Bandwidths(nvlink_latency_us=1e-9)  # ~no latency: pure bandwidth terms
    model = ModelSize(1e9, grad_bytes=2, num_blocks=10)
    m, b = 2e9, 18 * 25 * GB
    ddp = estimate_plan(single_node(HGX_H100), model, (8, 1, 1), bandwidths=bw)
    assert ddp.comm_seconds == pytest.approx(2 * 7 / 8 * m / b, rel=1e-3)
    fsdp = estimate_plan(single_node(HGX_H100), model, (1, 8, 1), bandwidths=bw)
    assert fsdp.comm_seconds == pytest.approx(3 * 7 / 8 * m / b, rel=1e-3)
    hsdp = estimate_plan(single_node(HGX_H100), model, (2, 4, 1), bandwidths=bw)
    assert hsdp.breakdown["shard"] == pytest.approx(3 * 3 / 4 * m / b, rel=1e-3)
    assert hsdp.breakdown["replicate"] == pytest.approx(2 * 1 / 2 * (m / 4) / b, rel=1e-3)
    assert fsdp.memory_bytes < hsdp.memory_bytes < ddp.memory_bytes


def test_the_table_explains_every_candidate():
    table = plan_parallelism(single_node(A30_BRIDGES), ModelSize(1e9)).table()
    lines = table.splitlines()
    assert len(lines) == 2 + 3 and "chosen" in lines[2] and "HSDP 2x2" in lines[2]
    assert "2.2" in table and "x the communication" in table


def test_single_device_and_cpu_clusters():
    one = plan_parallelism(ClusterTopology((HGX_H100.subset([0]),)), ModelSize(1e9))
    assert one.chosen.name == "single device" and one.chosen.comm_seconds == 0
    cpu = plan_parallelism(single_node(cpu_node_topology(4)), ModelSize(1e6))
    assert cpu.chosen.world_size == 4 and not cpu.warnings


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="parameters"):
        ModelSize(-1)
    with pytest.raises(ValueError, match="num_blocks"):
        ModelSize(1e6, num_blocks=0)
    with pytest.raises(ValueError, match="memory_fraction"):
        plan_parallelism(single_node(HGX_H100), ModelSize(1e6), memory_fraction=1.5)
    with pytest.raises(ValueError, match="unknown field"):
        Bandwidths.from_overrides({"infiniband": 50})
    with pytest.raises(ValueError, match="net must be a positive"):
        Bandwidths(net=0)
    with pytest.raises(ValueError, match="world size"):
        estimate_plan(single_node(HGX_H100), ModelSize(1e6), (2, 2, 1))
    assert ModelSize(7e9).num_blocks == 38


TOPOLOGY_FILES = sorted((Path(__file__).parent / "data" / "topologies").glob("*.txt"))


@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.name[:2])
def test_a_chosen_plan_always_fits_or_the_report_says_none_does(path):
    node = read_topology_file(path)
    for nodes, memory_gb, params in itertools.product((1, 4), (24, 80), (125e6, 1.3e9, 7e9, 13e9, 70e9, 405e9)):
        model = ModelSize(params, activation_bytes=params * 2)  # activations of the order of the weights
        report = plan_parallelism(single_node(node, nodes), model, gpu_memory_bytes=memory_gb * GB)
        capacity = 0.9 * memory_gb * GB
        case = f"{path.name}, {nodes} node(s), {memory_gb} GB, {params:g} parameters"
        if report.candidates[0].fits:
            assert report.chosen.memory_bytes <= capacity, case
            assert report.chosen.host_bytes <= 0.9 * ASSUMED_HOST_MEMORY_BYTES, case
        else:
            assert not any(c.fits for c in report.candidates), case
            assert any(w.startswith("no plan fits") for w in report.warnings), case
        for c in report.candidates:
            assert c.fits == (c.plan.memory_bytes <= capacity and c.plan.host_bytes <= 0.9 * ASSUMED_HOST_MEMORY_BYTES)


LLAMA_SHAPES = {  # Llama 3.1 8B, 70B and 405B at 8k tokens, one sequence per micro-batch
    name: TransformerShape(layers=layers, hidden=hidden, heads=heads, kv_heads=8, ffn=ffn, vocab=128256,
                           seq_len=8192, micro_batch=1, gated_mlp=True, rms_norm=True)
    for name, layers, hidden, heads, ffn in (("8B", 32, 4096, 32, 14336), ("70B", 80, 8192, 64, 28672),
                                             ("405B", 126, 16384, 128, 53248))
}


@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.name[:2])
def test_with_the_memory_model_and_pipelines_a_chosen_plan_still_always_fits(path):
    node = read_topology_file(path)
    for name, shape in LLAMA_SHAPES.items():
        model = ModelSize.from_shape(shape, global_batch=64)
        report = plan_parallelism(single_node(node, 4), model, gpu_memory_bytes=80 * GB, max_pipeline=4,
                                  allow_tensor_parallel=True)
        case = f"{path.name}, Llama {name}"
        if report.candidates[0].fits:
            assert report.chosen.memory_bytes <= 0.9 * 80 * GB, case
        else:
            assert not any(c.fits for c in report.candidates) and any("no plan fits" in w for w in report.warnings)
