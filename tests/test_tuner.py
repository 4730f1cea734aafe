"""GeoTuner over real Lightning runs: reporting, pruning, storage and resume, executors, DDP, TensorBoard output."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_geo.tuning import (
    Categorical,
    CurvePruner,
    Float,
    GeoTuner,
    Int,
    MedianPruner,
    SearchSpace,
    SubprocessExecutor,
    Trial,
    TrialPruned,
    TrialState,
    TuningError,
    run_trial,
)
from lightning_geo.tuning.pruners import FinishedCurve
from tests.helpers import DDP_CPU, DDP_SPAWN_CPU

SPACE = SearchSpace({"lr": Float(1e-3, 1.0, log=True), "width": Categorical([4, 16])})


class Regressor(pl.LightningModule):
    """A tiny MLP regression that logs ``val_loss`` every validation (16 batches an epoch)."""

    def __init__(self, lr: float = 0.05, width: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 1))

    @staticmethod
    def _data() -> TensorDataset:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(128, 4, generator=generator)
        return TensorDataset(x, x.sum(dim=1, keepdim=True).sin())

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        return DataLoader(self._data(), batch_size=8)

    def val_dataloader(self):
        return DataLoader(self._data(), batch_size=64)


def _trainer(trial: Trial, **kwargs) -> pl.Trainer:
    options = {
        "max_epochs": 3,
        "accelerator": "cpu",
        "devices": 1,
        "callbacks": [trial.reporter()],
        "logger": trial.logger(),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def lightning_train_fn(config, trial):
    """Module level, so that it pickles for the subprocess and ddp_spawn tests."""
    trainer = _trainer(trial)
    trainer.fit(Regressor(config["lr"], config["width"]))


def quadratic_train_fn(config, trial):
    """No Lightning: reports a falling curve; a cheap objective for the storage tests."""
    final = (math.log10(config["lr"]) + 1.5) ** 2 + (0.1 if config["width"] == 4 else 0.0)
    for step in range(1, 4):
        trial.report(final + 1.0 / step, step=step)
    return final


def crashing_train_fn(config, trial):
    if config["width"] == 4:
        os._exit(3)  # the process dies, as under the out-of-memory killer
    return quadratic_train_fn(config, trial)


def test_search_finds_a_good_config_and_writes_results(tmp_path):
    tuner = GeoTuner(SPACE, max_trials=8, log_dir=tmp_path, pruner=None, verbose=False)
    best = tuner.search(lightning_train_fn)
    assert len(tuner.trials) == 8
    diverged = [t for t in tuner.trials if t.state is not TrialState.COMPLETE]
    assert all(t.state is TrialState.PRUNED and t.values is None and t.params["lr"] > 0.3 for t in diverged)
    complete = [t for t in tuner.trials if t.state is TrialState.COMPLETE]
    assert best == tuner.best_params and tuner.best_value == min(t.value for t in complete)
    assert all(len(t.reports) == 3 for t in complete)  # one report per validation (per epoch)
    assert tuner.best_value < statistics.median(t.value for t in complete) < tuner.trials[0].value + 0.05
    table = tuner.results_table()
    assert "val_loss" in table and "COMPLETE" in table and len(table.splitlines()) == 10
    png = tuner.plot()
    assert png.exists() and png.stat().st_size > 10_000


def test_tensorboard_gets_study_curves_and_hparams_per_trial(tmp_path):
    tuner = GeoTuner(SPACE, max_trials=3, log_dir=tmp_path, study_name="tb", pruner=None, verbose=False)
    tuner.search(lightning_train_fn)
    study = EventAccumulator(str(tmp_path / "tb" / "study"))
    study.Reload()
    tags = study.Tags()["scalars"]
    for tag in ("geo/tuning/best_value", "geo/tuning/value/val_loss", "geo/tuning/ask_seconds",
                "geo/tuning/trial_seconds", "geo/tuning/num_failed"):
        assert tag in tags
    best_curve = [e.value for e in study.Scalars("geo/tuning/best_value")]
    assert best_curve == sorted(best_curve, reverse=True) and len(best_curve) == 3
    trial_run = EventAccumulator(str(tmp_path / "tb" / "trial_0001"))
    trial_run.Reload()
    assert "hparams/val_loss" in trial_run.Tags()["scalars"]
    assert "hparams" in trial_run.PluginTagToContent("hparams") or trial_run.PluginTagToContent("hparams")
    assert "geo/tuning/results/text_summary" in study.Tags()["tensors"]


def test_best_value_curve_continues_across_a_resume(tmp_path):
    space = SearchSpace({"x": Float(-2.0, 2.0)})
    for trials, offset in ((4, 0.0), (6, 10.0)):  # the resumed trials are all worse than the first ones
        tuner = GeoTuner(space, max_trials=trials, pruner=None, log_dir=tmp_path, verbose=False)
        tuner.search(lambda config, trial, offset=offset: (config["x"] - 1.0) ** 2 + offset)
    study = EventAccumulator(str(tmp_path / "study" / "study"))
    study.Reload()
    curve = [(e.step, e.value) for e in study.Scalars("geo/tuning/best_value")]
    assert [s for s, _ in curve] == list(range(6))
    assert curve[-1][1] == pytest.approx(tuner.best_value) and tuner.best_value < 10.0


def test_plot_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    previous = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        tuner = GeoTuner(SPACE, max_trials=3, log_dir=tmp_path, verbose=False)
        tuner.search(quadratic_train_fn)
        assert tuner.plot(tmp_path / "history.png").exists()
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(previous)


def test_failed_trials_are_recorded_and_do_not_stop_the_study(tmp_path):
    def train_fn(config, trial):
        if config["width"] == 4:
            raise RuntimeError("CUDA out of memory (simulated)")
        return quadratic_train_fn(config, trial)

    tuner = GeoTuner(SPACE, max_trials=8, log_dir=tmp_path, verbose=False)
    tuner.search(train_fn)
    failed = [t for t in tuner.trials if t.state is TrialState.FAILED]
    assert failed and all("CUDA out of memory" in t.error for t in failed)
    assert len(tuner.trials) == 8 and tuner.best_trial.params["width"] == 16


def test_a_train_fn_that_always_fails_stops_the_study_with_its_error(tmp_path):
    def broken(config, trial):
        raise ValueError("typo in my train_fn")

    tuner = GeoTuner(SPACE, max_trials=20, log_dir=tmp_path, max_consecutive_failures=3, verbose=False)
    with pytest.raises(TuningError, match=r"(?s)3 trials failed in a row.*typo in my train_fn"):
        tuner.search(broken)
    assert len(tuner.trials) == 3


def test_a_missing_monitored_metric_stops_the_study_at_once(tmp_path):
    tuner = GeoTuner(SPACE, monitor="val_acc", max_trials=5, log_dir=tmp_path, verbose=False)
    with pytest.raises(TuningError, match="'val_acc' was not logged; logged metrics are \\['val_loss'\\]"):
        tuner.search(lightning_train_fn)
    assert len(tuner.trials) == 1


def test_resume_after_a_kill_loses_nothing_and_repeats_nothing(tmp_path):
    calls = []

    def killed_at_trial_4(config, trial):
        calls.append(trial.number)
        if trial.number == 4:
            raise KeyboardInterrupt  # the tuner process dies in the middle of trial 4
        return quadratic_train_fn(config, trial)

    first = GeoTuner(SPACE, max_trials=8, log_dir=tmp_path, verbose=False)
    with pytest.raises(KeyboardInterrupt):
        first.search(killed_at_trial_4)
    interrupted_params = first.optimizer.pending[0]
    storage = tmp_path / "study" / "trials.jsonl"
    with open(storage, "a") as f:
        f.write('{"event": "finish", "number": 4, "sta')  # a write torn by the kill
    assert calls == [0, 1, 2, 3, 4]

    calls.clear()
    second = GeoTuner(SPACE, max_trials=8, log_dir=tmp_path, verbose=False)
    with pytest.warns(UserWarning, match="torn last line"):
        second.search(quadratic_fn_counting(calls))
    assert calls == [4, 5, 6, 7]  # the interrupted trial first, with its number, then new ones
    assert sorted(t.number for t in second.trials) == list(range(8))
    rerun = next(t for t in second.trials if t.number == 4)
    assert rerun.params == interrupted_params and rerun.state is TrialState.COMPLETE
    assert [t.params for t in second.trials[:4]] == [t.params for t in first.trials]

    calls.clear()
    third = GeoTuner(SPACE, max_trials=8, log_dir=tmp_path, verbose=False)
    third.search(quadratic_fn_counting(calls))
    assert calls == [] and len(third.trials) == 8  # a finished study runs nothing
    lines = [json.loads(line) for line in storage.read_text().splitlines()]
    finished = [e["number"] for e in lines if e["event"] == "finish"]
    assert sorted(finished) == list(range(8))


def quadratic_fn_counting(calls: list):
    def train_fn(config, trial):
        calls.append(trial.number)
        return quadratic_train_fn(config, trial)

    return train_fn


def test_resume_refuses_another_study_in_the_same_file(tmp_path):
    GeoTuner(SPACE, max_trials=2, log_dir=tmp_path, verbose=False).search(quadratic_train_fn)
    other = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "width": Categorical([4, 16])})
    with pytest.raises(ValueError, match="different space"):
        GeoTuner(other, max_trials=2, log_dir=tmp_path, verbose=False).search(quadratic_train_fn)
    with pytest.raises(ValueError, match="already holds 2 trials"):
        GeoTuner(SPACE, max_trials=3, log_dir=tmp_path, resume=False, verbose=False).search(quadratic_train_fn)


def _trial_with_history(tmp_path: Path, pruner, finals=(0.05, 0.06, 0.07)) -> Trial:
    finished = tuple(FinishedCurve(((8, f + 0.05), (16, f + 0.02), (24, f)), f) for f in finals)
    return Trial(0, {"lr": 5.0, "width": 16}, ("val_loss",), ("min",), str(tmp_path / "trial_0000"), pruner, finished)


@pytest.mark.parametrize("pruner", [MedianPruner(n_startup_trials=3), CurvePruner(n_startup_trials=3)])
def test_pruning_stops_a_bad_trial_at_its_first_validation(tmp_path, pruner):
    trial = _trial_with_history(tmp_path, pruner)

    def train_fn(config, trial):
        trainer = _trainer(trial, max_epochs=20)
        trainer.fit(Regressor(lr=1e-4, width=4))  # barely learns: far worse than the finished trials
        assert trainer.global_step == 16  # stopped after the first epoch's validation, not after 20 epochs
        return trainer.callback_metrics["val_loss"]

    record = run_trial(train_fn, trial)
    assert record.state is TrialState.PRUNED and len(record.reports) == 1
    assert record.values == (record.reports[0][1],)
    assert '"pruned": true' in trial.reports_path.read_text()


def test_a_good_trial_is_not_pruned(tmp_path):
    trial = _trial_with_history(tmp_path, MedianPruner(n_startup_trials=3), finals=(0.5, 0.6, 0.7))
    record = run_trial(lambda config, trial: _trainer(trial).fit(Regressor(lr=0.1)), trial)
    assert record.state is TrialState.COMPLETE and len(record.reports) == 3


def test_pruning_rules():
    finished = [FinishedCurve(((1, 1.0), (2, 0.8), (3, 0.7)), 0.7) for _ in range(2)]
    finished += [FinishedCurve(((1, 2.0), (2, 1.5), (3, 1.4)), 1.4) for _ in range(3)]
    median = MedianPruner(n_startup_trials=5)
    assert median.should_prune([(1, 2.5)], finished, "min")  # worse than the median 2.0 at step 1
    assert not median.should_prune([(1, 1.5)], finished, "min")
    assert not median.should_prune([(1, 2.5)], finished[:4], "min")  # too few finished trials
    assert not MedianPruner(n_warmup_steps=2).should_prune([(1, 9.9)], finished, "min")
    assert median.should_prune([(1, -2.5)], [FinishedCurve(((1, -v),), -f) for c in finished
                                             for (_, v), f in [(c.reports[0], c.final)]], "max")
    curve = CurvePruner(n_startup_trials=5)
    # finished trials improved by at most 0.6 after step 1; the best final is 0.7: 1.2 - 0.6 = 0.6 can still win
    assert not curve.should_prune([(1, 1.2)], finished, "min")
    assert curve.should_prune([(1, 1.5)], finished, "min")  # 1.5 - 0.6 = 0.9 > 0.7
    with pytest.raises(ValueError, match="optimism"):
        CurvePruner(optimism=0.0)


def test_a_diverged_report_prunes_at_once_and_trialpruned_ends_a_trial(tmp_path):
    trial = _trial_with_history(tmp_path, None)
    trial.report(float("nan"), step=3)
    assert trial.should_prune()

    def train_fn(config, trial):
        trial.report(0.9, step=1)
        raise TrialPruned

    record = run_trial(train_fn, _trial_with_history(tmp_path / "b", None))
    assert record.state is TrialState.PRUNED and record.values == (0.9,)


@pytest.mark.ddp
def test_ddp_trial_reports_once_from_rank_zero(tmp_path):
    trial = Trial(0, {"lr": 0.05, "width": 16}, ("val_loss",), ("min",), str(tmp_path / "trial_0000"))

    def train_fn(config, trial):
        trainer = _trainer(trial, **DDP_SPAWN_CPU, max_epochs=2)
        trainer.fit(Regressor(config["lr"], config["width"]))
        return None  # the value comes from rank 0's reports

    record = run_trial(train_fn, trial)
    assert record.state is TrialState.COMPLETE, record.error
    lines = trial.reports_path.read_text().splitlines()
    assert len(lines) == 2 and [json.loads(line)["step"] for line in lines] == [8, 16]  # 8 steps an epoch per rank
    assert record.values == (json.loads(lines[-1])["value"],)


@pytest.mark.ddp
def test_ddp_pruning_stops_every_rank(tmp_path):
    trial = _trial_with_history(tmp_path, MedianPruner(n_startup_trials=3))

    def train_fn(config, trial):
        trainer = _trainer(trial, **DDP_CPU, max_epochs=20)
        trainer.fit(Regressor(lr=1e-4, width=4))
        assert trainer.global_step < 20 * 8  # the fit ended early (and did not hang)

    record = run_trial(train_fn, trial)
    assert record.state is TrialState.PRUNED, record.error


def test_subprocess_trials_run_in_parallel_and_a_dead_process_is_a_failed_trial(tmp_path):
    tuner = GeoTuner(SPACE, max_trials=4, log_dir=tmp_path, executor="subprocess", n_parallel=2,
                     num_initial=4, verbose=False)
    tuner.search(crashing_train_fn)
    assert len(tuner.trials) == 4
    dead = [t for t in tuner.trials if t.params["width"] == 4]
    assert dead and all(t.state is TrialState.FAILED and "exit code 3" in t.error for t in dead)
    assert all(t.state is TrialState.COMPLETE for t in tuner.trials if t.params["width"] == 16)
    assert len({SPACE.key(t.params) for t in tuner.trials}) == 4  # parallel asks were distinct


def test_multi_objective_study_returns_a_pareto_front(tmp_path):
    def train_fn(config, trial):
        cost = config["width"] * config["lr"]
        return {"val_loss": quadratic_train_fn(config, trial), "cost": cost}

    tuner = GeoTuner(SPACE, monitor=("val_loss", "cost"), max_trials=7, log_dir=tmp_path, verbose=False)
    assert tuner.search(train_fn) is None
    front = tuner.pareto_front()
    assert front
    for a in front:  # no trial beats a front member on both
        assert not any(b.values[0] < a.values[0] and b.values[1] < a.values[1] for b in tuner.trials)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"monitor": ""}, "monitor=''"),
        ({"mode": "up"}, "mode='up'"),
        ({"monitor": ("a", "b"), "mode": ("min", "max", "min")}, "one entry per monitored metric"),
        ({"max_trials": 0}, "max_trials=0"),
        ({"n_parallel": 2}, "needs executor='subprocess'"),
        ({"executor": "threads"}, "executor='threads'"),
        ({"pruner": "hyperband"}, "pruner='hyperband'"),
        ({"study_name": "a/b"}, "study_name='a/b'"),
        ({"max_consecutive_failures": -1}, "max_consecutive_failures=-1"),
        ({"monitor": ("a", "b"), "mode": ("min",)}, r"mode=\('min',\) has 1 entries but monitor=\['a', 'b'\] has 2"),
        ({"devices": [0, 1]}, r"devices=\[0, 1\] applies only with executor='subprocess'"),
    ],
)
def test_bad_tuner_arguments_raise(kwargs, match, tmp_path):
    with pytest.raises((ValueError, TypeError), match=match):
        GeoTuner(SPACE, log_dir=tmp_path, **kwargs)


def test_subprocess_executor_needs_a_picklable_train_fn(tmp_path):
    tuner = GeoTuner(SPACE, max_trials=1, log_dir=tmp_path, executor="subprocess", verbose=False)
    with pytest.raises(TypeError, match="needs a picklable train_fn"):
        tuner.search(lambda config, trial: 1.0)


def test_subprocess_executor_checks_its_devices():
    with pytest.raises(ValueError, match="one entry per parallel trial"):
        SubprocessExecutor(n_parallel=2, devices=[0])


def test_space_with_int_parameters_round_trips_through_storage(tmp_path):
    space = SearchSpace({"layers": Int(1, 6), "lr": Float(1e-3, 1.0, log=True), "epochs": 2})
    seen = []

    def train_fn(config, trial):
        seen.append(config)
        return config["layers"] * config["lr"]

    GeoTuner(space, max_trials=3, log_dir=tmp_path, verbose=False).search(train_fn)
    resumed = GeoTuner(space, max_trials=3, log_dir=tmp_path, verbose=False)
    resumed.search(train_fn)
    assert [t.params for t in resumed.trials] == seen and all(isinstance(c["layers"], int) for c in seen)


def test_a_small_study_still_fits_the_gp_and_says_once_that_it_cannot_prune(tmp_path):
    with pytest.warns(UserWarning, match="max_trials=4 is too small") as caught:
        tuner = GeoTuner(SPACE, max_trials=4, log_dir=tmp_path, verbose=False)
    assert len(caught) == 1 and "ever pruned" in str(caught[0].message) and "never fitted" not in str(caught[0].message)
    tuner.search(quadratic_train_fn)
    assert tuner.num_initial == 2 and tuner.optimizer._model is not None  # trials 3 and 4 came from the GP
    with pytest.warns(UserWarning, match="the GP is never fitted"):
        GeoTuner(SPACE, max_trials=6, num_initial=6, pruner=None, log_dir=tmp_path, verbose=False)
