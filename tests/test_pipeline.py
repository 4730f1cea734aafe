"""Pipeline parallelism in ``strategy="geo_hybrid"``: the stage split, the adapters, the refusals, a one-stage
schedule in this process, and 2-/4-process gloo runs of the demo LM whose losses must equal a one-process run's."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_geo  # noqa: F401  (registers "geo_hybrid")
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.strategies import GeoHybridStrategy, PipelineParts
from lightning_geo.strategies.pipeline import (
    OnAnotherStage,
    PipelineRunner,
    build_stage_modules,
    parameter_stages,
    pipeline_parts,
    split_blocks,
)
from lightning_geo.strategies.planner import Plan, PlanReport
from tests.helpers import TinyModel
from tests.test_geo_hybrid import run_worker

WORKER = Path(__file__).resolve().parent / "pipeline_worker.py"
LOSSES = {"rel": 1e-5, "abs": 1e-6}  # fp32 reduction order: micro-batch means vs one batch mean


def _demo(n_layer: int = 4) -> CharLanguageModel:
    torch.manual_seed(0)
    return CharLanguageModel("abcdefgh", seq_len=8, n_layer=n_layer, n_head=2, n_embd=16)


def _run_stages(model: nn.Module, num_stages: int, x: torch.Tensor) -> tuple[torch.Tensor, list[set[str]]]:
    """Every stage built from its own copy of ``model``, chained in one process: the output and each stage's
    parameter names."""
    names = []
    for k in range(num_stages):
        piece = copy.deepcopy(model)
        (stage,) = build_stage_modules(piece, pipeline_parts(piece), [k], num_stages)
        x = stage(x)
        names.append({n for n, _ in piece.named_parameters()})
    return x, names


# ----------------------------------------------------------------------------------------------- the split


def test_blocks_are_split_contiguously_and_balanced_by_count():
    assert split_blocks(4, 2) == [range(0, 2), range(2, 4)]
    assert split_blocks(5, 2) == [range(0, 3), range(3, 5)]  # the first stages take the extra block
    assert split_blocks(4, 4) == [range(k, k + 1) for k in range(4)]
    with pytest.raises(ValueError, match="4 stages need at least 4 blocks, the model has 3"):
        split_blocks(3, 4)


@pytest.mark.parametrize("num_stages", [2, 3, 4])
def test_demo_lm_stages_hold_every_parameter_once_and_chain_to_the_whole_model(num_stages):
    model = _demo()
    x = torch.randint(0, 8, (2, 8))
    out, names = _run_stages(model, num_stages, x)
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    every = {n for n, _ in model.named_parameters()}
    assert set().union(*names) == every and sum(len(n) for n in names) == len(every)  # each on exactly one stage
    blocks = [sorted({int(n.split(".")[2]) for n in s if n.startswith("model.blocks.")}) for s in names]
    assert blocks == [list(r) for r in split_blocks(4, num_stages)]
    assert {n for n in names[0] if not n.startswith("model.blocks.")} == {"model.wte.weight", "model.wpe.weight"}
    assert {n for n in names[-1] if not n.startswith("model.blocks.")} == {
        "model.ln_f.weight", "model.ln_f.bias", "model.lm_head.weight"}


def test_the_rest_of_the_model_becomes_placeholders_that_say_where_it_runs():
    model = _demo()
    build_stage_modules(model, pipeline_parts(model), [1], 2)
    assert isinstance(model.model.wte, OnAnotherStage) and isinstance(model.model.blocks[1], OnAnotherStage)
    assert not isinstance(model.model.blocks[2], OnAnotherStage)
    with pytest.raises(RuntimeError, match=r"model\.wte runs on pipeline stage 0, not on this rank"):
        model(torch.zeros(1, 4, dtype=torch.long))


def test_parameter_stages_names_a_parameter_outside_the_parts_and_tied_weights():
    model = _demo(2)
    parts = pipeline_parts(model)
    model.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"parameter 'extra.weight' is in none of pipeline_parts\(\)"):
        parameter_stages(model, parts, 2)
    del model.extra
    model.model.lm_head.weight = model.model.wte.weight  # tied
    with pytest.raises(ValueError, match="tied weights cannot be split across stages"):
        parameter_stages(model, pipeline_parts(model), 2)


def test_a_module_the_adapters_do_not_know_is_refused_naming_the_contract():
    with pytest.raises(ValueError, match=r"TinyModel has no pipeline_parts\(\) method .* PipelineParts\(embed="):
        pipeline_parts(TinyModel())


def test_a_modules_own_pipeline_parts_is_used_with_the_default_batch_split_and_logging():
    class Own(TinyModel):
        def pipeline_parts(self) -> PipelineParts:
            return PipelineParts(embed=self.inp, blocks=self.blocks, head=self.out, loss=F.mse_loss)

    parts = pipeline_parts(Own(num_blocks=2))
    assert parts.split_batch((torch.ones(1), torch.zeros(1), "extra"))[1].item() == 0
    assert parts.on_loss is not None
    with pytest.raises(TypeError, match=r"give PipelineParts\(split_batch=\.\.\.\)"):
        parts.split_batch({"x": 1})


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hugging_face_models_split_into_stages_that_chain_to_the_models_logits(arch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if arch == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False))
    else:
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=64, n_positions=32, n_embd=32, n_layer=4, n_head=2, tie_word_embeddings=False))
    holder = nn.Module()
    holder.hf = hf.eval()
    ids = torch.randint(0, 64, (2, 12))
    out, names = _run_stages(holder, 2, ids)
    torch.testing.assert_close(out, hf(ids).logits, rtol=1e-5, atol=1e-5)
    assert sum(len(n) for n in names) == len(dict(holder.named_parameters()))
    parts = pipeline_parts(holder)
    labels = ids.clone()
    assert torch.allclose(parts.loss(hf(ids).logits, labels), hf(ids, labels=labels).loss)
    assert parts.split_batch({"input_ids": ids, "labels": labels})[1] is labels


def test_a_tied_hugging_face_head_is_refused():
    transformers = pytest.importorskip("transformers")
    holder = nn.Module()
    holder.hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16,
                                                                     n_layer=2, n_head=2))
    with pytest.raises(ValueError, match="tie_word_embeddings=False"):
        parameter_stages(holder, pipeline_parts(holder), 2)


# ----------------------------------------------------------------------------------------------- one stage


@pytest.fixture
def one_rank_pipeline_mesh():
    from torch.distributed.device_mesh import init_device_mesh

    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("pipeline",))
    finally:
        torch.distributed.destroy_process_group()


def test_one_stage_schedule_gives_the_batch_loss_and_gradients_of_a_plain_backward(one_rank_pipeline_mesh):
    model = _demo(2)
    reference = copy.deepcopy(model)
    x, y = torch.randint(0, 8, (4, 8)), torch.randint(0, 8, (4, 8))
    expected = F.cross_entropy(reference(x).flatten(0, 1), y.flatten())
    (expected / 2).backward()  # the mean over an accumulation of two batches
    parts = pipeline_parts(model)
    stages = build_stage_modules(model, parts, [0], 1)
    runner = PipelineRunner(stages, [0], 1, parts, one_rank_pipeline_mesh, torch.device("cpu"), schedule="1f1b",
                            n_microbatches=2)
    loss = runner.train_step((x, y), accumulate=2)
    torch.testing.assert_close(loss, expected.detach(), **{"rtol": 1e-5, "atol": 1e-6})
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(runner.eval_step((x, y)), expected.detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"n_microbatches=2 must divide the batch size .* got a batch of 3"):
        runner.train_step((x[:3], y[:3]))


# ----------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pipeline": 0}, "pipeline must be a number of stages >= 1"),
        ({"pipeline": 2, "pipeline_schedule": "zero_bubble"}, "pipeline_schedule must be one of"),
        ({"pipeline": 2, "n_microbatches": 0}, "n_microbatches must be a positive integer"),
        ({"pipeline": 4, "n_microbatches": 2}, "1F1B schedule needs n_microbatches >= pipeline stages"),
    ],
)
def test_bad_pipeline_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeoHybridStrategy(**kwargs)


def test_a_pipeline_that_does_not_divide_the_world_fails_at_setup(tmp_path):
    trainer = pl.Trainer(strategy=GeoHybridStrategy(pipeline=2), accelerator="cpu", devices=1, max_steps=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="pipeline=2 stages must divide the 1 ranks of the run"):
        trainer.fit(TinyModel())
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _pipelined_strategy(model: pl.LightningModule, **kwargs) -> GeoHybridStrategy:
    """A strategy that has planned two stages (as on two processes), holding ``model``."""
    strategy = GeoHybridStrategy(pipeline=2, **kwargs)
    plan = Plan(1, 1, 1, pipeline=2)
    strategy.report = PlanReport(plan, ())
    strategy._lightning_module = model
    return strategy


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("configure_model", r"splits the module itself, but .* overrides configure_model\(\)"),
        ("manual", r"manual optimization \(automatic_optimization=False\) cannot drive it"),
        ("16-mixed", "cannot scale the loss before it; use precision='bf16-mixed'"),
        ("single-file", "use save_distributed_checkpoint=True"),
    ],
)
def test_what_a_pipeline_cannot_run_is_refused_at_setup(setting, match):
    from lightning.pytorch.plugins.precision import MixedPrecision

    class Configured(CharLanguageModel):
        def configure_model(self) -> None:
            pass

    model = Configured("ab", n_layer=2) if setting == "configure_model" else _demo(2)
    model.automatic_optimization = setting != "manual"
    strategy = _pipelined_strategy(model, save_distributed_checkpoint=setting != "single-file")
    if setting == "16-mixed":
        strategy.precision_plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ValueError, match=match):
        strategy._check_pipeline_setup()


def test_a_forced_mesh_must_fill_the_world_with_the_stages():
    from lightning_geo.strategies.topology import cpu_node_topology, single_node

    strategy = GeoHybridStrategy(pipeline=2, mesh=(1, 2, 1))
    with pytest.raises(ValueError, match=r"mesh=\(1, 2, 1\) has 2 x pipeline=2 = 4 ranks but the run has 2"):
        strategy._make_plan(single_node(cpu_node_topology(2)), strategy._model_size_arg or _size())
    report = GeoHybridStrategy(pipeline=2, mesh=(1, 2, 1))._make_plan(single_node(cpu_node_topology(4)), _size())
    assert report.chosen.pipeline == 2 and report.chosen.mesh_shape == (1, 2, 1) and report.chosen.name == "PP2 + FSDP"


def _size():
    from lightning_geo.strategies import ModelSize

    return ModelSize(1e6, num_blocks=4)


# ----------------------------------------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The demo LM (4 blocks) in one process with Lightning's default strategy, validated at the end."""
    return run_worker(tmp_path_factory.mktemp("reference"), 0, "--validate", worker=WORKER)


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory) -> tuple[Path, dict]:
    """pipeline=2 on 2 processes (1F1B, 4 micro-batches), a checkpoint every 2 steps, validated at the end."""
    out = tmp_path_factory.mktemp("two_stages")
    return out, run_worker(out, 2, "--pipeline", "2", "--validate", "--every", "2", worker=WORKER)


