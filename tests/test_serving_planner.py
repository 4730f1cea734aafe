"""BatchPlanner, the serving scheduler, without a server: grouping, waiting, admission, the cost model."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_geo.serving import BatchCostModel, BatchPlanner, PendingRequest
from lightning_geo.serving.retry_after import retry_after_seconds
from lightning_geo.utils.bucket_lengths import sample_length


def _planner(**kwargs) -> BatchPlanner:
    cost = BatchCostModel(overhead_s=1e-3, per_token_s=1e-6)
    return BatchPlanner(cost=cost, **kwargs)


def test_the_cost_model_recovers_overhead_and_per_token_cost_from_batches() -> None:
    cost = BatchCostModel()
    for padded in (100, 400, 1600, 800, 200) * 4:
        cost.update(padded, 0.004 + 3e-6 * padded)
    assert cost.overhead_s == pytest.approx(0.004, rel=1e-6)
    assert cost.per_token_s == pytest.approx(3e-6, rel=1e-6)
    assert cost.tokens_within(0.004 + 3e-6 * 1000) == pytest.approx(1000, abs=1)


def test_the_batch_holds_the_oldest_request_and_its_neighbours_in_length_not_the_others() -> None:
    planner = _planner(max_tokens=64, target_p95_ms=1000)
    for arrival, length in [(0.0, 30), (0.1, 3), (0.2, 31), (0.3, 4), (0.4, 29)]:
        assert planner.admit(PendingRequest(length, arrival), now=0.5) is None
    batch, wait = planner.next_batch(now=0.5)
    assert wait == 0.0 and sorted(p.length for p in batch) == [29, 30]  # 3 x 31 > 64: the 31 waits
    assert sorted(p.length for p in planner.pending) == [3, 4, 31]


def _arrivals(planner: BatchPlanner) -> BatchPlanner:
    for k in range(20):  # 10 tokens every 10 ms: 1000 tokens/s
        planner.arrivals.add(k * 0.01, 10)
    planner.admit(PendingRequest(10, 0.2), now=0.2)
    return planner


def test_it_waits_for_fuller_batches_only_when_small_ones_cannot_keep_up_and_they_fill_in_time() -> None:
    slow_batches = BatchPlanner(target_p95_ms=2000, max_tokens=1000, cost=BatchCostModel(0.01, 1e-6))
    batch, wait = _arrivals(slow_batches).next_batch(now=0.2)  # 100 batches/s of 10 ms each: always busy
    assert batch == [] and 0 < wait < 1.0  # (1000 - 10) tokens at ~1000/s: about a second, within the slack
    keeping_up = BatchPlanner(target_p95_ms=2000, max_tokens=1000, cost=BatchCostModel(1e-3, 1e-6))
    batch, wait = _arrivals(keeping_up).next_batch(now=0.2)  # 10% busy: waiting would only add latency
    assert len(batch) == 1 and wait == 0.0
    short_target = BatchPlanner(target_p95_ms=500, max_tokens=1000, cost=BatchCostModel(0.01, 1e-6))
    batch, wait = _arrivals(short_target).next_batch(now=0.2)  # filling takes ~1 s, longer than the target
    assert len(batch) == 1 and wait == 0.0
    quiet = _planner(target_p95_ms=1000, max_tokens=1000)
    quiet.admit(PendingRequest(10, 0.2), now=0.2)
    batch, wait = quiet.next_batch(now=0.2)
    assert len(batch) == 1 and wait == 0.0  # nothing else is coming


def test_requests_that_would_miss_the_target_are_refused_with_the_time_to_wait() -> None:
    planner = _planner(target_p95_ms=100, max_tokens=1000)
    admitted = refused = 0
    retry = None
    for _ in range(2000):
        result = planner.admit(PendingRequest(100, arrival=0.0), now=0.0)
        admitted, refused = admitted + (result is None), refused + (result is not None)
        retry = result if result is not None else retry
    predicted = planner.backlog_s()
    assert refused > 0 and predicted <= planner.admit_share * 0.1 < planner.backlog_s(100)
    assert retry is not None and retry >= 0.1
    old = planner.admit(PendingRequest(1, arrival=-1.0), now=0.0)  # waited a second already
    assert old is not None


def test_the_admission_share_shrinks_after_late_batches_and_recovers_with_time_on_time() -> None:
    planner = _planner(target_p95_ms=100)
    start = planner.admit_share
    for k in range(20):  # answered 500 ms after arrival: late, every 10 ms
        planner.record([PendingRequest(10, arrival=k * 0.01)], seconds=0.01, now=0.5 + k * 0.01)
    assert planner.admit_share == pytest.approx(max(0.25, start * 0.9**20))
    planner.record([PendingRequest(10, arrival=1.0)], seconds=0.01, now=1.05)  # on time, 0.36 s later
    assert planner.admit_share == pytest.approx(0.25 + 0.1 * 0.36)
    planner.record([PendingRequest(10, arrival=20.0)], seconds=0.01, now=20.05)  # one batch, many seconds on
    assert planner.admit_share == pytest.approx(0.9)


def test_a_full_queue_refuses_whatever_the_latency() -> None:
    planner = _planner(max_queue=2)
    assert planner.admit(PendingRequest(1, 0.0), 0.0) is None
    assert planner.admit(PendingRequest(1, 0.0), 0.0) is None
    assert planner.admit(PendingRequest(1, 0.0), 0.0) is not None


def test_the_token_budget_shrinks_while_a_full_batch_is_slow_down_to_an_eighth() -> None:
    planner = BatchPlanner(target_p95_ms=200, max_tokens=4096, cost=BatchCostModel(overhead_s=0.0, per_token_s=1e-6))
    assert planner.budget() == 4096
    planner.cost.per_token_s = 5e-5  # a quarter of 200 ms holds 1000 tokens
    assert planner.budget() == 1000
    planner.cost.overhead_s = 1.0  # no batch fits: large batches at least keep the throughput
    assert planner.budget() == 512


def test_with_nothing_pending_it_waits_for_ever() -> None:
    assert _planner().next_batch(now=0.0) == ([], math.inf)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"target_p95_ms": 0}, "target_p95_ms"), ({"max_tokens": "4096"}, "max_tokens"),
     ({"max_batch_size": 0}, "max_batch_size"), ({"max_queue": -1}, "max_queue")],
)
def test_a_bad_setting_is_refused_naming_it(kwargs: dict, named: str) -> None:
    with pytest.raises((TypeError, ValueError), match=named):
        BatchPlanner(**kwargs)


def test_a_request_length_is_read_from_its_mask_or_ids_or_refused_saying_what_it_is() -> None:
    assert sample_length({"input_ids": torch.arange(5), "attention_mask": torch.tensor([1, 1, 1, 0, 0])}) == 3
    assert sample_length({"input_ids": torch.arange(5)}) == 5
    assert sample_length(torch.zeros(7, 2)) == 7
    with pytest.raises(ValueError, match="cannot tell the length of a str"):
        sample_length("text")


def test_retry_after_is_read_from_a_geo_503_body_in_whole_seconds() -> None:
    assert retry_after_seconds(b'{"detail": {"error": "overloaded", "retry_after_s": 1.2}}') == 2
    assert retry_after_seconds(b'{"detail": {"retry_after_s": 0.01}}') == 1
    assert retry_after_seconds(b'{"detail": "Service Unavailable"}') is None
    assert retry_after_seconds(b"not json") is None
