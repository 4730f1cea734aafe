"""A ``geo_hybrid`` run with every GEO part, saved on two processes (FSDP) and resumed on one, continues the
two-process run: the same samples per step (the global batch is kept), the precision plugin's scales and the
density statistics carried over, GeoAdamW's state re-sharded by the distributed checkpoint; the losses equal
the uninterrupted run's to 1e-5 (the gradients are summed in another order), the final weights' sums to 1e-3."""

from __future__ import annotations

import pytest

from tests.test_geo_hybrid import run_worker

EVERY_PART = ("--geo", "geo_adamw", "--shuffle", "--every", "3", "--steps", "6")


@pytest.mark.ddp
def test_a_two_process_fsdp_run_resumed_on_one_process_continues_it(tmp_path):
    two = run_worker(tmp_path / "two", 2, "--plan", "fsdp", *EVERY_PART)
    checkpoint = next((tmp_path / "two" / "ckpt").glob("*step=3.ckpt"))
    one = run_worker(tmp_path / "one", 0, *EVERY_PART, "--resume", str(checkpoint))
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["losses"] == pytest.approx(two["losses"][3:], rel=1e-5)
    assert one["geo"]["scale"] == two["geo"]["scale"][3:]
    assert one["geo"]["seq_len"] == two["geo"]["seq_len"][3:]
    assert one["geo"]["density"] == pytest.approx(two["geo"]["density"][3:], rel=1e-6)
    # per-parameter sums: Adam's normalised step turns float32 rounding of near-zero gradients into steps of lr
    assert one["weights"] == pytest.approx(two["weights"], rel=1e-3, abs=1e-3)
