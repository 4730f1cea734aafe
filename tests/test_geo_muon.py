"""``GeoMuon``: routing on the models people train, torch's own numbers per rule, a real Trainer with an LR scheduler,
gradient clipping and an exact resume, FSDP2 and DDP over 2 gloo processes equal to 1 process, and the refusals."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.optim import GeoAdamW, GeoMuon
from lightning_geo.optim.geo_muon import newton_schulz_dtype, orthogonalize
from tests.geo_muon_worker import TokenModel, batches, reference, train
from tests.real_models import build_model

ROOT = Path(__file__).resolve().parents[1]


def _by_rule(optimizer: GeoMuon) -> dict[str, set[str]]:
    rules: dict[str, set[str]] = {}
    for name, rule in optimizer.routes.items():
        rules.setdefault(rule, set()).add(name)
    return rules


# ---------------------------------------------------------------------------------------------------- routing


def test_routing_of_the_demo_lm():
    model = CharLanguageModel("abcdefgh", seq_len=16, n_layer=1, n_head=2, n_embd=16)
    optimizer = GeoMuon(model)
    assert _by_rule(optimizer) == {
        "rows": {"model.wte.weight"},
        "muon": {"model.blocks.0.attn.qkv.weight", "model.blocks.0.attn.proj.weight",
                 "model.blocks.0.mlp.0.weight", "model.blocks.0.mlp.2.weight"},
        "adamw": {n for n, _ in model.named_parameters()} - {"model.wte.weight", "model.blocks.0.attn.qkv.weight",
                                                          "model.blocks.0.attn.proj.weight",
                                                          "model.blocks.0.mlp.0.weight", "model.blocks.0.mlp.2.weight"},
    }
    assert optimizer.route_kinds["model.wpe.weight"] == "position_embedding"
    assert optimizer.route_kinds["model.lm_head.weight"] == "head"
    # matrices decay, embeddings / norms / biases do not
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert decay[id(params["model.blocks.0.attn.qkv.weight"])] == 0.1
    assert decay[id(params["model.lm_head.weight"])] == 0.1
    assert decay[id(params["model.wte.weight"])] == decay[id(params["model.ln_f.bias"])] == 0.0
    assert optimizer.applies_row_density_rule
    assert optimizer.route_counts()["tensors_rows"] == 1
    assert optimizer.summary().startswith("GeoMuon: muon 4 tensors")


def test_routing_of_hf_gpt2_with_a_tied_head_and_conv1d_projections():
    model = build_model("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    optimizer = GeoMuon(model)
    rules = _by_rule(optimizer)
    assert "rows" not in rules  # the token embedding is the head: every row gets a gradient
    assert optimizer.route_kinds["transformer.wte.weight"] == "tied_head"
    assert optimizer.routes["transformer.wte.weight"] == optimizer.routes["transformer.wpe.weight"] == "adamw"
    assert optimizer.route_kinds["transformer.wpe.weight"] == "position_embedding"
    assert rules["muon"] == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                             for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert len(optimizer.routes) == len(list(model.parameters()))  # every parameter, once


def test_routing_of_hf_llama_and_t5():
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    rules = _by_rule(GeoMuon(llama))
    wrapped = nn.ModuleDict({"model": llama})  # as a LightningModule holds it: found through its get_*_embeddings
    assert GeoMuon(wrapped).routes == {f"model.{n}": r for n, r in GeoMuon(llama).routes.items()}
    assert rules["rows"] == {"model.embed_tokens.weight"}
    assert rules["muon"] == {f"model.layers.0.{m}.weight" for m in ("self_attn.q_proj", "self_attn.k_proj",
                             "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert rules["adamw"] == {"lm_head.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight",
                              "model.layers.0.post_attention_layernorm.weight"}

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                             num_decoder_layers=1, num_heads=2))
    optimizer = GeoMuon(t5)
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert optimizer.routes[bias] == "adamw" and optimizer.route_kinds[bias] == "position_embedding"
    tied = t5.lm_head.weight is t5.shared.weight
    assert optimizer.route_kinds["shared.weight"] == ("tied_head" if tied else "token_embedding")
    assert optimizer.routes["encoder.block.0.layer.0.SelfAttention.q.weight"] == "muon"


def test_routing_of_litgpt_with_fused_qkv_and_an_untied_head():
    model = build_model("litgpt")
    optimizer = GeoMuon(model)
    assert optimizer.routes["transformer.wte.weight"] == "rows"
    assert optimizer.routes["lm_head.weight"] == "adamw" and optimizer.route_kinds["lm_head.weight"] == "head"
    assert optimizer.routes["transformer.h.0.attn.qkv.weight"] == "muon"  # the fused matrix, whole
    assert _by_rule(optimizer)["adamw"] >= {"transformer.ln_f.weight", "transformer.h.1.norm_2.weight"}
    assert optimizer.newton_schulz_flops() > 0


def test_routes_override_first_match_wins_and_frozen_parameters_are_skipped():
    model = TokenModel()
    model.norm.weight.requires_grad_(False)
    optimizer = GeoMuon(model, routes={"down.weight": "adamw", r"(up|down)\.weight": "muon", "lm_head": "muon",
                                       "wte": "adamw"}, embedding_rule="rows")
    assert optimizer.routes == {"wte.weight": "adamw", "up.weight": "muon", "up.bias": "adamw",
                                "down.weight": "adamw", "down.bias": "adamw", "norm.bias": "adamw",
                                "lm_head.weight": "muon"}
    assert optimizer.route_kinds["down.weight"] == "matrix" and optimizer.route_kinds["wte.weight"] == "token_embedding"
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 7
    assert GeoMuon(TokenModel(), embedding_rule="adamw").routes["wte.weight"] == "adamw"


def test_newton_schulz_flops_follow_the_documented_formula():
    optimizer = GeoMuon(nn.Sequential(nn.Linear(3, 5, bias=False)), ns_steps=2)  # weight (5, 3): A=3, B=5
    assert optimizer.newton_schulz_flops() == 2 * (4 * 3 * 3 * 5 + 2 * 3**3)


# ------------------------------------------------------------------------------------------------ the numbers


def test_newton_schulz_in_fp32_orthogonalises_as_torchs_bf16_iteration_does():
    torch.manual_seed(0)
    for shape in ((16, 48), (48, 16)):
        update = torch.randn(shape)
        ours = orthogonalize(update, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)
        theirs = orthogonalize(update, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.bfloat16)
        assert ours.dtype == torch.float32 and ours.shape == update.shape
        torch.testing.assert_close(ours, theirs.float(), atol=0.05, rtol=0.05)
        singular = torch.linalg.svdvals(ours)
        assert singular.min() > 0.5 and singular.max() < 1.3  # the quintic's band around 1, not exact 1


def test_ns_dtype_auto_is_bf16_off_the_cpu_and_on_cpus_with_bf16_instructions(monkeypatch):
    import lightning_geo.optim.geo_muon as geo_muon

    assert newton_schulz_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert newton_schulz_dtype("float32", torch.device("cuda")) == torch.float32
    monkeypatch.setattr(geo_muon, "cpu_has_native_bf16", lambda: False)
    assert newton_schulz_dtype("auto", torch.device("cpu")) == torch.float32
    assert newton_schulz_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(geo_muon, "cpu_has_native_bf16", lambda: True)
    assert newton_schulz_dtype("auto", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="`ns_dtype` must be one of"):
        GeoMuon(TokenModel(), ns_dtype="fp8")


def test_each_rule_takes_exactly_torchs_muon_adamw_and_geoadamws_row_steps():
    torch.manual_seed(0)
    model = TokenModel()
    twin = TokenModel()
    twin.load_state_dict(model.state_dict())
    lr, betas = 0.02, (0.9, 0.95)
    optimizer = GeoMuon(model, lr=lr, ns_dtype="bfloat16")  # torch's Muon orthogonalises in bf16
    muon = torch.optim.Muon([twin.up.weight, twin.down.weight], lr=lr, weight_decay=0.1,
                            adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": [twin.lm_head.weight], "weight_decay": 0.1},
                               {"params": [twin.up.bias, twin.down.bias, twin.norm.weight, twin.norm.bias],
                                "weight_decay": 0.0}], lr=lr, betas=betas)
    rows = GeoAdamW([twin.wte.weight], lr=lr, betas=betas, weight_decay=0.0)

    class Both(torch.optim.Optimizer):
        def __init__(self) -> None:
            self.param_groups, self.state = [], {}

        def step(self, closure: Any = None) -> None:
            for opt in (muon, adamw, rows):
                opt.step()

        def zero_grad(self, set_to_none: bool = True) -> None:
            for opt in (muon, adamw, rows):
                opt.zero_grad()

    train(model, optimizer)
    train(twin, Both())
    for (name, mine), theirs in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(mine, theirs), name


def test_a_grad_scaler_unscales_every_group_exactly():
    torch.manual_seed(0)
    plain, scaled = TokenModel(), TokenModel()
    scaled.load_state_dict(plain.state_dict())
    train(plain, GeoMuon(plain, lr=0.02))
    optimizer = GeoMuon(scaled, lr=0.02)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for batch in batches():
        loss = nn.functional.cross_entropy(scaled(batch[:, :-1]), batch[:, 1:].flatten())
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # unscale_ reads every param group
        scaler.update()
        optimizer.zero_grad()
    for (name, a), b in zip(plain.named_parameters(), scaled.parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.filterwarnings("ignore:GeoAdamW. no parameter in a `row_wise` group has untouched rows")
def test_mark_positional_takes_a_row_rule_parameter_off_it():
    model = TokenModel()
    optimizer = GeoMuon(model)
    optimizer.mark_positional(model.wte.weight, "test")  # forwarded to the row rule
    optimizer.mark_positional(model.up.weight, "test")  # not under the row rule: nothing to do
    with pytest.raises(ValueError, match="`param` is not a parameter of this optimizer"):
        optimizer.mark_positional(nn.Parameter(torch.zeros(2)))
    train(model, optimizer)


# -------------------------------------------------------------------------------------------- a real Trainer


class MuonLM(pl.LightningModule):
    """``TokenModel`` on 3 batches per epoch (dataset order), GeoMuon with ``lr / (1 + step)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TokenModel()
        self.losses: list[float] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        tokens = batch[0]
        loss = nn.functional.cross_entropy(self.net(tokens[:, :-1]), tokens[:, 1:].flatten())
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = GeoMuon(self, lr=0.02)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.cat(batches())), batch_size=8)


