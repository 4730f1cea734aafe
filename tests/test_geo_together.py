"""All GEO parts in one run: PredictiveScalingPrecision, DynamicCurriculum (sequence-length warmup),
SparsityAwareLR and GeoAdamW or AdamW, under ``strategy="geo_hybrid"`` with sharded (FSDP2) and replicated
(DDP) parameters. The parts must not fight: a 2-process run must take the same steps as one process.

The worker (``tests/geo_hybrid_worker.py --geo ...``) trains the demo model on a global batch of 8 in dataset
order, so every layout sees the same samples at the same step. ``--force-block-scales`` runs every block region
at its own loss scale: a layout that unscaled a block's gradients by another region's scale (as FSDP2 and
``replicate`` once did, where the graph's tensors are not the ones the optimizer steps) gives gradients off by a
power of two, which AdamW's per-parameter normalisation would hide from the losses.
"""

from __future__ import annotations

import pytest

from tests.test_geo_hybrid import run_worker

pytestmark = pytest.mark.ddp
STEPS = "8"
FORCE = "--force-block-scales"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, dict]:
    """Each optimizer's run in one process with Lightning's default strategy, forced block scales: the reference;
    and GeoAdamW's with the scales the plugin plans ("natural")."""
    runs = {
        optimizer: run_worker(tmp_path_factory.mktemp(f"one_{optimizer}"), 0, "--strategy", "auto",
                              "--geo", optimizer, "--steps", STEPS, FORCE)
        for optimizer in ("geo_adamw", "adamw")
    }
    runs["natural"] = run_worker(tmp_path_factory.mktemp("one_natural"), 0, "--strategy", "auto",
                                 "--geo", "geo_adamw", "--steps", STEPS)
    return runs


def _assert_same_first_gradients(run: dict, reference: dict) -> None:
    """Every parameter's unscaled gradient norm, as the optimizer receives it, at the first step, where the weights
    are still equal (after it, Adam's first steps amplify fp16 rounding). A wrong region's scale is off by 2x+."""
    got, expected = run["geo"]["grad_norm"][0], reference["geo"]["grad_norm"][0]
    assert got.keys() == expected.keys()
    for name, norm in expected.items():
        assert got[name] == pytest.approx(norm, rel=1e-2), f"gradient of {name}"


def _assert_same_steps(parallel: dict, reference: dict, *, forced: bool = True) -> None:
    if forced:  # the blocks really ran at scales of their own
        assert len(set(parallel["geo"]["block_scales"][0].values())) > 2
    _assert_same_first_gradients(parallel, reference)
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
    sharded = run_worker(tmp_path, 2, "--plan", "fsdp", "--geo", optimizer, "--steps", STEPS, FORCE)
    assert sharded["plan"] == "FSDP" and sharded["applied"]["by"] == "geo_hybrid"
    _assert_same_steps(sharded, one_process[optimizer])


def test_per_block_unscaled_gradients_equal_float32_ones(tmp_path, one_process):
    """The forced per-block fp16 run's unscaled gradients are the float32 run's, to fp16 rounding."""
    float32 = run_worker(tmp_path, 0, "--strategy", "auto", "--geo", "adamw", "--steps", "1", "--precision", "32")
    _assert_same_first_gradients(float32, one_process["adamw"])


def test_sharded_and_replicated_runs_choose_the_same_loss_scales(tmp_path, one_process):
    """FSDP and DDP at 2 processes plan the same loss scales, and here the same as one process: the head region's
    amax is its parameters' gradients, which are averaged over the ranks. (Before every parameter was mapped to its
    region under FSDP2 and ``replicate``, the 2-process runs put every block's gradients in the head's region and
    planned a scale one bit lower.)"""
    sharded = run_worker(tmp_path / "fsdp", 2, "--plan", "fsdp", "--geo", "geo_adamw", "--steps", STEPS)
    replicated = run_worker(tmp_path / "ddp", 2, "--plan", "ddp", "--geo", "geo_adamw", "--steps", STEPS)
    assert replicated["plan"] == "DDP"
    _assert_same_steps(replicated, one_process["natural"], forced=False)
    assert sharded["geo"]["scale"] == replicated["geo"]["scale"]
    assert sharded["geo"]["scale"] == one_process["natural"]["geo"]["scale"]
    assert sharded["geo"]["block_scales"] == replicated["geo"]["block_scales"]
