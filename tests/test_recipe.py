"""``lightning_geo.recipe()``: merging rules, refusals, a real fit of the demo model, the YAML form
(examples/recipe.yaml), an exact mid-epoch resume and a 2-process gloo run.

The defaults (which parts are on, the warmup deadline) are read from :mod:`lightning_geo.recipes`, never written
here: a benchmark may change them. Run as a script (under ``torchrun``), this file is the 2-process test's worker.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import MixedPrecision, TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy

import lightning_geo  # noqa: F401  (registers strategy="geo_hybrid")
from lightning_geo.callbacks import BatchSizeSchedule, DynamicCurriculum, SparsityAwareLR
from lightning_geo.demo.corpus import UNKNOWN, Corpus
from lightning_geo.demo.data import CharDataModule
from lightning_geo.demo.lightning_cli import DemoLightningCLI
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.demo.plot import read_scalars
from lightning_geo.precision import PredictiveScalingPrecision
from lightning_geo.recipes import DEFAULT_RECIPE_PARTS, RECIPE_PARTS, SEQ_LEN_WARMUP_DEADLINE, recipe
from lightning_geo.strategies import GeoHybridStrategy

RECIPE_YAML = Path(__file__).resolve().parent.parent / "examples" / "recipe.yaml"
LOGGED_AS = {"strategy": "strategy", "precision": "precision", "seq_len_warmup": "curriculum", "sparsity": "sparsity",
             "batch_size": "batch"}
"""The ``geo/<part>/`` prefix each recipe part logs under."""
GEO_CALLBACKS = (DynamicCurriculum, SparsityAwareLR)

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200))  # ~7k characters
SEQ_LEN = 32
DDP_STEPS = 4


def parts_in(kwargs: dict[str, Any]) -> set[str]:
    """The recipe parts that ``kwargs`` (a ``recipe()`` result) switches on."""
    strategy = kwargs.get("strategy")
    callbacks = kwargs["callbacks"]
    found = {
        "strategy": isinstance(strategy, GeoHybridStrategy) or (isinstance(strategy, str) and strategy == "geo_hybrid"),
        "precision": _mixed_precision(kwargs) is not None,
        "seq_len_warmup": any(isinstance(c, DynamicCurriculum) and c.mode == "seq_len" for c in callbacks),
        "sparsity": any(isinstance(c, SparsityAwareLR) for c in callbacks),
        "batch_size": any(isinstance(c, BatchSizeSchedule) for c in callbacks),
    }
    assert found.keys() == set(RECIPE_PARTS), "recipe() has a part this test does not know: add it to parts_in"
    return {part for part, on in found.items() if on}


@pytest.fixture(autouse=True)
def _cpu_with_bf16_instructions(monkeypatch):
    """The recipe's parts as on a CPU with bf16 instructions, whatever this machine has (where it has none the
    recipe trains in fp32 and the precision part is off: ``test_a_cpu_without_bf16_...`` checks that)."""
    monkeypatch.setattr("lightning_geo.recipes.default_cpu_precision", lambda: "bf16-mixed")


def init_args(obj: object) -> dict[str, Any]:
    """``obj``'s ``__init__`` arguments as stored on it (under the same names, as LightningCLI needs)."""
    names = [name for name in inspect.signature(type(obj).__init__).parameters if name != "self"]
    return {name: getattr(obj, name) for name in names if hasattr(obj, name)}


def _precision_plugin(kwargs: dict[str, Any]) -> PredictiveScalingPrecision:
    (plugin,) = [p for p in kwargs["plugins"] if isinstance(p, PredictiveScalingPrecision)]
    return plugin


def _mixed_precision(kwargs: dict[str, Any]) -> str | None:
    """The mixed precision a ``recipe()`` result trains in: ``"16-mixed"`` through PredictiveScalingPrecision,
    ``"bf16-mixed"`` through Lightning's own flag (never both); None when it sets none."""
    plugins = [p for p in kwargs.get("plugins", []) if isinstance(p, PredictiveScalingPrecision)]
    assert not (plugins and "precision" in kwargs), "a precision plugin and a precision flag together"
    if plugins:
        return plugins[0].precision
    flag = kwargs.get("precision")
    return flag if flag in ("16-mixed", "bf16-mixed") else None


