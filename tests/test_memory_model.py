"""The memory model (``lightning_geo.strategies.memory``): shapes read off real models, what each plan divides or moves,
refused arguments, and one 2-process FSDP run whose measured peak the estimate must match within 15%."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.strategies.memory import (
    OPTIMIZER_STATE_BYTES,
    MemoryEstimate,
    TransformerShape,
    estimate_memory,
    optimizer_state_bytes,
)
from tests.helpers import free_port
from tests.launch import launch_script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from memory_probe import AllocationTrace, replay  # noqa: E402

WORKER = ROOT / "benchmarks" / "memory_model_worker.py"
SHAPE = TransformerShape(layers=4, hidden=128, heads=4, ffn=512, vocab=2048, seq_len=128, micro_batch=8)


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- shapes read off real models


def test_the_demo_model_is_read_with_its_learned_positions_and_biases():
    model = CharLanguageModel(40, seq_len=32, n_layer=3, n_head=4, n_embd=64)
    shape = TransformerShape.from_module(model, seq_len=32, micro_batch=2)
    assert (shape.layers, shape.hidden, shape.heads, shape.ffn, shape.vocab) == (3, 64, 4, 256, 40)
    assert shape.learned_positions == 32 and shape.bias and not shape.tied_embeddings and not shape.rms_norm
    assert shape.parameters == numel(model)


def test_gpt2_is_read_tied_with_learned_positions():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100,
                                                                 n_positions=48))
    shape = TransformerShape.from_module(model, seq_len=48, micro_batch=1)
    assert shape.tied_embeddings and shape.learned_positions == 48 and shape.ffn == 256 and not shape.gated_mlp
    assert shape.parameters == numel(model)


@pytest.mark.parametrize("tied", [False, True])
def test_llama_is_read_with_grouped_query_attention_swiglu_and_rmsnorm(tied):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=176, vocab_size=100, tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(config)
    shape = TransformerShape.from_module(model, seq_len=16, micro_batch=1)
    assert (shape.kv_heads, shape.kv_width, shape.ffn) == (2, 32, 176)
    assert shape.gated_mlp and shape.rms_norm and not shape.bias and shape.tied_embeddings == tied
    assert shape.parameters == numel(model)


def test_qwen2_is_read_with_biases_on_q_k_v_only():
    transformers = pytest.importorskip("transformers")
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=176,
        vocab_size=100, tie_word_embeddings=False))
    shape = TransformerShape.from_module(model, seq_len=16, micro_batch=1)
    assert shape.qkv_bias and not shape.bias
    assert shape.parameters == numel(model)


@pytest.mark.parametrize("kind", ["gpt-neox", "llama"])
def test_litgpt_is_read(kind):
    litgpt = pytest.importorskip("litgpt")
    options = {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100, "padded_vocab_size": 128}
    if kind == "llama":
        options |= {"n_query_groups": 2, "bias": False, "norm_class_name": "RMSNorm", "mlp_class_name": "LLaMAMLP",
                    "intermediate_size": 176}
    model = litgpt.GPT(litgpt.Config(**options))
    shape = TransformerShape.from_module(model, seq_len=16, micro_batch=1)
    assert shape.vocab == 128 and shape.gated_mlp == (kind == "llama") and shape.rms_norm == (kind == "llama")
    assert shape.parameters == numel(model)


def test_a_model_without_a_known_configuration_is_refused_by_name():
    with pytest.raises(ValueError, match=r"cannot read the shape of Sequential: no module in it has a `config`"):
        TransformerShape.from_module(nn.Sequential(nn.Linear(4, 4)), seq_len=8, micro_batch=1)
    holder = nn.Linear(4, 4)
    holder.config = type("BertConfig", (), {"model_type": "bert"})()
    with pytest.raises(ValueError, match=r"found Linear.config \(BertConfig, model_type='bert'\)"):
        TransformerShape.from_module(holder, seq_len=8, micro_batch=1)


# ----------------------------------------------------------------------------- what a plan divides or moves


def test_sharding_divides_the_model_state_and_replication_does_not():
    single = estimate_memory(SHAPE, optimizer="adamw")
    replicated = estimate_memory(SHAPE, replicate=4)
    sharded = estimate_memory(SHAPE, shard=4)
    assert single.parameters == replicated.parameters == SHAPE.parameters * 4
    assert single.optimizer == SHAPE.parameters * OPTIMIZER_STATE_BYTES["adamw"]
    assert sharded.parameters == single.parameters / 4 and sharded.optimizer == single.optimizer / 4
    assert sharded.total < replicated.total
    assert single.gathered == 0 < replicated.gathered  # fully_shard on a replicate mesh gathers a copy


def test_activation_checkpointing_keeps_block_inputs_only():
    plain = estimate_memory(SHAPE)
    checkpointed = estimate_memory(SHAPE, activation_checkpointing=True)
    assert checkpointed.activations < plain.activations / 4
    tokens = SHAPE.micro_batch * SHAPE.seq_len
    layer = tokens * SHAPE.layer_activations() * 4
    assert plain.moment == "loss backward"  # the logits (8 MB each) dominate this small model
    assert plain.activations == SHAPE.layers * layer + tokens * SHAPE.final_norm_activations * 4


def test_cpu_offload_moves_the_state_to_host_memory():
    sharded = estimate_memory(SHAPE, shard=2)
    offloaded = estimate_memory(SHAPE, shard=2, cpu_offload=True)
    assert offloaded.parameters == offloaded.gradients == offloaded.optimizer == 0
    assert offloaded.cpu_bytes == pytest.approx(SHAPE.parameters / 2 * (4 + 4 + 8))
    assert sharded.cpu_bytes == 0 and offloaded.total < sharded.total


def test_tensor_parallel_splits_attention_and_mlp_activations_but_not_the_norms():
    norms = 2 * (2 * SHAPE.hidden + 2)
    assert SHAPE.layer_activations(2) - norms == pytest.approx((SHAPE.layer_activations(1) - norms) / 2)
    assert estimate_memory(SHAPE, tensor=2).parameters == estimate_memory(SHAPE).parameters / 2


def test_the_first_pipeline_stage_holds_a_micro_batch_per_stage():
    shape = TransformerShape(layers=8, hidden=64, heads=4, ffn=256, vocab=64, seq_len=64, micro_batch=4)
    two, four = (estimate_memory(shape, pipeline=p, activation_checkpointing=True) for p in (2, 4))
    assert two.parameters < estimate_memory(shape).parameters
    one_in_flight = estimate_memory(shape, pipeline=4, microbatches_in_flight=1, activation_checkpointing=True)
    assert one_in_flight.activations < four.activations


def test_optimizer_state_per_parameter():
    assert optimizer_state_bytes("adamw") == optimizer_state_bytes("geo_adamw") == 8
    assert optimizer_state_bytes("sgd") == 4
    assert optimizer_state_bytes("geo_muon", matrix_share=0.5) == 6
    share = SHAPE.layers * SHAPE.matrix_parameters / SHAPE.parameters
    muon = estimate_memory(SHAPE, optimizer="muon").optimizer
    assert muon == pytest.approx(SHAPE.parameters * (4 * share + 8 * (1 - share)))


def test_memory_estimate_total_leaves_host_memory_out():
    estimate = MemoryEstimate(1, 2, 3, 4, 5, 6, 7, cpu_bytes=100)
    assert estimate.total == 28


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"shard": 0}, ValueError, "shard=0 must be an integer >= 1"),
    ({"tensor": 2.0}, TypeError, "tensor=2.0 must be an integer"),
    ({"optimizer": "adam"}, ValueError, "optimizer='adam' is not one of"),
    ({"compute_bytes": "2"}, TypeError, "compute_bytes='2' must be a number"),
    ({"param_bytes": 0}, ValueError, "param_bytes=0.0 must be a finite number"),
    ({"activation_checkpointing": "yes"}, TypeError, "activation_checkpointing='yes' must be True or False"),
    ({"cpu_offload": True}, ValueError, "cpu_offload=True needs FSDP2"),
    ({"pipeline": 5}, ValueError, "pipeline=5 stages for 4 layers"),
    ({"microbatches_in_flight": 0}, ValueError, "microbatches_in_flight=0"),
])
def test_bad_arguments_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        estimate_memory(SHAPE, **kwargs)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"layers": 0}, ValueError, "layers=0 must be an integer >= 1"),
    ({"kv_heads": 3}, ValueError, "kv_heads=3 must divide heads=4"),
    ({"hidden": 130}, ValueError, "hidden=130 must divide by heads=4"),
    ({"gated_mlp": "true"}, TypeError, "gated_mlp='true' must be True or False"),
    ({"learned_positions": -1}, ValueError, "learned_positions=-1 must be an integer >= 0"),
])
def test_bad_shapes_are_refused_by_name(kwargs, error, match):
    fields = {"layers": 4, "hidden": 128, "heads": 4, "ffn": 512, "vocab": 100, "seq_len": 16, "micro_batch": 1}
    with pytest.raises(error, match=match):
        TransformerShape(**(fields | kwargs))
    with pytest.raises(ValueError, match=r"matrix_share=2\.0"):
        optimizer_state_bytes("muon", matrix_share=2)


# ----------------------------------------------------------------------------- measured


def test_the_probe_counts_live_tensor_bytes():
    trace = AllocationTrace()
    trace.start()
    a = torch.empty(1000)  # 4000 bytes
    b = torch.empty(2000)  # 8000 more
    del a
    c = torch.empty(500)  # 2000: 10000 live
    del b, c
    live = [v for _, v in replay(trace.stop()).timeline]
    assert max(live) == 12000 and live[-1] == 0


@pytest.mark.ddp
def test_estimate_is_within_15_percent_of_a_measured_2_process_fsdp_run(tmp_path):
    out = tmp_path / "runs.jsonl"
    done = launch_script(WORKER, 2, ["--out", str(out), "--arm", "tiny:1,2,1", "--steps", "2"], tmp_path / "logs",
                         free_port(), timeout=120)
    assert done.returncode == 0, done.stdout[-4000:]
    ranks = json.loads(out.read_text())["ranks"]
    assert len(ranks) == 2 and all(r["plan"] == "FSDP" for r in ranks), ranks
    for rank in ranks:
        estimate = estimate_memory(TransformerShape(**rank["shape"]), shard=2)
        assert estimate.total == pytest.approx(rank["peak_bytes"], rel=0.15), (estimate, rank["peak_blocks"][:8])
