"""All GEO parts in one run: PredictiveScalingPrecision, DynamicCurriculum (sequence-length warmup),
SparsityAwareLR and GeoAdamW or AdamW, under ``strategy="geo_hybrid"`` with sharded (FSDP2) and replicated
(DDP) parameters. The parts must not fight: a 2-process run must take the same steps as one process.

The worker (``tests/geo_hybrid_worker.py --geo ...``) trains the demo model on a global batch of 8 in dataset
order, so every layout sees the same samples at the same step.
"""

from __future__ import annotations

import pytest

from tests.test_geo_hybrid import run_worker

pytestmark = pytest.mark.ddp
STEPS = "8"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, dict]:
    """Each optimizer's run in one process with Lightning's default strategy: the reference."""
    return {
        optimizer: run_worker(tmp_path_factory.mktemp(f"one_{optimizer}"), 0, "--strategy", "auto",
                              "--geo", optimizer, "--steps", STEPS)
        for optimizer in ("geo_adamw", "adamw")
    }


def _assert_same_steps(parallel: dict, reference: dict) -> None:
    assert parallel["losses"] == pytest.approx(reference["losses"], abs=2e-4)
    geo, ref = parallel["geo"], reference["geo"]
    assert geo["seq_len"] == ref["seq_len"]  # the curriculum paced both runs alike
    assert ref["seq_len"][0] < ref["seq_len"][-1] == 16
    assert geo["density"] == pytest.approx(ref["density"], rel=1e-6)  # the whole embedding's, not a shard's
    assert geo["multiplier"] == pytest.approx(ref["multiplier"], rel=1e-6)
    assert geo["skipped"] == ref["skipped"] == [0] * int(STEPS)


@pytest.mark.parametrize("optimizer", ["geo_adamw", "adamw"])
def test_sharded_run_with_every_part_takes_the_steps_of_one_process(tmp_path, one_process, optimizer):
    """FSDP2 shards the embedding by rows: GeoAdamW updates each shard with the whole parameter's density,
    SparsityAwareLR splits its param group and decays touched rows of the shard, the precision plugin reads
    the gradient shards' amax; the losses still equal the one-process run's."""
    sharded = run_worker(tmp_path, 2, "--plan", "fsdp", "--geo", optimizer, "--steps", STEPS)
    assert sharded["plan"] == "FSDP" and sharded["applied"]["by"] == "geo_hybrid"
    _assert_same_steps(sharded, one_process[optimizer])


def test_sharded_and_replicated_runs_choose_the_same_loss_scales(tmp_path, one_process):
    """The loss scale bounds the per-rank backward values, which depend on the per-rank batch only: FSDP and
    DDP at 2 processes agree. One process has twice the batch per rank, so its activation gradients are half
    as large and its scale is one bit higher."""
    sharded = run_worker(tmp_path / "fsdp", 2, "--plan", "fsdp", "--geo", "geo_adamw", "--steps", STEPS)
    replicated = run_worker(tmp_path / "ddp", 2, "--plan", "ddp", "--geo", "geo_adamw", "--steps", STEPS)
    assert replicated["plan"] == "DDP"
    _assert_same_steps(replicated, one_process["geo_adamw"])
    assert sharded["geo"]["scale"] == replicated["geo"]["scale"]
    assert [2 * s for s in sharded["geo"]["scale"]] == one_process["geo_adamw"]["geo"]["scale"]
