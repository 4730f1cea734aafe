"""GeoAdamW: AdamW on dense fully-touched params, lazy rows, per-row bias correction and scaling, sparse grads."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_geo.optim import GeoAdamW, geo_adamw


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


@pytest.mark.parametrize("path", ["rows", "whole"])
def test_untouched_rows_keep_values_and_moments_while_adamw_drifts(path, monkeypatch):
    if path == "whole":
        monkeypatch.setattr(geo_adamw, "_ROW_PATH_MAX_DENSITY", -1.0)
    torch.manual_seed(0)
    geo_emb, adamw_emb = nn.Embedding(10, 4), nn.Embedding(10, 4)
    adamw_emb.load_state_dict(geo_emb.state_dict())
    geo = GeoAdamW(geo_emb.parameters(), lr=0.1, weight_decay=0.1)
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


@pytest.mark.parametrize("path", ["rows", "whole"])
def test_decay_rows_all_shrinks_untouched_rows_by_adamw_decay_only(path, monkeypatch):
    if path == "whole":
        monkeypatch.setattr(geo_adamw, "_ROW_PATH_MAX_DENSITY", -1.0)
    emb = nn.Embedding(6, 3)
    opt = GeoAdamW(emb.parameters(), lr=0.1, weight_decay=0.5, decay_rows="all")
    emb(torch.tensor([0])).sum().backward()
    opt.step()
    opt.zero_grad()
    before = emb.weight.detach()[4].clone()
    for _ in range(3):
        emb(torch.tensor([0])).sum().backward()
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
        rows = torch.tensor([0]) if step not in (4, 16) else torch.tensor([0, 1 if step == 4 else 2])
        before = emb.weight.detach().clone()
        emb(rows).sum().backward()
        opt.step()
        opt.zero_grad()
        moved = (before - emb.weight.detach()).abs()
        if step == 4:  # row 1: hit rate 1/4 -> scale 2
            torch.testing.assert_close(moved[1], torch.full((2,), 0.02))
        if step == 16:  # row 2: hit rate 1/16 -> scale 4, capped at 3
            torch.testing.assert_close(moved[2], torch.full((2,), 0.03))
    torch.testing.assert_close(moved[0], torch.full((2,), 0.01))  # row 0, touched every step: plain Adam


def test_power_zero_disables_row_scaling():
    emb = nn.Embedding(4, 2)
    opt = GeoAdamW(emb.parameters(), lr=0.01, weight_decay=0.0, eps=1e-12, row_scale_power=0.0, density_power=0.0)
    for step in range(1, 9):
        before = emb.weight.detach().clone()
        emb(torch.tensor([0] if step < 8 else [0, 3])).sum().backward()
        opt.step()
        opt.zero_grad()
    torch.testing.assert_close((before - emb.weight.detach()).abs()[3], torch.full((2,), 0.01))


@pytest.mark.parametrize("path", ["rows", "whole"])
def test_parameter_density_factor(path, monkeypatch):
    """A parameter touching a quarter of its rows per step takes 0.25 ** -0.5 = 2x steps (EMA of a constant)."""
    if path == "whole":
        monkeypatch.setattr(geo_adamw, "_ROW_PATH_MAX_DENSITY", -1.0)
    emb = nn.Embedding(8, 2)
    opt = GeoAdamW(emb.parameters(), lr=0.01, weight_decay=0.0, eps=1e-12, row_scale_power=0.0)
    for step in range(6):
        before = emb.weight.detach().clone()
        emb(torch.tensor([0, 1] if step % 2 == 0 else [2, 3])).sum().backward()
        opt.step()
        opt.zero_grad()
        moved = (before - emb.weight.detach()).abs()
        assert torch.allclose(moved[[0, 1] if step % 2 == 0 else [2, 3]], torch.full((2, 2), 0.02))
        assert moved[4:].abs().sum() == 0
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


@pytest.fixture
def whole_tensor_path(monkeypatch):
    """Route every dense gradient through the masked whole-tensor update instead of the row-by-row one."""
    monkeypatch.setattr(geo_adamw, "_ROW_PATH_MAX_DENSITY", -1.0)


def test_row_by_row_and_whole_tensor_updates_agree(monkeypatch):
    generator = torch.Generator().manual_seed(4)
    tokens = [(torch.rand(4, generator=generator) ** 2 * 11).long() for _ in range(40)]
    results = []
    for max_density in (1.0, -1.0):  # every dense gradient row by row; then none
        monkeypatch.setattr(geo_adamw, "_ROW_PATH_MAX_DENSITY", max_density)
        model = _dense_model()
        _train(model, GeoAdamW(model.parameters(), lr=0.02, weight_decay=0.1), 40, tokens)
        results.append(list(model.parameters()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.usefixtures("whole_tensor_path")
def test_foreach_and_single_tensor_paths_agree_with_untouched_rows():
    generator = torch.Generator().manual_seed(2)
    tokens = [(torch.rand(4, generator=generator) ** 2 * 11).long() for _ in range(30)]
    models = [_dense_model(), _dense_model()]
    opts = [GeoAdamW(m.parameters(), lr=0.02, foreach=flag) for m, flag in zip(models, (False, True), strict=True)]
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
    _train(model, opt, 10, tokens[10:])
    _train(clone, restored, 10, tokens[10:])
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


def test_row_step_stays_float32_for_low_precision_parameters():
    emb = nn.Embedding(600, 2).to(torch.bfloat16)
    opt = GeoAdamW(emb.parameters(), lr=0.01)
    for _ in range(3):
        emb(torch.tensor([0, 1])).float().sum().backward()
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
        ({"lr": -1.0}, ValueError, "`lr` must be in"),
        ({"betas": (0.9,)}, ValueError, "`betas` must be a pair"),
        ({"betas": (0.9, 1.0)}, ValueError, r"`betas` must each be in \[0, 1\)"),
        ({"eps": -1e-8}, ValueError, "`eps`"),
        ({"weight_decay": -0.1}, ValueError, "`weight_decay`"),
        ({"row_scale_power": -0.5}, ValueError, "`row_scale_power`"),
        ({"max_row_scale": 0.5}, ValueError, "`max_row_scale`"),
        ({"decay_rows": "some"}, ValueError, r"`decay_rows` must be one of \('touched', 'all'\)"),
        ({"row_wise": "yes"}, TypeError, "`row_wise` must be a bool"),
        ({"foreach": 1}, TypeError, "`foreach` must be None or a bool"),
        ({"lr": "fast"}, TypeError, "`lr` must be a number"),
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