# ----------------------------------------------------------------------------------- merging rules


def test_defaults_switch_on_the_default_parts_with_fresh_objects():
    kwargs, again = recipe(), recipe()
    assert parts_in(kwargs) == set(DEFAULT_RECIPE_PARTS)
    assert not {"accelerator", "devices"} & kwargs.keys()
    assert all(a is not b for a, b in zip(kwargs["callbacks"] + kwargs.get("plugins", []),
                                          again["callbacks"] + again.get("plugins", []), strict=True))


def test_every_part_pickles_as_ddp_spawn_needs():
    """``ddp_spawn`` pickles the Trainer's callbacks, plugins and strategy to each worker: a part that cannot be
    pickled fails there (``ddp_fork`` and torchrun never pickle it), so every part is pickled here."""
    import pickle

    from lightning_geo.precision import PredictiveScalingPrecision

    kwargs = recipe(include=["batch_size"], plugins=[PredictiveScalingPrecision("16-mixed")])
    parts = [*kwargs["callbacks"], *kwargs.get("plugins", []), kwargs["strategy"]]
    assert {type(part).__name__ for part in parts} >= {"DynamicCurriculum", "SparsityAwareLR", "BatchSizeSchedule",
                                                      "PredictiveScalingPrecision"}
    for part in parts:
        assert type(pickle.loads(pickle.dumps(part))) is type(part)


def test_seq_len_warmup_is_a_linear_seq_len_curriculum_to_the_deadline():
    if "seq_len_warmup" not in DEFAULT_RECIPE_PARTS:
        pytest.skip("the sequence-length warmup is not a default part")
    (curriculum,) = [c for c in recipe()["callbacks"] if isinstance(c, DynamicCurriculum)]
    assert (curriculum.mode, curriculum.pacing, curriculum.deadline) == ("seq_len", "linear", SEQ_LEN_WARMUP_DEADLINE)
    (curriculum,) = [c for c in recipe(seq_len_warmup="100 steps")["callbacks"] if isinstance(c, DynamicCurriculum)]
    assert curriculum.deadline == "100 steps"


def test_your_callbacks_come_after_geos():
    geo = recipe()["callbacks"]
    mine = [LearningRateMonitor(), ModelCheckpoint()]
    callbacks = recipe(callbacks=mine)["callbacks"]
    assert [type(c) for c in callbacks[: len(geo)]] == [type(c) for c in geo]
    assert callbacks[len(geo):] == mine
    assert recipe(callbacks=mine[0])["callbacks"][-1] is mine[0]  # one callback, not in a list


@pytest.mark.parametrize(
    "make", [lambda: DynamicCurriculum(mode="seq_len", deadline="100 steps"), lambda: SparsityAwareLR(power=0.25)],
    ids=["DynamicCurriculum", "SparsityAwareLR"],
)
def test_your_callback_of_a_geo_class_replaces_the_recipes(make):
    yours, other = make(), LearningRateMonitor()
    kwargs = recipe(callbacks=[other, yours])
    callbacks = kwargs["callbacks"]
    assert [c for c in callbacks if isinstance(c, type(yours))] == [yours]  # exactly one: yours, your settings
    assert callbacks[-2:] == [other, yours]  # in your order, after GEO's
    assert parts_in(kwargs) == set(DEFAULT_RECIPE_PARTS)  # the other parts stay


def test_your_other_plugins_are_kept():
    io = TorchCheckpointIO()
    kwargs = recipe(plugins=[io])
    assert [p for p in kwargs["plugins"] if p is io] == [io]
    if "precision" in DEFAULT_RECIPE_PARTS:
        assert _mixed_precision(kwargs) is not None
    assert recipe(plugins=io, exclude=["precision"])["plugins"] == [io]  # one plugin, not in a list
    fp16 = recipe(plugins=[io], precision="16-mixed")["plugins"]
    assert io in fp16 and len(fp16) == 2


