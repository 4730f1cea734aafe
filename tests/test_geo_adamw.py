"""GeoAdamW: AdamW on dense fully-touched params, lazy rows, per-row bias correction and scaling, sparse grads."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_geo.optim import GeoAdamW, geo_adamw
from lightning_geo.optim.row_modes import DENSE, POSITIONAL, ROWS
from lightning_geo.utils.step_cost import StepCostCounter


def _dense_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(11, 5), nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, tokens=None) -> None:
    for step in range(steps):
        idx = torch.arange(11) if tokens is None else tokens[step]
        optimizer.zero_grad()
        model(idx).pow(2).mean().backward()
        optimizer.step()


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("decay_rows", ["touched", "all"])
def test_equals_adamw_on_dense_fully_touched_parameters(foreach, decay_rows):
    reference, model = _dense_model(), _dense_model()
    adamw = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1)
    geo = GeoAdamW(
        model.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, foreach=foreach, decay_rows=decay_rows
    )
    _train(reference, adamw, 60)
    _train(model, geo, 60)
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


@pytest.mark.parametrize("rows_on_host", [True, False])
def test_untouched_rows_keep_values_and_moments_while_adamw_drifts(rows_on_host):
    torch.manual_seed(0)
    geo_emb, adamw_emb = nn.Embedding(10, 4), nn.Embedding(10, 4)
    adamw_emb.load_state_dict(geo_emb.state_dict())
    geo = GeoAdamW(geo_emb.parameters(), lr=0.1, weight_decay=0.1, rows_on_host=rows_on_host)
    adamw = torch.optim.AdamW(adamw_emb.parameters(), lr=0.1, weight_decay=0.1)
    for emb, opt in ((geo_emb, geo), (adamw_emb, adamw)):
        emb(torch.tensor([1, 2])).sum().backward()
        opt.step()
        opt.zero_grad()
    rows_before = geo_emb.weight.detach()[1].clone()
    moments_before = geo.state[geo_emb.weight]["exp_avg"][1].clone()
    adamw_before = adamw_emb.weight.detach()[1].clone()
    for _ in range(20):  # only row 3 is touched from now on
        for emb, opt in ((geo_emb, geo), (adamw_emb, adamw)):
            emb(torch.tensor([3])).sum().backward()
            opt.step()
            opt.zero_grad()
    assert torch.equal(geo_emb.weight.detach()[1], rows_before)
    assert torch.equal(geo.state[geo_emb.weight]["exp_avg"][1], moments_before)
    assert geo.state[geo_emb.weight]["row_step"].tolist() == [0, 1, 1, 20, 0, 0, 0, 0, 0, 0]
    # The problem GeoAdamW fixes: AdamW keeps moving the untouched row (far more than one step of 0.1).
    assert (adamw_emb.weight.detach()[1] - adamw_before).abs().max() > 0.5


@pytest.mark.parametrize("rows_on_host", [True, False])
def test_decay_rows_all_shrinks_untouched_rows_by_adamw_decay_only(rows_on_host):
    emb = nn.Embedding(6, 3)
    opt = GeoAdamW(emb.parameters(), lr=0.1, weight_decay=0.5, decay_rows="all", rows_on_host=rows_on_host)
    emb(torch.tensor([1])).sum().backward()
    opt.step()
    opt.zero_grad()
    before = emb.weight.detach()[4].clone()
    for _ in range(3):
        emb(torch.tensor([1])).sum().backward()
        opt.step()
        opt.zero_grad()
    torch.testing.assert_close(emb.weight.detach()[4], before * (1 - 0.1 * 0.5) ** 3)


def test_row_bias_correction_and_frequency_scaling():
    """A row first touched at step k takes a full Adam step lr * min(max_scale, (1 / k) ** -power)."""
    emb = nn.Embedding(4, 2)
    opt = GeoAdamW(
        emb.parameters(), lr=0.01, weight_decay=0.0, eps=1e-12, row_scale_power=0.5, max_row_scale=3.0, density_power=0
    )
    for step in range(1, 17):
        rows = torch.tensor([3]) if step not in (4, 16) else torch.tensor([3, 1 if step == 4 else 2])
        before = emb.weight.detach().clone()
        emb(rows).sum().backward()
        opt.step()
        opt.zero_grad()
        moved = (before - emb.weight.detach()).abs()
        if step == 4:  # row 1: hit rate 1/4 -> scale 2
            torch.testing.assert_close(moved[1], torch.full((2,), 0.02))
        if step == 16:  # row 2: hit rate 1/16 -> scale 4, capped at 3
            torch.testing.assert_close(moved[2], torch.full((2,), 0.03))
    torch.testing.assert_close(moved[3], torch.full((2,), 0.01))  # row 3, touched every step: plain Adam


def test_power_zero_disables_row_scaling():
    emb = nn.Embedding(4, 2)
    opt = GeoAdamW(emb.parameters(), lr=0.01, weight_decay=0.0, eps=1e-12, row_scale_power=0.0, density_power=0.0)
    for step in range(1, 9):
        before = emb.weight.detach().clone()
        emb(torch.tensor([1] if step < 8 else [1, 3])).sum().backward()
        opt.step()
        opt.zero_grad()
    torch.testing.assert_close((before - emb.weight.detach()).abs()[3], torch.full((2,), 0.01))


@pytest.mark.parametrize("rows_on_host", [True, False])
def test_parameter_density_factor(rows_on_host):
    """A parameter touching a quarter of its rows per step takes 0.25 ** -0.5 = 2x steps (EMA of a constant)."""
    emb = nn.Embedding(8, 2)
    opt = GeoAdamW(emb.parameters(), lr=0.01, weight_decay=0.0, eps=1e-12, row_scale_power=0.0,
                   rows_on_host=rows_on_host)
    for step in range(6):
        before = emb.weight.detach().clone()
        emb(torch.tensor([1, 2] if step % 2 == 0 else [3, 4])).sum().backward()
        opt.step()
        opt.zero_grad()
        moved = (before - emb.weight.detach()).abs()
        assert torch.allclose(moved[[1, 2] if step % 2 == 0 else [3, 4]], torch.full((2, 2), 0.02))
        assert moved[5:].abs().sum() == 0 and moved[0].abs().sum() == 0
    assert opt.state[emb.weight]["density_ema"].item() == pytest.approx(0.25)


def test_sparse_gradients_match_dense_gradients():
    torch.manual_seed(0)
    dense, sparse = nn.Embedding(30, 4), nn.Embedding(30, 4, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    generator = torch.Generator().manual_seed(1)
    tokens = [(torch.rand(6, generator=generator) ** 3 * 30).long() for _ in range(40)]
    for decay_rows in ("touched", "all"):
        opt_dense = GeoAdamW(dense.parameters(), lr=0.05, weight_decay=0.1, decay_rows=decay_rows)
        opt_sparse = GeoAdamW(sparse.parameters(), lr=0.05, weight_decay=0.1, decay_rows=decay_rows)
        weights = torch.arange(1.0, 5.0)
        for idx in tokens:
            for emb, opt in ((dense, opt_dense), (sparse, opt_sparse)):
                opt.zero_grad()
                (emb(idx) * weights).sum().backward()
                opt.step()
        torch.testing.assert_close(sparse.weight, dense.weight, atol=1e-6, rtol=0)
        assert torch.equal(opt_sparse.state[sparse.weight]["row_step"], opt_dense.state[dense.weight]["row_step"])


def test_touched_rows_only_and_masked_whole_tensor_updates_agree():
    generator = torch.Generator().manual_seed(4)
    tokens = [(torch.rand(4, generator=generator) ** 2 * 11).long() for _ in range(40)]
    results = []
    for on_host in (True, False):
        model = _dense_model()
        _train(model, GeoAdamW(model.parameters(), lr=0.02, weight_decay=0.1, rows_on_host=on_host), 40, tokens)
        results.append(list(model.parameters()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_foreach_and_single_tensor_paths_agree_with_untouched_rows():
    generator = torch.Generator().manual_seed(2)
    tokens = [(torch.rand(4, generator=generator) ** 2 * 11).long() for _ in range(30)]
    models = [_dense_model(), _dense_model()]
    opts = [GeoAdamW(m.parameters(), lr=0.02, foreach=flag, rows_on_host=False)
            for m, flag in zip(models, (False, True), strict=True)]
    for model, opt in zip(models, opts, strict=True):
        _train(model, opt, 30, tokens)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0)


def test_state_dict_round_trip_continues_identically():
    generator = torch.Generator().manual_seed(3)
    tokens = [(torch.rand(4, generator=generator) ** 2 * 11).long() for _ in range(20)]
    model = _dense_model()
    opt = GeoAdamW(model.parameters(), lr=0.02)
    _train(model, opt, 10, tokens[:10])
    clone = copy.deepcopy(model)
    restored = GeoAdamW(clone.parameters(), lr=0.5)  # the loaded state dict sets lr back to 0.02
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert restored.param_groups[0]["lr"] == 0.02
    modes = [opt.state[p].get("row_mode") for p in model.parameters()]
    assert modes[0] is not None and modes == [restored.state[p].get("row_mode") for p in clone.parameters()]
    _train(model, opt, 10, tokens[10:])
    _train(clone, restored, 10, tokens[10:])
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


def test_row_step_stays_float32_for_low_precision_parameters():
    emb = nn.Embedding(600, 2).to(torch.bfloat16)
    opt = GeoAdamW(emb.parameters(), lr=0.01)
    for _ in range(3):
        emb(torch.tensor([1, 2])).float().sum().backward()
        opt.step()
        opt.zero_grad()
    opt.state[emb.weight]["row_step"][0] = 1001.0  # not representable in bfloat16
    fresh = GeoAdamW(emb.parameters(), lr=0.01)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    row_step = fresh.state[emb.weight]["row_step"]
    assert row_step.dtype == torch.float32 and row_step[0].item() == 1001.0
    assert fresh.state[emb.weight]["exp_avg"].dtype == torch.bfloat16
    assert fresh.state[emb.weight]["density_ema"].dtype == torch.float32
    assert fresh.row_hit_counts(emb.weight)[1].item() == 3.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -1.0}, ValueError, "lr=-1.0 must be"),
        ({"betas": (0.9,)}, ValueError, "`betas` must be a pair"),
        ({"betas": (0.9, 1.0)}, ValueError, r"`betas` must each be in \[0, 1\)"),
        ({"eps": -1e-8}, ValueError, "eps="),
        ({"weight_decay": -0.1}, ValueError, "weight_decay="),
        ({"row_scale_power": -0.5}, ValueError, "row_scale_power="),
        ({"max_row_scale": 0.5}, ValueError, "max_row_scale="),
        ({"decay_rows": "some"}, ValueError, r"`decay_rows` must be one of \('touched', 'all'\)"),
        ({"row_wise": "yes"}, TypeError, "`row_wise` must be a bool"),
        ({"foreach": 1}, TypeError, "`foreach` must be None or a bool"),
        ({"fused": 1}, TypeError, "`fused` must be None or a bool"),
        ({"fused": True, "foreach": True}, ValueError, "`fused=True` and `foreach=True` cannot be combined"),
        ({"rows_on_host": "yes"}, TypeError, "`rows_on_host` must be None or a bool"),
        ({"lr": "fast"}, TypeError, "lr='fast' must be a number"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        GeoAdamW(nn.Linear(2, 2).parameters(), **kwargs)


def test_bad_param_group_settings_are_rejected_too():
    opt = GeoAdamW(nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="`decay_rows`"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "decay_rows": "none"})


def test_sparse_gradient_needs_row_wise_group():
    emb = nn.Embedding(5, 2, sparse=True)
    opt = GeoAdamW(emb.parameters(), row_wise=False)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients need `row_wise=True`"):
        opt.step()


def test_row_wise_false_is_plain_adamw_even_with_untouched_rows():
    torch.manual_seed(0)
    a, b = nn.Embedding(8, 3), nn.Embedding(8, 3)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.AdamW(a.parameters(), lr=0.05)
    opt_b = GeoAdamW(b.parameters(), lr=0.05, row_wise=False)
    for step in range(15):
        idx = torch.tensor([step % 3])
        for emb, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            emb(idx).sum().backward()
            opt.step()
    torch.testing.assert_close(b.weight, a.weight, atol=1e-6, rtol=0)


def _step_cost(optimizer_class, model_fn, steps=3, **kwargs):
    """(ops, syncs) of one optimizer step in steady state (after the first step's set-up)."""
    model = model_fn()
    opt = optimizer_class(model.parameters(), lr=1e-2, **kwargs)
    generator = torch.Generator().manual_seed(5)
    tokens = [(torch.rand(6, generator=generator) ** 2 * 11).long() for _ in range(steps + 1)]
    _train(model, opt, 1, tokens)
    costs = []
    for idx in tokens[1:]:
        opt.zero_grad()
        model(idx).pow(2).mean().backward()
        with StepCostCounter() as counter:
            opt.step()
        costs.append((counter.ops, counter.syncs))
    assert len(set(costs)) == 1
    return costs[0]


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(11, 5), nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))


