"""The demo's LightningCLI: every GEO class from YAML ``class_path``/``init_args``, the example configs, errors.

In-process runs of ``run_lightning_cli`` / ``DemoLightningCLI`` on the tiny ``text_folder`` corpus; a fit is
4 steps of a 1-block model.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningArgumentParser, instantiate_class

from lightning_geo.callbacks import DynamicCurriculum, SparsityAwareLR
from lightning_geo.demo.corpus import load_corpus
from lightning_geo.demo.data import CharDataModule, CorpusDataModule
from lightning_geo.demo.lightning_cli import DemoLightningCLI, run_lightning_cli
from lightning_geo.demo.plot import read_scalars
from lightning_geo.optim import GeoAdamW
from lightning_geo.precision import PredictiveScalingPrecision
from lightning_geo.strategies import GeoHybridStrategy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO_GEO = str(EXAMPLES / "demo_geo.yaml")

TINY = [
    "--trainer.max_steps=4",
    "--data.seq_len=32",
    "--data.batch_size=4",
    "--data.val_samples=4",
    "--model.n_layer=1",
    "--model.n_embd=32",
    "--model.warmup_steps=1",
    "--trainer.enable_progress_bar=false",
]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """LightningCLI warns when it gets ``args`` and ``sys.argv`` holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["lightning_cli"])


def _tiny(corpus: Path, log_dir: Path) -> list[str]:
    return [*TINY, "--data.corpus", str(corpus), "--trainer.logger.init_args.save_dir", str(log_dir)]


def _instantiate(tmp_path: Path, corpus: Path, config: dict) -> DemoLightningCLI:
    """Model, data and Trainer of examples/demo.yaml with ``config`` on top, instantiated, not run."""
    path = tmp_path / "extra.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["--config", str(EXAMPLES / "demo.yaml"), "--config", str(path), *_tiny(corpus, tmp_path)]
    return DemoLightningCLI(args, run=False)


def _callback(cli: DemoLightningCLI, cls: type) -> object:
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, cls)]
    return callback


def test_dynamic_curriculum_from_class_path(tmp_path, text_folder):
    curricula = [
        {
            "class_path": "lightning_geo.callbacks.DynamicCurriculum",
            "init_args": {"mode": "seq_len", "deadline": "2000 steps", "min_seq_len": 16, "pacing": "linear"},
        },
        {
            "class_path": "lightning_geo.callbacks.DynamicCurriculum",
            "init_args": {"scorer": "rarity", "mastery_window": 7, "start_threshold": 0.5},
        },
    ]
    cli = _instantiate(tmp_path, text_folder, {"trainer": {"callbacks": curricula}})
    seq_len, rarity = [c for c in cli.trainer.callbacks if isinstance(c, DynamicCurriculum)]
    assert (seq_len.mode, seq_len.deadline, seq_len.min_seq_len) == ("seq_len", "2000 steps", 16)
    assert seq_len.pacing == "linear"
    assert (rarity.mode, rarity.scorer, rarity.mastery_window, rarity.start_threshold) == ("samples", "rarity", 7, 0.5)


def test_sparsity_aware_lr_from_class_path(tmp_path, text_folder):
    callback = {
        "class_path": "lightning_geo.callbacks.SparsityAwareLR",
        "init_args": {"params": ["model.wte.*"], "power": 0.25, "every_n_steps": 3, "scale_lr": False},
    }
    cli = _instantiate(tmp_path, text_folder, {"trainer": {"callbacks": [callback]}})
    sparsity = _callback(cli, SparsityAwareLR)
    assert (tuple(sparsity.params), sparsity.power, sparsity.every_n_steps, sparsity.scale_lr) == (
        ("model.wte.*",),
        0.25,
        3,
        False,
    )


def test_predictive_scaling_precision_from_class_path(tmp_path, text_folder):
    plugin = {
        "class_path": "lightning_geo.precision.PredictiveScalingPrecision",
        "init_args": {
            "precision": "bf16-mixed",
            "window": 8,
            "headroom": 4.0,
            "fp32_modules": ["*.mlp.*", "torch.nn.LayerNorm"],
        },
    }
    cli = _instantiate(tmp_path, text_folder, {"trainer": {"precision": None, "plugins": [plugin]}})
    precision = cli.trainer.precision_plugin
    assert isinstance(precision, PredictiveScalingPrecision)
    assert (precision.precision, precision.window, precision.headroom) == ("bf16-mixed", 8, 4.0)
    assert list(precision.fp32_modules) == ["*.mlp.*", torch.nn.LayerNorm]  # a dotted class path is the class