def test_accelerator_and_devices_pass_through_only_when_given():
    assert not {"accelerator", "devices"} & recipe().keys()
    kwargs = recipe(accelerator="cpu", devices=2)
    assert (kwargs["accelerator"], kwargs["devices"]) == ("cpu", 2)
    only_devices = recipe(devices=[0, 1])
    assert only_devices["devices"] == [0, 1] and "accelerator" not in only_devices


@pytest.mark.parametrize("part", RECIPE_PARTS)
def test_exclude_leaves_out_each_part(part):
    kwargs = recipe(exclude=[part])
    assert parts_in(kwargs) == set(DEFAULT_RECIPE_PARTS) - {part}
    assert parts_in(recipe(exclude=part)) == set(DEFAULT_RECIPE_PARTS) - {part}  # one name, not in a list
    if part == "strategy":
        assert "strategy" not in kwargs  # Lightning's own default
    if part == "precision":
        assert not {"plugins", "precision"} & kwargs.keys()


def test_include_switches_on_a_part_that_is_off_by_default_and_yours_replaces_it():
    off = [p for p in RECIPE_PARTS if p not in DEFAULT_RECIPE_PARTS]
    assert off == ["batch_size"]
    assert parts_in(recipe(include=["batch_size"])) == {*DEFAULT_RECIPE_PARTS, "batch_size"}
    assert parts_in(recipe(include="batch_size", exclude=["sparsity"])) == {*DEFAULT_RECIPE_PARTS, "batch_size"} - {
        "sparsity"}
    mine = BatchSizeSchedule(max_accumulation=4)
    callbacks = recipe(include=["batch_size"], callbacks=[mine])["callbacks"]
    assert [c for c in callbacks if isinstance(c, BatchSizeSchedule)] == [mine]
    with pytest.raises(ValueError, match=r"^recipe\(include=\.\.\.\): unknown part\(s\) \['muon'\]"):
        recipe(include=["muon"])
    with pytest.raises(ValueError, match=r"\['batch_size'\] is both in include= and in exclude="):
        recipe(include=["batch_size"], exclude=["batch_size"])


def test_a_cpu_without_bf16_instructions_trains_in_fp32_and_says_so(monkeypatch, caplog):
    import logging

    from lightning_geo.utils import cpu_precision

    monkeypatch.undo()  # this machine's own answer is not wanted either: the flags decide
    monkeypatch.setattr(cpu_precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO):
        kwargs = recipe(accelerator="cpu")
    assert kwargs["precision"] == "32-true" and "plugins" not in kwargs
    assert "the precision part does not apply here: this CPU has no bf16 instructions" in caplog.text
    assert recipe(accelerator="cpu", precision="bf16-mixed")["precision"] == "bf16-mixed"  # asked for: yours
    monkeypatch.setattr(cpu_precision, "cpu_has_native_bf16", lambda: True)
    assert recipe(accelerator="cpu")["precision"] == "bf16-mixed"


def test_cpu_bf16_instructions_are_read_from_the_flags():
    from lightning_geo.utils.cpu_precision import BF16_CPU_FLAGS, cpu_flags

    epyc_avx2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
    sapphire = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    graviton3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
    assert not cpu_flags(epyc_avx2) & BF16_CPU_FLAGS
    assert cpu_flags(sapphire) & BF16_CPU_FLAGS and cpu_flags(graviton3) & BF16_CPU_FLAGS
    assert cpu_flags("") == set()


def test_excluding_every_part_is_plain_lightning():
    mine = LearningRateMonitor()
    assert recipe(exclude=RECIPE_PARTS, callbacks=[mine]) == {"callbacks": [mine]}


