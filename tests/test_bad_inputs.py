"""Wrong input ends in one error that names the argument (or the command-line flag) and the fix, as early as it can.

One case per wrong input: the exception type and the name in its message for the Python API, and for the command
line the exit status and a one-line ``lightning-geo <command>: error: ...`` without a traceback.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_geo import recipe
from lightning_geo.callbacks import CurriculumSampler, DynamicCurriculum, SparsityAwareLR
from lightning_geo.demo.corpus import load_corpus
from lightning_geo.demo.data import CharDataModule
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.demo.predict import score_folder
from lightning_geo.precision import PredictiveScalingPrecision
from lightning_geo.strategies import GeoHybridStrategy
from lightning_geo.strategies.checkpoint import UnreadableCheckpointError
from lightning_geo.strategies.planner import ModelSize, plan_parallelism
from lightning_geo.strategies.topology import single_node
from lightning_geo.strategies.topology_smi import read_topology_file
from lightning_geo.tuning import Float, GeoTuner, SearchSpace
from lightning_geo.tuning.config_file import load_study_file
from lightning_geo.utils import reduce_tensor
from tests.helpers import tiny_trainer
from tests.test_demo_cli import _run_main
from tests.test_topology import TOPOLOGY_DIR

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # one-process saves

H100 = TOPOLOGY_DIR / "12_hgx_h100_8x_nv18_2socket_8nic.txt"  # 8 GPUs, NVSwitch; the file does not say 80 GB
SPACE = SearchSpace({"lr": Float(1e-3, 1e-1, log=True)})


def _one_line_error(err: str, command: str) -> str:
    assert err.startswith(f"lightning-geo {command}: error:"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# ---------------------------------------------------------------- the tuner's arguments, at construction


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"storage": "foo://study"}, r"storage='foo://study': unknown database 'foo'.*sqlite:///path/to",
                     id="storage-unknown-scheme"),
        pytest.param({"storage": "sqlite://relative.db"},
                     r"storage='sqlite://relative.db' has two slashes.*storage='sqlite:///relative.db'",
                     id="storage-sqlite-two-slashes"),
        pytest.param({"storage": "sqlite://"}, r"storage='sqlite://' is an in-memory database.*sqlite:///path/to",
                     id="storage-sqlite-in-memory"),
        pytest.param({"storage": "sqlite:study.db"}, r"storage='sqlite:study.db' looks like a database URL without",
                     id="storage-url-without-slashes"),
        pytest.param({"devices": [0, 1]}, r"devices=\[0, 1\] applies only with executor='subprocess'.*"
                     r"not executor='in_process'", id="devices-in-process"),
        pytest.param({"monitor": ["a", "b"], "mode": ["min"]},
                     r"mode=\['min'\] has 1 entries but monitor=\['a', 'b'\] has 2", id="mode-shorter-than-monitor"),
    ],
)
def test_tuner_arguments_fail_at_construction(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    pytest.importorskip("optuna")
    with pytest.raises(ValueError, match=match):
        GeoTuner(SPACE, log_dir=tmp_path, **kwargs)


def test_tuner_storage_in_a_missing_folder(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path}/no/such/folder/study.db"
    with pytest.raises(ValueError, match=r"storage='sqlite:///.*/no/such/folder/study.db': the folder .* does not "
                                         r"exist.*sqlite:///path/to/study.db"):
        GeoTuner(SPACE, log_dir=tmp_path, storage=url)
    assert not (tmp_path / "no").exists()


@pytest.mark.skipif(importlib.util.find_spec("MySQLdb") is not None, reason="the MySQL driver is installed here")
def test_tuner_storage_with_a_driver_that_is_not_installed(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    with pytest.raises(ValueError, match=r"storage='mysql://u@db/study': the mysql driver 'mysqldb' is not installed"
                                         r".*pip install mysqlclient"):
        GeoTuner(SPACE, log_dir=tmp_path, storage="mysql://u@db/study")


def test_one_mode_string_still_applies_to_every_metric(tmp_path: Path) -> None:
    assert GeoTuner(SPACE, log_dir=tmp_path, monitor=["a", "b"], mode="max").mode == ("max", "max")


# ---------------------------------------------------------------- other constructors


def test_precision_plugin_device_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"device='tpu' is not an autocast device type; expected one of 'cuda', 'cpu'"):
        PredictiveScalingPrecision("16-mixed", device="tpu")


@pytest.mark.parametrize("value", [-0.3, 0, "soon"])
def test_recipe_names_seq_len_warmup_not_the_curriculum_deadline(value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^recipe\(seq_len_warmup={value!r}\)") as info:
        recipe(seq_len_warmup=value)
    assert "deadline=" not in str(info.value)


# ---------------------------------------------------------------- study files, before any trial runs

REGRESSOR = "model: {class_path: tests.test_tuner.Regressor%s}\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("space: {model.lr: {float: [0.01, 0.1]}}\n" + REGRESSOR % ", init_args: {widht: 8}",
                     r"model.init_args: 'widht' is not an argument of Regressor; did you mean 'width'\? its "
                     r"arguments: lr, width", id="init-args-typo"),
        pytest.param("space: {model.lrr: {float: [0.01, 0.1]}}\n" + REGRESSOR % "",
                     r"space key 'model.lrr': 'lrr' is not an argument of Regressor; did you mean 'lr'\?",
                     id="space-key-typo"),
        pytest.param("space: {model.lr: {float: [0.01, 0.1]}, trainer.max_epoch: 2}\n" + REGRESSOR % "",
                     r"space key 'trainer.max_epoch': 'max_epoch' is not an argument of Trainer; did you mean "
                     r"'max_epochs'\?", id="space-trainer-typo"),
        pytest.param("space: {model.lr: {float: [0.01, 0.1]}}\n" + REGRESSOR % "" + "trainer: {acclerator: cpu}\n",
                     r"trainer: 'acclerator' is not an argument of Trainer; did you mean 'accelerator'\?",
                     id="trainer-typo"),
        pytest.param("space: {model.lr: {float: [0.1, 0.01]}}\n" + REGRESSOR % "",
                     r"space: model.lr: Float: low \(0.1\) must be smaller than high", id="space-bounds"),
        pytest.param("space: {model.lr: {float: [0.01, 0.1], log: maybe}}\n" + REGRESSOR % "",
                     r"space: model.lr: log must be true or false, got 'maybe'", id="space-log-not-bool"),
        pytest.param("space: {data.batch_size: {categorical: [8, 16]}}\n" + REGRESSOR % "",
                     r"space key 'data.batch_size' needs a 'data' section", id="space-data-without-data"),
        pytest.param("space: {model.lr: {float: [0.01, 0.1]}}\n" + REGRESSOR % "" + "max_trial: 3\n",
                     r"unknown keys \['max_trial'\]; did you mean 'max_trials'\?", id="study-key-typo"),
        pytest.param("space: {model.lr: {float: [0.01, 0.1]}}\n" + REGRESSOR % "" + "storage: sqlite://study.db\n",
                     r"storage='sqlite://study.db' has two slashes", id="study-storage-two-slashes"),
    ],
)
def test_study_file_mistakes_fail_before_any_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                                   match: str) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(text)
    if "storage" not in text:  # the storage is checked by GeoTuner, the rest by the file's reader
        with pytest.raises(ValueError, match=match):
            load_study_file(config)
    code, out, err = _run_main(["tune", "--config", str(config), "--out", str(tmp_path / "runs")], capsys)
    assert code == 2 and "[trial " not in out
    assert re.search(match, _one_line_error(err, "tune"))


class BrokenModule(pl.LightningModule):
    """A module whose construction fails: every trial of a study over it fails."""

    def __init__(self, lr: float = 0.1) -> None:
        raise RuntimeError("broken on purpose")


@pytest.mark.filterwarnings("ignore:GeoTuner")
@pytest.mark.parametrize(("trials", "match"), [
    pytest.param(2, r"all 2 trials failed; the first \(trial 0\) with: RuntimeError: broken on purpose \(its "
                 r"traceback is in", id="all-failed"),
    pytest.param(6, r"5 trials failed in a row; the last one \(trial 4\) with: RuntimeError: broken on purpose",
                 id="failed-in-a-row"),
])
def test_tune_exits_non_zero_when_the_trials_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str], trials: int,
                                                 match: str) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(f"max_trials: {trials}\nspace: {{model.lr: {{float: [0.01, 0.1]}}}}\n"
                      "model: {class_path: tests.test_bad_inputs.BrokenModule}\n")
    code, _, err = _run_main(["tune", "--config", str(config), "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 1
    assert re.search(match, _one_line_error(err, "tune"))


# ---------------------------------------------------------------- the planner: never a plan it cannot know fits


def test_topo_refuses_a_plan_it_cannot_know_fits_and_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run_main(["topo", "--file", str(H100), "--params", "7e9"], capsys)
    assert code == 2 and out == ""
    assert "DDP, needs 112.0 GB per GPU" in _one_line_error(err, "topo") and "--gpu-memory-gb" in err
    assert "gpu_memory_bytes" not in err and "gpu_memory_gb" not in err
    code, out, err = _run_main(["topo", "--file", str(H100), "--params", "7e9", "--gpu-memory-gb", "80"], capsys)
    assert code == 0, err
    chosen = next(line for line in out.splitlines() if line.rstrip().endswith("chosen"))
    assert "DDP" not in chosen
    assert any("DDP" in line and "does not fit: 112.0 GB > 72.0 GB" in line for line in out.splitlines())


def test_topo_refuses_when_no_plan_fits_the_stated_memory(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run_main(["topo", "--file", str(H100), "--params", "7e10", "--gpu-memory-gb", "80"], capsys)
    assert code == 2 and out == ""
    assert re.search(r"no plan fits in 72.0 GB per GPU \(90% of --gpu-memory-gb.*\): the smallest, FSDP, needs "
                     r"[\d.]+ GB; use more GPUs \(--nodes\)", _one_line_error(err, "topo"))


def test_topo_warning_about_unknown_memory_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run_main(["topo", "--file", str(H100), "--params", "1e8"], capsys)
    assert code == 0, err
    warning = next(line for line in out.splitlines() if "GPU memory is unknown" in line)
    assert "--gpu-memory-gb 80" in warning and "gpu_memory" not in warning


def test_planner_and_strategy_refuse_with_their_argument_names() -> None:
    cluster = single_node(read_topology_file(H100))
    with pytest.raises(ValueError, match=r"cheapest plan, DDP, needs 112.0 GB per GPU.*gpu_memory_bytes=80e9"):
        plan_parallelism(cluster, ModelSize(7e9))
    with pytest.raises(ValueError, match=r"needs 112.0 GB per GPU.*gpu_memory_gb=80"):
        GeoHybridStrategy(topology=H100)._make_plan(cluster, ModelSize(7e9))
    report = plan_parallelism(cluster, ModelSize(7e9), gpu_memory_bytes=80e9)
    assert report.candidates[0].fits and report.chosen.memory_bytes <= 72e9


# ---------------------------------------------------------------- checkpoints: both kinds load, broken ones say so


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.fixture(scope="module")
def demo_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo model saved by ``geo_hybrid`` (a distributed checkpoint folder), as one file, and broken copies."""
    root = tmp_path_factory.mktemp("checkpoints")
    (root / "a.py").write_text("".join(f"def f_{i}(x):\n    return x * {i}\n\n" for i in range(100)))
    corpus = load_corpus(root / "a.py", val_fraction=0.2)
    model = CharLanguageModel(corpus.vocab, seq_len=16, n_layer=1, n_head=2, n_embd=16, warmup_steps=1)
    trainer = tiny_trainer(root, logger=False, max_steps=1, strategy="geo_hybrid", limit_val_batches=0)
    trainer.fit(model, CharDataModule(corpus, seq_len=16, batch_size=8, val_samples=8))
    folder = root / "geo_hybrid.ckpt"
    trainer.save_checkpoint(folder)
    assert folder.is_dir()
    paths = {"folder": folder, "file": root / "file.ckpt"}
    torch.save(torch.load(folder / "meta.pt", weights_only=False) | {"state_dict": model.state_dict()}, paths["file"])
    paths["truncated folder"] = root / "truncated.ckpt"
    shutil.copytree(folder, paths["truncated folder"])
    _truncate(next(paths["truncated folder"].glob("*.distcp")))
    paths["truncated file"] = root / "truncated_file.ckpt"
    shutil.copy(paths["file"], paths["truncated file"])
    _truncate(paths["truncated file"])
    paths["garbage file"] = root / "garbage.ckpt"
    paths["garbage file"].write_bytes(b"not a checkpoint\n" * 10)
    (root / "texts").mkdir()
    (root / "texts" / "a.txt").write_text("def g(y):\n    return y * 2\n")
    return paths


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_predict_loads_a_checkpoint_file_and_a_geo_hybrid_folder(demo_checkpoints: dict[str, Path], kind: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = demo_checkpoints[kind]
    code, out, err = _run_main(["predict", str(checkpoint.parent / "texts"), "--checkpoint", str(checkpoint),
                                "--accelerator", "cpu"], capsys)
    assert code == 0, err
    assert "1 files" in out


@pytest.mark.parametrize(("kind", "reason"), [
    ("truncated folder", r"__0_0.distcp has [\d,]+ bytes, .metadata lists [\d,]+ \(truncated\)"),
    ("truncated file", r"a torch.save archive cut short"),
    ("garbage file", r"UnpicklingError"),
])
def test_predict_names_a_broken_checkpoint(demo_checkpoints: dict[str, Path], kind: str, reason: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = demo_checkpoints[kind]
    code, _, err = _run_main(["predict", str(checkpoint.parent / "texts"), "--checkpoint", str(checkpoint)], capsys)
    assert code == 2
    expected = rf"--checkpoint {checkpoint} is not a readable checkpoint \(truncated or corrupt\): {reason}"
    assert re.search(expected, _one_line_error(err, "predict"))
    with pytest.raises(UnreadableCheckpointError, match=rf"^checkpoint {checkpoint} is not a readable checkpoint"):
        score_folder(checkpoint, checkpoint.parent / "texts", accelerator="cpu")


def _geo_hybrid_trainer(root: Path) -> pl.Trainer:
    return tiny_trainer(root, logger=False, max_steps=1, strategy="geo_hybrid", limit_val_batches=0)


@pytest.mark.parametrize("damage", ["truncated data", "garbage index", "no index"])
def test_resuming_from_a_broken_geo_hybrid_checkpoint_names_it(tmp_path: Path, damage: str) -> None:
    trainer = _geo_hybrid_trainer(tmp_path)
    trainer.fit(BoringModel())
    folder = tmp_path / "last.ckpt"
    trainer.save_checkpoint(folder)
    if damage == "truncated data":
        _truncate(next(folder.glob("*.distcp")))
    elif damage == "garbage index":
        (folder / ".metadata").write_bytes(b"garbage")
    else:
        (folder / ".metadata").unlink()
    with pytest.raises(UnreadableCheckpointError, match=rf"^ckpt_path {folder} is not a readable checkpoint "
                                                        r"\(truncated or corrupt\): .*resume from another") as info:
        _geo_hybrid_trainer(tmp_path).fit(BoringModel(), ckpt_path=folder)
    assert info.value.__cause__ is not None


# ---------------------------------------------------------------- a string for a number, one thing for a list


class _NoLength(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield 1


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        pytest.param(lambda: recipe(exclude=5), TypeError, r"recipe\(exclude=...\): expected part names",
                     id="recipe-exclude-int"),
        pytest.param(lambda: DynamicCurriculum(start_threshold="0.5"),
                     TypeError, r"start_threshold='0.5' must be a number", id="curriculum-start-threshold-str"),
        pytest.param(lambda: DynamicCurriculum(hard_fraction="0.1"),
                     TypeError, r"hard_fraction='0.1' must be a number", id="curriculum-hard-fraction-str"),
        pytest.param(lambda: CurriculumSampler(5), TypeError,
                     r"dataset=int has no length", id="sampler-dataset-int"),
        pytest.param(lambda: CurriculumSampler(_NoLength()), TypeError,
                     r"dataset=_NoLength has no length.*not an IterableDataset", id="sampler-iterable-dataset"),
        pytest.param(lambda: CurriculumSampler([1, 2], seed="abc"), TypeError,
                     r"seed='abc' must be an integer", id="sampler-seed-str"),
        pytest.param(lambda: PredictiveScalingPrecision(fp32_modules=torch.nn.LayerNorm), TypeError,
                     r"fp32_modules=.* must be a list.*fp32_modules=\[LayerNorm\]", id="precision-fp32-modules-class"),
        pytest.param(lambda: PredictiveScalingPrecision(fp32_modules="LayerNorm"), TypeError,
                     r"fp32_modules='LayerNorm' must be a list", id="precision-fp32-modules-str"),
        pytest.param(lambda: PredictiveScalingPrecision(enabled="false"), TypeError,
                     r"enabled='false' must be True or False", id="precision-enabled-str"),
        pytest.param(lambda: SparsityAwareLR(log_histograms="no"), TypeError,
                     r"`log_histograms` must be a bool", id="sparsity-log-histograms-str"),
        pytest.param(lambda: GeoHybridStrategy(tensor_parallel_plan="auto"), TypeError,
                     r"tensor_parallel_plan='auto' must be a mapping", id="geo-hybrid-tp-plan-str"),
        pytest.param(lambda: reduce_tensor(pl.Trainer(logger=False), "1.0"),
                     TypeError, r"tensor='1.0' must be a tensor or a Python number", id="reduce-tensor-str"),
    ],
)
def test_a_wrong_type_is_refused_at_construction_by_name(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_unknown_block_names_are_refused_in_bf16_too(tmp_path: Path) -> None:
    """Block names are checked whatever the precision: a typo does not wait for a switch to 16-mixed."""
    plugin = PredictiveScalingPrecision("bf16-mixed", blocks=["nope"])
    trainer = tiny_trainer(tmp_path, max_steps=1, plugins=[plugin], limit_val_batches=0)
    with pytest.raises(ValueError, match=r"blocks=\['nope'\]: \['nope'\] are not submodules of BoringModel"):
        trainer.fit(BoringModel())