def test_geo_hybrid_strategy_from_class_path(tmp_path, text_folder):
    strategy = {
        "class_path": "lightning_geo.strategies.GeoHybridStrategy",
        "init_args": {
            "plan": "ddp",
            "prefer_simpler_within": 0.25,
            "mesh": [1, 1, 1],
            "bandwidths": {"net": 12.5},
            "model_size": 1.0e9,
            "timeout": "0:10:00",
        },
    }
    cli = _instantiate(tmp_path, text_folder, {"trainer": {"strategy": strategy}})
    geo = cli.trainer.strategy
    assert isinstance(geo, GeoHybridStrategy)
    assert (geo._plan_kind, geo._prefer_simpler_within, geo._forced_mesh) == ("ddp", 0.25, (1, 1, 1))
    assert geo._bandwidths.net == 12.5 and geo._model_size_arg == 1.0e9
    assert geo._timeout.total_seconds() == 600


def test_geo_adamw_from_class_path():
    # The demo's CLI builds its optimizer in the model (see examples/geo_adamw_optimizer.yaml); this is
    # LightningCLI's own optimizer parser, as a LightningModule without configure_optimizers would use it.
    parser = LightningArgumentParser()
    parser.add_optimizer_args((torch.optim.Optimizer,))
    init_args = {"lr": 0.01, "betas": [0.8, 0.9], "max_row_scale": 4, "row_scale_power": 0.25}
    config = {"optimizer": {"class_path": "lightning_geo.optim.GeoAdamW", "init_args": init_args}}
    parsed = parser.parse_string(yaml.safe_dump(config))
    layer = torch.nn.Embedding(5, 3)
    optimizer = instantiate_class(layer.parameters(), parsed.optimizer)
    assert isinstance(optimizer, GeoAdamW)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["max_row_scale"]) == (0.01, (0.8, 0.9), 4.0)
    assert group["row_scale_power"] == 0.25
    layer(torch.tensor([1])).sum().backward()
    before = layer.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(layer.weight[1], before[1]) and torch.equal(layer.weight[0], before[0])  # lazy rows


