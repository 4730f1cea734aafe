"""The step-time model the planner ranks plans by when it knows the work of a step, and pipeline plans."""

from __future__ import annotations

import pytest

from lightning_geo.strategies import step_time
from lightning_geo.strategies.bandwidth import GB
from lightning_geo.strategies.planner import ModelSize, estimate_plan, plan_parallelism
from lightning_geo.strategies.topology import GPU, SELF_LINK, Link, LinkKind, NodeTopology, single_node
from lightning_geo.strategies.transformer_shape import TransformerShape

LLAMA_70B = TransformerShape(layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256, seq_len=8192,
                             micro_batch=1, gated_mlp=True, rms_norm=True)


def h100_node(memory_gb: float = 80) -> NodeTopology:
    nvlink = Link(LinkKind.NVLINK, nvlinks=18, nvlink_version=4, nvswitch=True)
    return NodeTopology(tuple(GPU(i, name="NVIDIA H100 80GB HBM3", memory_bytes=int(memory_gb * GB)) for i in range(8)),
                        tuple(tuple(SELF_LINK if i == j else nvlink for j in range(8)) for i in range(8)))


def test_peak_is_read_from_the_product_name():
    assert step_time.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert step_time.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0  # not the A10's
    assert step_time.peak_tflops("NVIDIA A10G") == 70.0
    assert step_time.peak_tflops(None) == step_time.DEFAULT_PEAK_TFLOPS


def test_flops_and_bubble_follow_the_published_formulas():
    assert step_time.flops_per_token(1e9) == 6e9
    assert step_time.flops_per_token(1e9, layers=2, hidden=10, seq_len=100) == 6e9 + 12 * 2 * 10 * 100
    assert step_time.flops_per_token(1e9, recompute=True) == 8e9
    assert step_time.pipeline_bubble(1, 8) == 0
    assert step_time.pipeline_bubble(4, 8) == pytest.approx(3 / 8)
    assert step_time.pipeline_bubble(4, 8, interleave=2) == pytest.approx(3 / 16)
    with pytest.raises(ValueError, match="efficiency"):
        step_time.estimate_step_time(flops=1, gpus=1, peak=1, efficiency=0, tokens=1, critical_comm=0,
                                     overlapped_comm=0, bubble_share=0)


def test_overlapped_traffic_is_exposed_only_beyond_the_compute():
    hidden = step_time.estimate_step_time(flops=8e12, gpus=8, peak=1e12, efficiency=1.0, tokens=1000,
                                          critical_comm=0.1, overlapped_comm=0.5, bubble_share=0.25)
    assert hidden.compute == 1.0 and hidden.exposed_comm == pytest.approx(0.1) and hidden.bubble == 0.25
    assert hidden.tokens_per_second_per_gpu == pytest.approx(1000 / 1.35 / 8)
    exposed = step_time.estimate_step_time(flops=8e12, gpus=8, peak=1e12, efficiency=1.0, tokens=1000,
                                           critical_comm=0.0, overlapped_comm=1.5, bubble_share=0.0)
    assert exposed.exposed_comm == pytest.approx(0.5)


def test_pipeline_plans_need_the_work_of_a_step():
    cluster = single_node(h100_node(), 4)
    without = plan_parallelism(cluster, ModelSize(70e9), gpu_memory_bytes=80 * GB, max_pipeline=8)
    assert all(c.plan.pipeline == 1 for c in without.candidates)
    assert any("pipeline plans need the work of a step" in w for w in without.warnings)
    model = ModelSize.from_shape(LLAMA_70B, global_batch=64)
    report = plan_parallelism(cluster, model, gpu_memory_bytes=80 * GB, max_pipeline=8, allow_tensor_parallel=True)
    assert any(c.plan.pipeline > 1 for c in report.candidates)
    assert all(c.plan.step is not None for c in report.candidates)
    fitting = [c for c in report.candidates if c.fits]
    assert report.chosen is fitting[0].plan
    assert report.chosen.step.seconds <= min(c.plan.step.seconds for c in fitting) * 1.1  # simpler within 10%


def test_a_pipeline_pays_its_bubble_and_sends_across_the_slowest_links():
    cluster = single_node(h100_node(), 4)
    model = ModelSize.from_shape(LLAMA_70B, global_batch=32)
    flat = estimate_plan(cluster, model, (1, 8, 4), activation_checkpointing=True)
    piped = estimate_plan(cluster, model, (1, 2, 4), pipeline=4, activation_checkpointing=True)
    assert piped.world_size == flat.world_size == 32
    assert piped.name == "PP4 + TP4 + FSDP"
    microbatches = 32 // 2  # global batch over the data-parallel ranks, micro-batch 1
    assert piped.step.bubble == pytest.approx(piped.step.compute * 3 / microbatches)
    assert piped.bandwidths_gbps["pipeline"] == 25.0  # stages on different nodes
    assert piped.memory_bytes < flat.memory_bytes * 2  # 1/4 of the layers, 4 micro-batches in flight


def test_planner_tables_show_step_time_and_throughput_when_known():
    cluster = single_node(h100_node(), 2)
    report = plan_parallelism(cluster, ModelSize.from_shape(LLAMA_70B, global_batch=16), gpu_memory_bytes=80 * GB,
                              max_pipeline=2)
    table = report.table()
    assert "tok/s/GPU" in table and "step" in table.splitlines()[0]


def test_the_strategy_names_bad_offload_arguments():
    from lightning_geo.strategies import GeoHybridStrategy

    with pytest.raises(ValueError, match="cpu_offload must be True, False or 'auto'"):
        GeoHybridStrategy(cpu_offload="yes")
    with pytest.raises(ValueError, match="host_memory_gb must be a number of GB > 0"):
        GeoHybridStrategy(host_memory_gb=0)