@pytest.mark.parametrize("foreach", [False, True])
def test_dense_parameters_cost_exactly_what_torch_adamw_costs(foreach):
    """Fully touched parameters take torch's own AdamW kernels: the same ops and host reads per step."""

    def dense_only():
        model = _linear_model()
        model[0].weight.requires_grad_(False)  # the embedding's gradient would have untouched rows
        return model

    geo = _step_cost(GeoAdamW, dense_only, foreach=foreach)
    adamw = _step_cost(torch.optim.AdamW, dense_only, foreach=foreach)
    assert geo == adamw


def test_row_rule_adds_no_host_read_per_step():
    """An embedding with untouched rows takes the masked row rule: a bounded number of ops, no host read."""
    geo_ops, geo_syncs = _step_cost(GeoAdamW, _linear_model, foreach=True, rows_on_host=False)
    adamw_ops, adamw_syncs = _step_cost(torch.optim.AdamW, _linear_model, foreach=True)
    assert geo_syncs <= adamw_syncs
    assert geo_ops <= adamw_ops + 60  # the embedding's per-row factors, batched over the row-wise parameters


@pytest.mark.parametrize("fused", [False, True])
def test_fused_and_single_tensor_equal_torch_adamw(fused):
    reference, model = _dense_model(), _dense_model()
    adamw = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    geo = GeoAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    _train(reference, adamw, 20)
    _train(model, geo, 20)
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def test_parameter_is_rechecked_and_takes_the_row_rule_once_rows_go_untouched(monkeypatch):
    monkeypatch.setattr(geo_adamw, "RECHECK_EVERY", 4)
    emb = nn.Embedding(6, 2)
    opt = GeoAdamW(emb.parameters(), lr=0.1, weight_decay=0.0)
    for step in range(8):
        emb(torch.arange(6) if step < 3 else torch.tensor([1, 3])).sum().backward()
        opt.step()
        opt.zero_grad()
        mode = opt.state[emb.weight]["row_mode"]
        assert mode == (DENSE if step < 4 else ROWS), step
    before = emb.weight.detach()[5].clone()
    emb(torch.tensor([1])).sum().backward()
    opt.step()
    assert torch.equal(emb.weight.detach()[5], before)  # untouched rows now stay put
    # Entering the row rule at the 5th step counts the 4 steps before it as touched in every row.
    assert opt.state[emb.weight]["row_step"].tolist() == [4.0, 9.0, 4.0, 8.0, 4.0, 4.0]