def test_demo_geo_resolves_every_geo_part_and_links_the_model_to_the_data(tmp_path, text_folder):
    cli = DemoLightningCLI(["--config", DEMO_GEO, *_tiny(text_folder, tmp_path)], run=False)
    assert isinstance(cli.trainer.strategy, GeoHybridStrategy)  # `strategy: geo_hybrid`, the string form
    assert isinstance(cli.trainer.precision_plugin, PredictiveScalingPrecision)
    assert cli.trainer.precision_plugin.precision == "16-mixed"
    curriculum = _callback(cli, DynamicCurriculum)
    assert (curriculum.mode, curriculum.deadline) == ("seq_len", 0.3)
    _callback(cli, SparsityAwareLR)
    assert cli.model.hparams.optimizer == "geo_adamw"
    assert cli.model.hparams.vocab == cli.datamodule.vocab == load_corpus(text_folder).vocab
    assert cli.model.hparams.seq_len == cli.datamodule.seq_len == 32
    assert cli.model.hparams.max_steps == cli.trainer.max_steps == 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            [
                "--trainer.callbacks+",
                "lightning_geo.callbacks.DynamicCurriculum",
                "--trainer.callbacks.mode",
                "sequence",
            ],
            "error: trainer.callbacks[4]: DynamicCurriculum: ValueError: mode='sequence' is not one of "
            "['samples', 'seq_len']\n",
        ),
        (
            ["--trainer.callbacks+", "lightning_geo.callbacks.SparsityAwareLR", "--trainer.callbacks.power", "lots"],
            'Parser key "power":\n',
        ),  # a type error: jsonargparse's own parse error
        (
            [
                "--trainer.strategy.class_path",
                "lightning_geo.strategies.GeoHybridStrategy",
                "--trainer.strategy.init_args.plan",
                "fsdpp",
            ],
            "error: trainer.strategy: ValueError: GeoHybridStrategy: plan must be one of "
            "('auto', 'ddp', 'fsdp', 'hsdp', 'tensor_parallel'), got 'fsdpp'\n",
        ),
        (
            ["--trainer.plugins.init_args.window", "0"],
            "error: trainer.plugins[0]: PredictiveScalingPrecision: ValueError: window=0 must be an integer >= 1\n",
        ),
        (["--trainer.precision", "16-mixed"], "error: Trainer: ValueError: Received both `precision=16-mixed`"),
        (["--model.optimizer", "sgd"], "error: CharLanguageModel: ValueError: optimizer='sgd' is not one of"),
        (
            ["--data.corpus", "/no/such/corpus"],
            "error: CorpusDataModule: CorpusError: corpus path '/no/such/corpus' does not exist\n",
        ),
    ],
    ids=["curriculum", "sparsity-type", "strategy", "precision-plugin", "trainer", "model", "corpus"],
)
def test_bad_value_is_a_usage_error_naming_it(tmp_path, text_folder, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_:
        run_lightning_cli(["fit", "--config", DEMO_GEO, *_tiny(text_folder, tmp_path), *extra])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert message in err
    assert "Traceback" not in err


def test_optimizer_key_of_lightning_cli_is_refused(tmp_path, text_folder, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_lightning_cli(["fit", "--config", DEMO_GEO, *_tiny(text_folder, tmp_path), "--optimizer", "Adam"])
    assert exit_.value.code == 2
    assert "--optimizer" in capsys.readouterr().err


def test_fit_demo_geo_logs_every_geo_part(tmp_path, text_folder):
    run_lightning_cli(["fit", "--config", DEMO_GEO, *_tiny(text_folder, tmp_path)])
    (log_dir,) = (tmp_path / "demo_geo_cli").iterdir()
    tags = read_scalars(log_dir)
    assert len(tags["train/loss"]) == 4 and "val/loss" in tags
    for part in ("strategy", "precision", "curriculum", "sparsity"):
        assert any(tag.startswith(f"geo/{part}/") for tag in tags), (part, sorted(tags))
    assert min(value for _, value in tags["geo/curriculum/seq_len"]) < 32  # the warmup shortened batches
    assert yaml.safe_load((log_dir / "config.yaml").read_text())["trainer"]["strategy"] == "geo_hybrid"
    # geo_hybrid's distributed checkpoint: a link to a folder (and the hidden folder it names)
    (checkpoint,) = (p for p in (log_dir / "checkpoints").iterdir() if not p.name.startswith("."))
    cli = DemoLightningCLI(["test", "--config", DEMO_GEO, *_tiny(text_folder, tmp_path), "--ckpt_path",
                            str(checkpoint)])
    assert cli.trainer.callback_metrics["test/loss"] < tags["train/loss"][0][1]  # the trained weights were loaded


def test_test_subcommand_reports_the_held_out_loss(tmp_path, text_folder):
    cli = DemoLightningCLI(["test", "--config", str(EXAMPLES / "demo.yaml"), *_tiny(text_folder, tmp_path)])
    assert {"test/loss", "test/bpc"} <= set(cli.trainer.callback_metrics)


def test_every_example_parses(capsys):
    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert {p.name for p in examples} >= {"demo.yaml", "demo_geo.yaml", "geo_hybrid_explicit.yaml"}
    for path in examples:
        with pytest.raises(SystemExit) as exit_:
            run_lightning_cli(["fit", "--config", str(path), "--print_config"])
        out, err = capsys.readouterr()
        assert exit_.value.code == 0, (path.name, err)
        printed = yaml.safe_load(out)
        assert printed["trainer"]["max_steps"] == 300 and printed["data"]["corpus"] is None, path.name
        assert "vocab" not in printed["model"]  # linked from the data, never written


def test_printed_config_reloads_and_trains(tmp_path, text_folder, capsys):
    with pytest.raises(SystemExit):
        run_lightning_cli(["fit", "--config", DEMO_GEO, "--print_config"])
    printed = capsys.readouterr().out
    saved = tmp_path / "saved.yaml"
    saved.write_text(printed)
    with pytest.raises(SystemExit):
        run_lightning_cli(["fit", "--config", str(saved), "--print_config"])
    assert capsys.readouterr().out == printed  # a fixed point: the saved config is the whole config
    cli = DemoLightningCLI(["fit", "--config", str(saved), *_tiny(text_folder, tmp_path)])
    assert isinstance(cli.trainer.strategy, GeoHybridStrategy)
    assert cli.trainer.global_step == 4


def test_corpus_data_module_loads_a_path_and_char_data_module_is_unchanged(text_folder):
    corpus = load_corpus(text_folder)
    by_path = CorpusDataModule(str(text_folder), seq_len=16, batch_size=4, val_samples=5)
    by_object = CharDataModule(corpus, seq_len=16, batch_size=4, val_samples=5)
    assert by_path.vocab == by_object.vocab == corpus.vocab
    assert torch.equal(by_path.train_set[3][0], by_object.train_set[3][0])
    assert len(by_path.test_dataloader().dataset) == len(by_object.val_set) == 5


def test_lightning_geo_fit_hands_over_to_the_lightning_cli(capsys):
    """`lightning-geo fit|validate|test ...` is the demo's LightningCLI; other sub-commands stay argparse's."""
    from lightning_geo.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(DEMO_GEO), "--print_config"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, err
    assert yaml.safe_load(out)["trainer"]["strategy"] == "geo_hybrid"
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "lightning-geo" in capsys.readouterr().out


def test_console_command_line_reaches_the_lightning_cli_without_a_warning(tmp_path):
    """From a shell, `lightning-geo fit ...` reaches LightningCLI through sys.argv alone: passing the same
    arguments as ``args`` too makes Lightning warn that both were given."""
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_geo", "fit", "--config", str(DEMO_GEO), "--print_config"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert yaml.safe_load(proc.stdout)["trainer"]["strategy"] == "geo_hybrid"
    assert "args parameter is intended" not in proc.stderr