@pytest.mark.parametrize(
    ("accelerator", "cuda", "expected"),
    [
        ("cpu", True, "bf16-mixed"),
        ("gpu", False, "16-mixed"),
        ("cuda", False, "16-mixed"),
        (None, False, "bf16-mixed"),
        (None, True, "16-mixed"),
        ("auto", True, "16-mixed"),
    ],
)
def test_default_precision_follows_the_accelerator(monkeypatch, accelerator, cuda, expected):
    """16-mixed with PredictiveScalingPrecision where training runs on CUDA (the plugin builds without a GPU);
    bf16-mixed with Lightning's own plugin elsewhere: bf16 has no loss scale to predict."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    kwargs = recipe(accelerator=accelerator, exclude=[p for p in RECIPE_PARTS if p != "precision"])
    assert _mixed_precision(kwargs) == expected
    if expected == "16-mixed":
        assert _precision_plugin(kwargs).precision == "16-mixed" and "precision" not in kwargs
    else:
        assert kwargs["precision"] == "bf16-mixed" and "plugins" not in kwargs


def test_your_predictive_plugin_replaces_the_recipes_choice():
    yours = PredictiveScalingPrecision("bf16-mixed", per_block=False)
    kwargs = recipe(accelerator="cpu", plugins=[yours])
    assert kwargs["plugins"] == [yours] and "precision" not in kwargs


def test_your_mixed_precision_wins_over_the_default():
    kwargs = recipe(accelerator="cpu", precision="16-mixed", exclude=[p for p in RECIPE_PARTS if p != "precision"])
    assert _precision_plugin(kwargs).precision == "16-mixed"


# ----------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "ddp"}, r"^recipe\(strategy='ddp'\) conflicts .*exclude=\['strategy'\]"),
        ({"strategy": DDPStrategy()}, r"^recipe\(strategy=<\S*DDPStrategy object .*exclude=\['strategy'\]"),
        ({"precision": "32-true"}, r"^recipe\(precision='32-true'\): .*exclude=\['precision'\]"),
        ({"plugins": [MixedPrecision("bf16-mixed", "cpu")]},
         r"^recipe\(plugins=\.\.\.\): MixedPrecision is a precision plugin.*exclude=\['precision'\]"),
        ({"exclude": ["precision", "nope"]}, r"^recipe\(exclude=\.\.\.\): unknown part\(s\) \['nope'\]; the parts are"),
        ({"callbacks": [LearningRateMonitor(), "ModelCheckpoint"]},
         r"^recipe\(callbacks=\.\.\.\): 'ModelCheckpoint' is not a Lightning Callback"),
    ],
    ids=["strategy-name", "strategy-instance", "precision", "plugins", "exclude", "callbacks"],
)
def test_bad_combination_is_refused_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        recipe(**kwargs)


def test_accepted_forms():
    assert recipe(strategy="geo_hybrid")["strategy"] == "geo_hybrid"
    geo = GeoHybridStrategy("ddp")
    assert recipe(strategy=geo)["strategy"] is geo
    float32 = recipe(exclude=["precision"], precision="32-true")
    assert float32["precision"] == "32-true" and "plugins" not in float32
    mixed = MixedPrecision("bf16-mixed", "cpu")
    assert recipe(exclude=["precision"], plugins=[mixed])["plugins"] == [mixed]
    assert recipe(exclude=["strategy"], strategy="ddp")["strategy"] == "ddp"
    assert recipe(exclude=["strategy"], strategy=geo)["strategy"] is geo


# ----------------------------------------------------------------------------------- training


class Recorder(Callback):
    """Each step's training loss (mean over the data-parallel ranks) and batch length."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.seq_lens: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")))
        self.seq_lens.append(int(batch[0].shape[1]))


def tiny_data() -> CharDataModule:
    """:data:`TEXT` as an in-memory corpus: ~50 shuffled batches of 4 x 32 characters, the last tenth held out."""
    vocab = UNKNOWN + "".join(sorted(set(TEXT)))
    ids = torch.tensor([vocab.index(c) for c in TEXT], dtype=torch.int32)
    split = len(ids) * 9 // 10
    corpus = Corpus(vocab, ids[:split], ids[split:], "in memory", num_train_files=1, num_val_files=0)
    return CharDataModule(corpus, seq_len=SEQ_LEN, batch_size=4, val_samples=4)


def tiny_model(vocab: str, max_steps: int) -> CharLanguageModel:
    """The demo model with 2 blocks of width 32 (a block chain for the per-block precision)."""
    return CharLanguageModel(vocab, seq_len=SEQ_LEN, n_layer=2, n_head=2, n_embd=32, warmup_steps=2,
                             max_steps=max_steps)