def _fit(tmp_path: Path, ckpt_path: Path | None = None) -> tuple[pl.Trainer, MuonLM]:
    """6 steps with gradient clipping; a checkpoint every 3 steps under ``tmp_path / "ckpt"``."""
    model = MuonLM()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=6, logger=False, callbacks=[checkpoints],
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=0.5,
                         default_root_dir=tmp_path)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[pl.Trainer, MuonLM, Path]:
    tmp_path = tmp_path_factory.mktemp("full")
    return (*_fit(tmp_path), tmp_path / "ckpt" / "epoch=0-step=3.ckpt")


def test_trainer_run_lowers_the_loss_and_the_scheduler_scales_every_group(uninterrupted):
    trainer, model, _ = uninterrupted
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, GeoMuon) and {g["rule"] for g in optimizer.param_groups} == {"muon", "adamw", "rows"}
    first, second = model.losses[:3], model.losses[3:]  # the same 3 batches, twice
    assert sum(second) < sum(first)
    for group in optimizer.param_groups:
        assert math.isclose(group["lr"], 0.02 / 7) and group["initial_lr"] == 0.02


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_resume_from_a_lightning_checkpoint_is_exact(uninterrupted, tmp_path):
    full_trainer, full_model, checkpoint = uninterrupted
    resumed, model = _fit(tmp_path, ckpt_path=checkpoint)  # as if the run had stopped after step 3
    assert model.losses == full_model.losses[3:]
    for (name, mine), theirs in zip(model.state_dict().items(), full_model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name
    mine, theirs = resumed.optimizers[0].state_dict(), full_trainer.optimizers[0].state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    for pid, state in theirs["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(mine["state"][pid][key]), torch.as_tensor(value)), (pid, key)


def test_the_routing_is_written_to_tensorboard_once(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=logger, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(MuonLM())
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"tensors": 0})
    events.Reload()
    assert "geo/optim/routing/text_summary" in events.Tags()["tensors"]
    (written,) = events.Tensors("geo/optim/routing/text_summary")  # once, not per step
    table = written.tensor_proto.string_val[0].decode()
    assert "| `net.up.weight` | (15, 16) | matrix | muon |" in table and "| `net.wte.weight` |" in table


# ----------------------------------------------------------------------------------------------- 2 processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_two_processes_fsdp2_and_ddp_match_one_process(tmp_path):
    # two plain processes with torchrun's environment (no launcher process to start)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    command = [sys.executable, str(ROOT / "tests" / "geo_muon_worker.py"), "--out", str(tmp_path)]
    workers = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        errors = [worker.communicate(timeout=300)[1] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, stderr in zip(workers, errors, strict=True):
        assert worker.returncode == 0, stderr[-4000:]
    result = torch.load(tmp_path / "result.pt")
    assert set(result["types"].values()) == {"DTensor"}  # every parameter really was sharded
    assert result["routes"]["up.weight"] == "muon" and result["routes"]["wte.weight"] == "rows"
    expected = reference()
    torch.manual_seed(0)
    initial = dict(TokenModel().named_parameters())
    for layout in ("fsdp2", "ddp"):
        for name, value in expected.items():
            assert (value - initial[name]).abs().max() > 1e-2, name  # it moved far more than the tolerance
            torch.testing.assert_close(result[layout][name], value, rtol=1e-5, atol=1e-6, msg=f"{layout} {name}")


# ------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -1.0}, ValueError, r"lr=-1.0 must be a finite number in \[0.0, inf\]"),
        ({"weight_decay": "0.1"}, TypeError, r"weight_decay='0.1' must be a number, got str"),
        ({"momentum": 1.0}, ValueError, r"momentum=1.0 must be a finite number in \[0.0, 1.0\)"),
        ({"nesterov": "yes"}, TypeError, r"`nesterov` must be a bool"),
        ({"ns_steps": 0}, ValueError, r"`ns_steps` must be an int in \[1, 99\], got 0"),
        ({"ns_coefficients": (1.0, 2.0)}, ValueError, r"`ns_coefficients` must be three numbers"),
        ({"adjust_lr_fn": "rms"}, ValueError, r"`adjust_lr_fn` must be one of \('match_rms_adamw', 'original'\)"),
        ({"betas": (0.9,)}, ValueError, r"`betas` must be a pair"),
        ({"betas": (0.9, 1.0)}, ValueError, r"betas\[1\]=1.0 must be a finite number in \[0.0, 1.0\)"),
        ({"foreach": 1}, TypeError, r"`foreach` must be None or a bool"),
        ({"embedding_rule": "muon"}, ValueError, r"`embedding_rule` must be one of \('rows', 'adamw'\)"),
        ({"routes": {"up": "sgd"}}, ValueError, r"`routes\['up'\]` must be one of \('muon', 'adamw', 'rows'\)"),
        ({"routes": {"nothing_here": "adamw"}}, ValueError, r"\['nothing_here'\] match no trainable parameter"),
        ({"routes": {"norm": "muon"}}, ValueError, r"sends 'norm.weight' of shape \(16,\) to 'muon'"),
        ({"routes": {"(": "adamw"}}, ValueError, r"key '\(' is not a valid regular expression"),
        ({"routes": ["up"]}, TypeError, r"`routes` must be a dict"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        GeoMuon(TokenModel(), **kwargs)


def test_a_model_is_required_not_its_parameters():
    with pytest.raises(TypeError, match=r"`model` must be an nn.Module \(pass `self` in configure_optimizers\)"):
        GeoMuon(TokenModel().parameters())  # type: ignore[arg-type]
    frozen = TokenModel().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        GeoMuon(frozen)


def test_a_model_without_hidden_matrices_warns_once_and_uses_adamw_for_everything():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.warns(UserWarning, match="no 2-D hidden weight matrix for Muon .* every parameter is updated by AdamW"):
        optimizer = GeoMuon(model)
    assert set(optimizer.routes.values()) == {"adamw"}
    model(torch.tensor([1, 2])).sum().backward()
    optimizer.step()
    with pytest.warns(UserWarning, match="no 2-D hidden weight matrix"):
        assert GeoMuon(model, routes={"0": "rows"}).routes == {"0.weight": "rows", "1.weight": "adamw",
                                                              "1.bias": "adamw"}


def test_sparse_gradients_take_the_row_rule_or_fail_clearly():
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"'0.weight' gets sparse gradients .* only 'rows' takes sparse gradients"):
        GeoMuon(model, embedding_rule="adamw")
    optimizer = GeoMuon(model)  # rows: GeoAdamW's row rule takes them
    model(torch.tensor([1, 2])).sum().backward()
    before = model[0].weight.detach().clone()
    optimizer.step()
    assert torch.equal(model[0].weight[3:], before[3:]) and not torch.equal(model[0].weight[1:3], before[1:3])

    extra = nn.Embedding(5, 4, sparse=True)
    optimizer.add_param_group({"params": [extra.weight]})  # no rule: "adamw"
    extra(torch.tensor([0])).sum().backward()
    with pytest.raises(RuntimeError, match="has a sparse gradient, which its rule 'adamw' cannot take"):
        optimizer.step()
    with pytest.raises(ValueError, match=r"`rule` must be one of \('muon', 'adamw', 'rows'\), got 'sgd'"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "rule": "sgd"})
    with pytest.raises(ValueError, match=r"a 'muon' group takes 2-D matrices only, got shape \(2,\)"):
        optimizer.add_param_group({"params": nn.Parameter(torch.zeros(2)), "rule": "muon"})
    assert len(optimizer.param_groups) == 4  # muon, adamw, rows, the extra one: the refused groups were not added


def test_an_old_torch_is_refused_with_the_version_needed(monkeypatch):
    monkeypatch.delattr(torch.optim, "_muon")
    monkeypatch.setitem(sys.modules, "torch.optim._muon", None)
    with pytest.raises(ImportError, match=r"GeoMuon needs torch >= 2.9 \(torch.optim.Muon\)"):
        GeoMuon(TokenModel())