@pytest.mark.ddp
def test_two_stages_on_two_processes_match_one_process(reference, two_stages):
    _, result = two_stages
    assert result["plan"] == "PP2" and result["world_size"] == 2
    assert result["applied"]["blocks"] == [[0, 1]] and result["applied"]["n_microbatches"] == 4  # rank 0's stage
    assert result["losses"] == pytest.approx(reference["losses"], **LOSSES)
    assert result["val_loss"] == pytest.approx(reference["val_loss"], **LOSSES)


@pytest.mark.ddp
def test_a_pipeline_checkpoint_resumes_with_the_same_losses(tmp_path, two_stages):
    """Each rank saves its stage into the distributed checkpoint; the resumed run (under the GPipe schedule: the
    schedule does not change the maths) continues with the losses of the uninterrupted one."""
    out, full = two_stages
    checkpoint = out / "ckpt" / "epoch=0-step=2.ckpt"
    assert len(list(checkpoint.glob("*.distcp"))) == 2
    resumed = run_worker(tmp_path, 2, "--pipeline", "2", "--schedule", "gpipe", "--resume", str(checkpoint),
                         worker=WORKER)
    assert resumed["global_step"] == 4
    assert resumed["losses"] == pytest.approx(full["losses"][2:], **LOSSES)


@pytest.mark.ddp
def test_two_stages_times_fsdp_on_four_processes_match_one_process(tmp_path, reference):
    result = run_worker(tmp_path, 4, "--pipeline", "2", "--mesh", "1,2,1", "--validate", worker=WORKER)
    assert result["plan"] == "PP2 + FSDP" and result["world_size"] == 4
    assert result["applied"]["units"] == ["embed", "blocks", "head"]
    assert result["losses"] == pytest.approx(reference["losses"], **LOSSES)
    assert result["val_loss"] == pytest.approx(reference["val_loss"], **LOSSES)