def _fit(root: Path, *, steps: int, callbacks: Sequence[Callback] = (), ckpt_path: Path | None = None,
         checkpoint_every: int | None = None, **recipe_kwargs: Any) -> tuple[pl.Trainer, CharLanguageModel]:
    """``steps`` steps of :func:`tiny_model` on :func:`tiny_data` with ``L.Trainer(**recipe(...))`` on one CPU."""
    pl.seed_everything(0, verbose=False)
    data = tiny_data()
    model = tiny_model(data.vocab, steps)
    callbacks = list(callbacks)
    if checkpoint_every:
        callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=checkpoint_every, save_top_k=-1))
    trainer = pl.Trainer(
        **recipe(accelerator="cpu", devices=1, callbacks=callbacks, **recipe_kwargs),
        max_steps=steps, logger=TensorBoardLogger(root, name="", version="tb"), log_every_n_steps=1,
        limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=bool(checkpoint_every),
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, model


def test_recipe_trains_the_demo_model_and_every_part_logs(tmp_path):
    pl.seed_everything(0, verbose=False)
    initial = [p.detach().clone() for p in tiny_model(tiny_data().vocab, 6).parameters()]
    trainer, model = _fit(tmp_path, steps=6)
    assert trainer.global_step == 6
    assert isinstance(trainer.strategy, GeoHybridStrategy) and trainer.strategy.plan.name == "single device"
    assert not isinstance(trainer.precision_plugin, PredictiveScalingPrecision)  # bf16: Lightning's own
    assert trainer.precision_plugin.precision == "bf16-mixed"
    assert all(not torch.equal(a, b) for a, b in zip(initial, model.parameters(), strict=True))  # all trained
    tags = read_scalars(tmp_path / "tb")
    losses = [value for _, value in tags["train/loss"]]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    for part in set(DEFAULT_RECIPE_PARTS) - {"precision"}:  # in bf16 the precision part has nothing to decide
        assert any(tag.startswith(f"geo/{LOGGED_AS[part]}/") for tag in tags), (part, sorted(tags))
    if "seq_len_warmup" in DEFAULT_RECIPE_PARTS:
        seq_lens = [value for _, value in tags["geo/curriculum/seq_len"]]
        assert seq_lens[0] < seq_lens[-1] == SEQ_LEN  # batches started short and reached full length


def test_resume_from_a_mid_epoch_checkpoint_continues_exactly(tmp_path):
    """24 steps (of an epoch of ~50 shuffled batches) straight through, against a run resumed from the straight
    run's checkpoint after step 12: the same batches, losses, weights and GEO decisions, bit for bit.

    Every part is on, in 16-mixed (real fp16 on the CPU, so that PredictiveScalingPrecision scales and its state
    counts). The warmup is stretched to 75% of the steps so that the checkpoint falls inside it, and the checkpoint
    falls between two of SparsityAwareLR's reads (every 10 steps), so that the row counts it has accumulated since
    must be restored."""
    steps, half = 24, 12
    straight_record, resumed_record = Recorder(), Recorder()
    straight_trainer, straight = _fit(tmp_path / "straight", steps=steps, callbacks=[straight_record],
                                      checkpoint_every=half, seq_len_warmup=0.75, precision="16-mixed")
    # every part on but batch_size (its resume, from an end-of-epoch checkpoint, is in test_batch_size_schedule.py)
    assert parts_in(recipe()) == set(RECIPE_PARTS) - {"batch_size"}, "this test needs every part on: turn them on here"
    assert isinstance(straight_trainer.precision_plugin, PredictiveScalingPrecision)
    assert straight_trainer.precision_plugin.precision == "16-mixed"
    assert straight_record.seq_lens[half] < SEQ_LEN  # mid-warmup at the checkpoint
    ckpt = tmp_path / "straight" / "ckpt" / f"epoch=0-step={half}.ckpt"
    assert ckpt.exists()
    _, resumed = _fit(tmp_path / "resumed", steps=steps, callbacks=[resumed_record], ckpt_path=ckpt,
                      seq_len_warmup=0.75, precision="16-mixed")
    assert resumed_record.seq_lens == straight_record.seq_lens[half:]
    assert resumed_record.losses == straight_record.losses[half:]
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name
    # the precision plugin's state (scale, amax history) shows in the weights above and in what it logs
    straight_tags, resumed_tags = read_scalars(tmp_path / "straight" / "tb"), read_scalars(tmp_path / "resumed" / "tb")
    decisions = [tag for tag in straight_tags if tag.startswith(("geo/precision/", "geo/curriculum/", "geo/sparsity/"))]
    assert "geo/precision/predicted_amax" in decisions
    for tag in decisions:
        assert resumed_tags.get(tag, []) == [(step, v) for step, v in straight_tags[tag] if step >= half], tag


# ----------------------------------------------------------------------------------- YAML form


def test_yaml_form_is_the_recipe(tmp_path, text_folder, monkeypatch):
    """examples/recipe.yaml's trainer, through the demo's LightningCLI, gets recipe(accelerator="cpu")'s parts."""
    monkeypatch.setattr(sys, "argv", ["lightning_cli"])  # LightningCLI warns about pytest's argv beside `args`
    tiny = ["--data.seq_len=32", "--data.batch_size=4", "--data.val_samples=4", "--model.n_layer=1",
            "--model.n_embd=32", "--trainer.max_steps=4"]
    cli = DemoLightningCLI(["--config", str(RECIPE_YAML), "--data.corpus", str(text_folder), *tiny,
                            "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)
    expected = pl.Trainer(**recipe(accelerator="cpu"), logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    got = cli.trainer
    assert type(got.strategy) is type(expected.strategy)
    assert type(got.precision_plugin) is type(expected.precision_plugin)
    assert got.precision_plugin.precision == expected.precision_plugin.precision == "bf16-mixed"
    geo_got = [c for c in got.callbacks if isinstance(c, GEO_CALLBACKS)]
    geo_expected = [c for c in expected.callbacks if isinstance(c, GEO_CALLBACKS)]
    assert [type(c) for c in geo_got] == [type(c) for c in geo_expected]
    for mine, reference in zip(geo_got, geo_expected, strict=True):
        assert init_args(mine) == init_args(reference), type(mine).__name__
    assert cli.model.hparams.optimizer == "adamw"


# ----------------------------------------------------------------------------------- two processes


@pytest.mark.ddp
def test_two_cpu_processes_train_under_ddp(tmp_path):
    """``recipe(accelerator="cpu", devices=2)`` under ``torchrun`` (this file as the worker): geo_hybrid plans DDP
    on 2 gloo processes and every part trains."""
    from tests.test_geo_hybrid import run_worker

    result = run_worker(tmp_path, 2, worker=Path(__file__).resolve())
    assert result["world_size"] == 2 and result["plan"] == "DDP" and result["global_step"] == DDP_STEPS
    assert len(result["losses"]) == DDP_STEPS and all(math.isfinite(v) for v in result["losses"])
    assert set(result["parts"]) == set(DEFAULT_RECIPE_PARTS)
    if "seq_len_warmup" in DEFAULT_RECIPE_PARTS:
        assert result["seq_lens"][0] < SEQ_LEN


def _worker(out: Path) -> None:
    """The 2-process run of :func:`test_two_cpu_processes_train_under_ddp`; rank 0 writes ``out/result.json``."""
    data = tiny_data()
    pl.seed_everything(0, verbose=False)
    model = tiny_model(data.vocab, DDP_STEPS)
    record = Recorder()
    import lightning_geo.recipes  # as the module's fixture does: the parts of a CPU with bf16 instructions

    lightning_geo.recipes.default_cpu_precision = lambda: "bf16-mixed"
    kwargs = recipe(accelerator="cpu", devices=2, callbacks=[record])
    trainer = pl.Trainer(**kwargs, max_steps=DDP_STEPS, logger=False, enable_checkpointing=False,
                         limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=out)
    trainer.fit(model, datamodule=data)
    if trainer.is_global_zero:
        result = {"world_size": trainer.world_size, "plan": trainer.strategy.plan.name,
                  "global_step": trainer.global_step, "losses": record.losses, "seq_lens": record.seq_lens,
                  "parts": sorted(parts_in(kwargs))}
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _worker(Path(sys.argv[sys.argv.index("--out") + 1]))
