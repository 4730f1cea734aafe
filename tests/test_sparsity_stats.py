"""Gradient sparsity statistics on hand-built gradients, and the param-group split they drive."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_geo.callbacks import GradientSparsityTracker
from lightning_geo.callbacks.sparsity_stats import gradient_densities
from lightning_geo.optim.param_groups import isolate_parameters
from lightning_geo.optim.rows import touched_rows


def test_densities_of_hand_built_gradients():
    grad = torch.zeros(10, 4)
    grad[[1, 4, 7], 0] = 1.0
    grad[4, 1:] = -2.0  # row 4 fully non-zero, rows 1 and 7 one element each
    rows, elements, touched = gradient_densities(grad)
    assert rows == pytest.approx(0.3) and elements == pytest.approx(6 / 40)
    assert touched.tolist() == [i in (1, 4, 7) for i in range(10)]

    rows, elements, _ = gradient_densities(torch.tensor([0.0, 1.0, 0.0, 3.0]))  # 1-D: each element is a row
    assert rows == elements == pytest.approx(0.5)

    grad3d = torch.zeros(3, 2, 2)
    grad3d[2, 1, 1] = 5.0
    assert gradient_densities(grad3d)[:2] == (pytest.approx(1 / 3), pytest.approx(1 / 12))


def test_sparse_gradient_rows_are_the_listed_ones():
    emb = nn.Embedding(8, 3, sparse=True)
    emb(torch.tensor([2, 2, 5])).sum().backward()
    assert touched_rows(emb.weight.grad).tolist() == [i in (2, 5) for i in range(8)]
    rows, elements, _ = gradient_densities(emb.weight.grad)
    assert rows == pytest.approx(2 / 8) and elements == pytest.approx(6 / 24)


def test_tracker_ema_hit_counts_and_state_dict():
    emb = nn.Embedding(5, 2)
    lin = nn.Linear(2, 2)
    params = [("emb.weight", emb.weight), ("lin.weight", lin.weight), ("lin.bias", lin.bias)]
    tracker = GradientSparsityTracker(params, ema=0.5, hit_count_names=["emb.weight"])
    for rows in ([0], [0, 1, 2, 3]):
        emb.weight.grad = torch.zeros(5, 2)
        emb.weight.grad[rows] = 1.0
        lin.weight.grad = torch.ones(2, 2)
        lin.bias.grad = None  # a parameter without gradient this step is not measured
        tracker.update(tracker.measure())
    assert tracker.row_density["emb.weight"] == pytest.approx(0.5 * 0.2 + 0.5 * 0.8)
    assert tracker.row_density["lin.weight"] == 1.0 and "lin.bias" not in tracker.row_density
    assert tracker.hit_counts["emb.weight"].tolist() == [2, 1, 1, 1, 0]
    assert tracker.measurements == 2

    restored = GradientSparsityTracker(params, ema=0.5, hit_count_names=["emb.weight"])
    restored.load_state_dict(copy.deepcopy(tracker.state_dict()))
    assert restored.row_density == tracker.row_density
    assert torch.equal(restored.hit_counts["emb.weight"], tracker.hit_counts["emb.weight"])


def test_element_count_can_be_skipped_and_keeps_the_previous_average():
    weight = nn.Parameter(torch.zeros(4, 2))
    tracker = GradientSparsityTracker([("w", weight)], ema=0.5)
    weight.grad = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    tracker.update(tracker.measure())
    weight.grad = torch.ones(4, 2)
    tracker.update(tracker.measure(count_elements=False))
    assert tracker.row_density["w"] == pytest.approx(0.5 * 0.25 + 0.5 * 1.0)
    assert tracker.element_density["w"] == pytest.approx(1 / 8)


def test_tracker_reduce_hook_replaces_the_local_values():
    weight = nn.Parameter(torch.zeros(4, 2))
    weight.grad = torch.zeros(4, 2)
    weight.grad[0] = 1.0
    tracker = GradientSparsityTracker([("w", weight)])
    tracker.update(tracker.measure(), reduce=lambda t: torch.full_like(t, 0.75))
    assert tracker.row_density["w"] == 0.75 and tracker.element_density["w"] == 0.75


def test_tracker_bad_arguments():
    weight = nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"`ema` must be a number in \[0, 1\)"):
        GradientSparsityTracker([("w", weight)], ema=1.0)
    with pytest.raises(ValueError, match=r"`hit_count_names` names parameters that do not exist.*'nope'"):
        GradientSparsityTracker([("w", weight)], hit_count_names=["nope"])


def _model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    groups = [
        {"params": [model[0].weight, model[1].weight], "weight_decay": 0.1},
        {"params": [model[1].bias, model[2].weight, model[2].bias], "weight_decay": 0.0, "lr": 0.02},
    ]
    optimizer = torch.optim.AdamW(groups, lr=0.01, betas=(0.8, 0.9))
    return model, optimizer


def _steps(model, optimizer, scheduler, n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(0, 20, (3,), generator=generator)
        optimizer.zero_grad()
        model[2](model[1](model[0](idx))).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("schedule", ["lambda", "exponential", "sequential"])
def test_isolating_a_parameter_keeps_settings_state_and_schedule(schedule):
    def make_scheduler(optimizer):
        if schedule == "lambda":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        if schedule == "exponential":
            return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.8)
        return torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [
                torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=3),
                torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5),
            ],
            milestones=[3],
        )

    reference, ref_opt = _model_and_optimizer()
    model, opt = _model_and_optimizer()
    ref_sched, sched = make_scheduler(ref_opt), make_scheduler(opt)
    _steps(reference, ref_opt, ref_sched, 4)
    _steps(model, opt, sched, 4)
    state_before = opt.state[model[0].weight]
    placement = isolate_parameters(opt, [model[0].weight, model[2].bias], [sched])

    assert len(opt.param_groups) == 4
    assert placement == {id(model[0].weight): 2, id(model[2].bias): 3}
    split = opt.param_groups[2]
    assert split["params"] == [model[0].weight]
    assert split["weight_decay"] == 0.1 and split["betas"] == (0.8, 0.9) and split["lr"] == opt.param_groups[0]["lr"]
    assert opt.param_groups[3]["lr"] == opt.param_groups[1]["lr"]
    assert opt.state[model[0].weight] is state_before
    for scheduler in getattr(sched, "_schedulers", [sched]):
        assert len(scheduler.base_lrs) == 4 and scheduler.base_lrs[2] == scheduler.base_lrs[0]

    # Continuing with split groups gives exactly what the unsplit optimizer gives.
    _steps(reference, ref_opt, ref_sched, 6, seed=1)
    _steps(model, opt, sched, 6, seed=1)
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [g["lr"] for g in opt.param_groups][:2] == [g["lr"] for g in ref_opt.param_groups]

    # A parameter alone in its group stays there; one the optimizer does not hold is ignored.
    again = isolate_parameters(opt, [model[0].weight, nn.Parameter(torch.zeros(1))], [sched])
    assert again == {id(model[0].weight): 2} and len(opt.param_groups) == 4


def test_lookup_recorder_counts_training_lookups_only_and_skips_padding():
    from lightning_geo.callbacks.embedding_lookups import EmbeddingLookupRecorder

    emb = nn.Embedding(6, 2, padding_idx=0)
    recorder = EmbeddingLookupRecorder({"emb.weight": emb})
    emb(torch.tensor([[0, 1], [1, 4]]))  # training forward
    emb(torch.tensor([5]))  # a second micro-batch before the step (gradient accumulation)
    with torch.no_grad():
        emb(torch.tensor([2]))  # no gradient: not a touch
    emb.eval()
    emb(torch.tensor([3]))  # evaluation: not a touch
    emb.train()
    assert recorder.take("emb.weight").tolist() == [False, True, False, False, True, True]
    assert recorder.take("emb.weight") is None  # taken: nothing new since
    recorder.remove()
    emb(torch.tensor([1]))
    assert recorder.take("emb.weight") is None


def test_lookups_are_used_only_where_they_equal_the_gradient():
    from lightning_geo.callbacks.embedding_lookups import lookup_trackable

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight

    tied = Tied()
    assert not lookup_trackable(tied.emb, tied)  # the head gives every row a gradient
    bag_max = nn.Sequential(nn.EmbeddingBag(5, 3, mode="max"))
    assert not lookup_trackable(bag_max[0], bag_max)  # only the maximal rows get a gradient
    plain = nn.Sequential(nn.EmbeddingBag(5, 3), nn.Linear(3, 2))
    assert lookup_trackable(plain[0], plain) and not lookup_trackable(plain[1], plain)