@pytest.mark.ddp
def test_four_stages_on_four_processes_match_one_process(tmp_path, reference):
    result = run_worker(tmp_path, 4, "--pipeline", "4", worker=WORKER)
    assert result["plan"] == "PP4" and result["applied"]["blocks"] == [[0]] and result["applied"]["n_microbatches"] == 8
    assert result["losses"] == pytest.approx(reference["losses"], **LOSSES)


@pytest.mark.ddp
def test_interleaved_stages_with_accumulation_and_gradient_clipping_match_one_process(tmp_path):
    """Two stages per rank (rank 0 holds stages 0 and 2 of 4), gradients accumulated over two batches, and a
    clipping norm small enough to change every step: it must be the whole model's norm, over all stages."""
    options = ("--clip", "1e-5", "--accumulate", "2")
    clipped = run_worker(tmp_path / "one", 0, *options, worker=WORKER)
    result = run_worker(tmp_path / "two", 2, "--pipeline", "2", "--schedule", "interleaved_1f1b", *options,
                        worker=WORKER)
    assert result["applied"]["pipeline_stages"] == [0, 2] and result["applied"]["blocks"] == [[0], [2]]
    assert result["losses"] == pytest.approx(clipped["losses"], **LOSSES)


@pytest.mark.ddp
@pytest.mark.four_processes
def test_two_stages_times_tensor_parallel_with_activation_checkpointing_match_one_process(tmp_path, reference):
    result = run_worker(tmp_path, 4, "--pipeline", "2", "--mesh", "1,1,2", "--activation-checkpointing", "--validate",
                        worker=WORKER)
    assert result["plan"] == "PP2 + TP2"
    assert result["applied"]["tensor_parallel_modules"] == 4 and result["applied"]["activation_checkpointing"]
    assert result["losses"] == pytest.approx(reference["losses"], **LOSSES)
    assert result["val_loss"] == pytest.approx(reference["val_loss"], **LOSSES)
