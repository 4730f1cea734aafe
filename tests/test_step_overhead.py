"""GEO's per-step budget (issue 22), counted, never timed: each part alone and all together at most x1.10 plain
Lightning's non-view aten ops and +1 host sync per training step, on the demo GPT in 16-mixed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lightning_geo.utils.step_cost import StepCostCounter, measure_step_cost

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import step_overhead


def test_counter_counts_non_view_ops_and_host_reads():
    x = torch.arange(6.0)
    with StepCostCounter() as counter:
        y = x + 1  # op
        y.view(2, 3)  # view: no kernel
        float(y.sum())  # op + _local_scalar_dense
        x[x > 2]  # gt + boolean-mask index
        y.tolist()  # Python-level read
        torch.nonzero(x)
    assert counter.ops == 6
    assert counter.syncs == 4
    assert counter.syncs_by_name == {"_local_scalar_dense": 1, "mask_index": 1, "Tensor.tolist": 1, "nonzero": 1}
    assert torch.Tensor.tolist is not counter._counting  # the patch is gone after the context


def test_measure_step_cost_takes_the_difference_per_step():
    def run(steps: int) -> None:
        torch.zeros(3).add_(1)  # set-up: cancels
        for _ in range(steps):
            float(torch.ones(2).sum())

    cost = measure_step_cost(run, short_steps=2, long_steps=5)
    assert (cost.ops, cost.syncs) == (3.0, 1.0)  # ones, sum, _local_scalar_dense; one read
    with pytest.raises(ValueError, match="long_steps"):
        measure_step_cost(run, short_steps=4, long_steps=4)


@pytest.fixture(scope="module")
def plain():
    return step_overhead.measure("plain", "demo")


ARMS = ["precision", "curriculum", "SparsityAwareLR", "GeoAdamW", "geo_hybrid", "all", "BatchSizeSchedule"]


@pytest.mark.parametrize("arm", ARMS)
def test_part_stays_within_the_step_budget(arm, plain):
    if arm in step_overhead.BASELINE:  # counted against plain Lightning with the same micro-batches per step
        plain = step_overhead.measure(step_overhead.BASELINE[arm], "demo")
    cost = step_overhead.measure(arm, "demo")
    ratio, extra = cost.ops / plain.ops, cost.syncs - plain.syncs
    assert ratio <= step_overhead.MAX_OPS_RATIO, f"{arm}: x{ratio:.3f} plain's ops per step"
    assert extra <= step_overhead.MAX_EXTRA_SYNCS, f"{arm}: {extra:+.2f} host syncs per step"
