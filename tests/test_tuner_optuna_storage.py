"""GeoTuner with its study in an Optuna storage (SQLite, journal file): kill and resume, and Optuna opens it."""

from __future__ import annotations

import pickle

import pytest

optuna = pytest.importorskip("optuna")

from lightning_geo.tuning import Float, GeoTuner, SearchSpace, TrialPruned, TrialState  # noqa: E402
from lightning_geo.tuning.optuna_pruner import GeoCurvePruner  # noqa: E402
from tests.test_tuner import SPACE, quadratic_train_fn  # noqa: E402


def counting(calls: list, kill_at: int | None = None):
    def train_fn(config, trial):
        calls.append(trial.number)
        if trial.number == kill_at:
            raise KeyboardInterrupt  # the tuner process dies in the middle of this trial
        return quadratic_train_fn(config, trial)

    return train_fn


def test_kill_and_resume_on_sqlite_loses_nothing_repeats_nothing_and_optuna_opens_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    calls: list[int] = []
    first = GeoTuner(SPACE, max_trials=6, storage=url, log_dir=tmp_path, pruner=None, num_initial=3, verbose=False)
    with pytest.raises(KeyboardInterrupt):
        first.search(counting(calls, kill_at=3))
    interrupted = first.optimizer.pending[0]
    assert calls == [0, 1, 2, 3]
    assert optuna.load_study(study_name="study", storage=url).trials[3].state == optuna.trial.TrialState.RUNNING

    calls.clear()
    second = GeoTuner(SPACE, max_trials=6, storage=url, log_dir=tmp_path, pruner=None, num_initial=3, verbose=False)
    second.search(counting(calls))
    assert calls == [3, 4, 5]  # the interrupted trial first, with its number and config, then new ones
    assert sorted(t.number for t in second.trials) == list(range(6))
    assert next(t for t in second.trials if t.number == 3).params == interrupted
    assert [t.params for t in second.trials[:3]] == [t.params for t in first.trials]

    calls.clear()
    third = GeoTuner(SPACE, max_trials=6, storage=url, log_dir=tmp_path, pruner=None, num_initial=3, verbose=False)
    third.search(counting(calls))
    assert calls == [] and len(third.trials) == 6

    study = optuna.load_study(study_name="study", storage=url)  # an ordinary Optuna study
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 6
    assert study.best_value == pytest.approx(second.best_value)
    assert study.best_params["lr"] == pytest.approx(second.best_params["lr"])
    assert study.trials[0].intermediate_values == dict(second.trials[0].reports)  # learning curves for the dashboard


def test_pruned_and_failed_trials_keep_their_state_and_a_changed_space_is_refused(tmp_path):
    def train_fn(config, trial):
        if trial.number == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        if trial.number == 2:
            trial.report(9.0, step=1)
            from lightning_geo.tuning import TrialPruned

            raise TrialPruned
        return quadratic_train_fn(config, trial)

    url = f"sqlite:///{tmp_path / 'study.db'}"
    GeoTuner(SPACE, max_trials=3, storage=url, log_dir=tmp_path, pruner=None, verbose=False).search(train_fn)
    resumed = GeoTuner(SPACE, max_trials=3, storage=url, log_dir=tmp_path, pruner=None, verbose=False)
    resumed.search(train_fn)
    assert [t.state for t in resumed.trials] == [TrialState.COMPLETE, TrialState.FAILED, TrialState.PRUNED]
    assert "CUDA out of memory" in resumed.trials[1].error and resumed.trials[2].values == (9.0,)
    states = [t.state for t in optuna.load_study(study_name="study", storage=url).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED]
    other = SearchSpace({"lr": Float(1e-4, 1.0, log=True)})
    with pytest.raises(ValueError, match="different space"):
        GeoTuner(other, max_trials=3, storage=url, log_dir=tmp_path, verbose=False).search(train_fn)


def test_journal_storage_on_a_shared_file_system(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = str(tmp_path / "journal.log")
    tuner = GeoTuner(SPACE, max_trials=3, storage=JournalStorage(JournalFileBackend(path)), study_name="j",
                     log_dir=tmp_path, pruner=None, verbose=False)
    tuner.search(quadratic_train_fn)
    study = optuna.load_study(study_name="j", storage=JournalStorage(JournalFileBackend(path)))
    assert len(study.trials) == 3 and study.best_value == pytest.approx(tuner.best_value)


def test_a_study_file_can_name_an_optuna_storage(tmp_path):
    from lightning_geo.tuning.config_file import load_study_file
    from tests.test_tune_cli import STUDY_FILE

    url = f"sqlite:///{tmp_path / 'study.db'}"
    config = tmp_path / "study.yaml"
    config.write_text(STUDY_FILE + f"storage: {url}\n")
    space, options, _ = load_study_file(config)
    assert options["storage"] == url
    tuner = GeoTuner(space, log_dir=tmp_path, verbose=False, **options)
    assert type(tuner.storage).__name__ == "OptunaStorage"


def staged(finals: dict[int, float]):
    """Trial ``n`` reports ``finals[n] + 1 / step`` at steps 1-3 and asks the pruner after steps 1 and 2."""

    def train_fn(config, trial):
        if trial.number == 3:  # as a subprocess or a ddp_spawn rank gets it: its pruner opens the study again
            trial = pickle.loads(pickle.dumps(trial))
        for step in (1, 2, 3):
            trial.report(finals[trial.number] + 1.0 / step, step=step)
            if step < 3 and trial.should_prune():
                raise TrialPruned
        return finals[trial.number]

    return train_fn


@pytest.mark.filterwarnings("ignore:GeoTuner. max_trials=5 is too small")
@pytest.mark.parametrize(
    "pruner", [optuna.pruners.MedianPruner(n_startup_trials=3), GeoCurvePruner(n_startup_trials=3)],
    ids=["optuna-median", "geo-curve"],
)
def test_an_optuna_pruner_prunes_a_geotuner_study_on_sqlite(tmp_path, pruner):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    tuner = GeoTuner(SPACE, max_trials=5, num_initial=5, storage=url, log_dir=tmp_path, pruner=pruner, verbose=False)
    tuner.search(staged({0: 1.0, 1: 1.1, 2: 1.2, 3: 10.0, 4: 0.5}))  # trial 3 is hopeless, trial 4 the best
    assert [t.state for t in tuner.trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED, TrialState.COMPLETE]
    assert tuner.trials[3].values == (11.0,) and tuner.best_value == 0.5
    trials = optuna.load_study(study_name="study", storage=url).trials
    assert trials[3].state == optuna.trial.TrialState.PRUNED and trials[3].intermediate_values == {1: 11.0}
    assert trials[4].state == optuna.trial.TrialState.COMPLETE and len(trials[4].intermediate_values) == 3


@pytest.mark.parametrize(
    ("pruner", "sqlite", "match"),
    [
        (42, True, r"pruner=42 is not one of \['median', 'curve', None\]"),
        (optuna.pruners.MedianPruner, True, r"pruner=<class .*pass an instance, e.g. MedianPruner\(\)"),
        (optuna.pruners.MedianPruner(), False, r"pruner=.*MedianPruner.* is an Optuna pruner.*storage='sqlite:"),
    ],
    ids=["number", "class", "optuna-pruner-without-optuna-storage"],
)
def test_a_bad_pruner_is_refused_naming_pruner(tmp_path, pruner, sqlite, match):
    storage = f"sqlite:///{tmp_path / 'study.db'}" if sqlite else None
    with pytest.raises(ValueError, match=match):
        GeoTuner(SPACE, storage=storage, pruner=pruner, log_dir=tmp_path, verbose=False)