def _tiny_gpt2(*, tied: bool) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=97, n_positions=16, n_embd=8, n_layer=2, n_head=2, tie_word_embeddings=tied,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config)


def _train_gpt2(model, optimizer, steps=6):
    generator = torch.Generator().manual_seed(7)
    for _ in range(steps):
        ids = (torch.rand(2, 6, generator=generator) ** 3 * 97).long()  # 6 of 16 positions: a Zipf-ish vocab
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()


def test_tied_embedding_and_head_says_once_that_the_row_rule_cannot_act_and_is_adamw():
    """GPT-2's head shares ``wte``: every row gets a gradient, so GeoAdamW says so once and is exactly AdamW."""
    reference, model = _tiny_gpt2(tied=True), _tiny_gpt2(tied=True)
    assert model.transformer.wte.weight is model.lm_head.weight
    _train_gpt2(reference, torch.optim.AdamW(reference.parameters(), lr=1e-2))
    geo = GeoAdamW(model.parameters(), lr=1e-2)
    with pytest.warns(UserWarning, match="no parameter in a `row_wise` group has untouched rows") as record:
        _train_gpt2(model, geo)
    assert sum("untouched rows" in str(w.message) for w in record) == 1
    assert geo.state[model.transformer.wte.weight]["row_mode"] == DENSE
    assert geo.state[model.transformer.wpe.weight]["row_mode"] == POSITIONAL
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def test_position_embedding_is_never_a_sparse_token_embedding():
    """Untied GPT-2 on sequences shorter than its position table: ``wte`` takes the row rule, ``wpe`` (looked up
    by position, its later rows unused) is updated exactly as by AdamW."""
    model = _tiny_gpt2(tied=False)
    geo = GeoAdamW(model.parameters(), lr=1e-2)
    _train_gpt2(model, geo)
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    assert geo.state[wte]["row_mode"] == ROWS and "row_step" in geo.state[wte]
    assert geo.state[wpe]["row_mode"] == POSITIONAL and geo.row_hit_counts(wpe) is None
    # With the token embedding frozen, every other parameter, wpe included, moves exactly as under AdamW.
    reference, model = _tiny_gpt2(tied=False), _tiny_gpt2(tied=False)
    for m in (reference, model):
        m.transformer.wte.weight.requires_grad_(False)
    _train_gpt2(reference, torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-2))
    with pytest.warns(UserWarning, match="untouched rows"):
        _train_gpt2(model, GeoAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2))
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


@pytest.mark.ddp
def test_fsdp2_sharded_run_resumes_exactly_from_a_distributed_checkpoint(tmp_path):
    """A distributed checkpoint loads into state made by a step on zero gradients: its keys must not depend on
    the path each parameter took (they did not at first: ``row_step`` only for parameters under the row rule)."""
    from tests.test_geo_hybrid import run_worker

    args = ("--plan", "fsdp", "--geo", "geo_adamw", "--steps", "8")
    full = run_worker(tmp_path / "full", 2, *args)
    checkpoint = next((tmp_path / "full" / "ckpt").glob("*step=3*.ckpt"))
    resumed = run_worker(tmp_path / "resumed", 2, *args, "--resume", str(checkpoint))
    assert resumed["losses"] == full["losses"][3:]
