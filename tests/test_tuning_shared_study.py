"""Two ``GeoTuner`` processes run one SQLite study at the same time: no trial lost, none run or counted twice."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from lightning_geo.tuning import Float, GeoTuner, SearchSpace, TrialState  # noqa: E402

SPACE = SearchSpace({"x": Float(-1.0, 1.0), "y": Float(-1.0, 1.0)})
MAX_TRIALS = 12  # of the study, both processes together


def _tuner(url: str, log_dir: str | Path) -> GeoTuner:
    # num_initial=MAX_TRIALS: quasi-random trials only, so no process spends seconds fitting a GP
    return GeoTuner(SPACE, max_trials=MAX_TRIALS, num_initial=MAX_TRIALS, storage=url, study_name="shared",
                    log_dir=log_dir, pruner=None, verbose=False)


def _worker(url: str, log_dir: str, barrier, out: str) -> None:
    """One tuner process (module level: spawned processes import it). Its first trial waits for the other
    process's first trial, so both surely run trials at the same time."""
    ran: list[int] = []

    def train_fn(config, trial):
        if not ran:
            barrier.wait(timeout=60)
        ran.append(trial.number)
        value = (config["x"] - 0.3) ** 2 + (config["y"] + 0.2) ** 2
        for step in (1, 2):
            trial.report(value + 1.0 / step, step=step)
        time.sleep(0.02)
        return value

    _tuner(url, log_dir).search(train_fn)
    Path(out).write_text(json.dumps({"pid": os.getpid(), "ran": ran}))


@pytest.mark.filterwarnings("ignore:GeoTuner. max_trials=12 is too small")
def test_two_processes_share_one_sqlite_study_without_losing_or_repeating_a_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"  # a new file: the two processes also race to create the study
    context = multiprocessing.get_context("forkserver")  # preloaded in conftest.py: no re-import
    barrier = context.Barrier(2)
    outs = [tmp_path / f"worker{i}.json" for i in range(2)]
    workers = [context.Process(target=_worker, args=(url, str(tmp_path), barrier, str(out))) for out in outs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    assert [w.exitcode for w in workers] == [0, 0]
    results = [json.loads(out.read_text()) for out in outs]
    ran = [set(r["ran"]) for r in results]
    assert all(ran) and not ran[0] & ran[1]  # both worked; no trial ran in both
    assert sum(len(r["ran"]) for r in results) == MAX_TRIALS and ran[0] | ran[1] == set(range(MAX_TRIALS))

    study = optuna.load_study(study_name="shared", storage=url)  # an ordinary Optuna study
    # a trial started over max_trials when both processes took the last place at once: FAIL, never run
    surplus = [t for t in study.trials if t.user_attrs.get("geo:surplus")]
    assert all(t.state == optuna.trial.TrialState.FAIL and t.number >= MAX_TRIALS for t in surplus)
    trials = [t for t in study.trials if t not in surplus]
    assert sorted(t.number for t in trials) == list(range(MAX_TRIALS))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for result in results:  # each trial names the process that ran it
        assert {t.number for t in trials if t.user_attrs["geo:owner"].endswith(f":{result['pid']}")} == set(
            result["ran"])

    calls: list[int] = []
    again = _tuner(url, tmp_path)  # the study is complete: a third process replays it and runs nothing
    again.search(lambda config, trial: calls.append(trial.number))
    assert calls == [] and sorted(t.number for t in again.trials) == list(range(MAX_TRIALS))
    assert all(t.state is TrialState.COMPLETE for t in again.trials)
    assert again.best_value == pytest.approx(study.best_value)


def test_a_trial_started_over_max_trials_by_a_race_is_not_run(tmp_path):
    """Two processes that both counted 11 of 12 trials start one each: the one Optuna numbered later is surplus,
    marked FAIL with ``geo:surplus``, not run, and skipped when the study is read again."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first, second = _tuner(url, tmp_path), _tuner(url, tmp_path)
    for tuner in (first, second):
        tuner.storage.open(tuner._header())
    x = SPACE.encode([{"x": 0.0, "y": 0.0}])[0].tolist()
    assert first.storage.start(None, {"x": 0.0, "y": 0.0}, x, max_trials=1) == 0
    assert second.storage.start(None, {"x": 0.0, "y": 0.0}, x, max_trials=1) is None  # the study was full
    for tuner in (first, second):
        tuner.storage.release()
    study = optuna.load_study(study_name="shared", storage=url)
    assert [(t.number, t.state.name, t.user_attrs.get("geo:surplus")) for t in study.trials] == [
        (0, "RUNNING", None), (1, "FAIL", True)]
    calls: list[int] = []
    again = GeoTuner(SPACE, max_trials=1, num_initial=1, storage=url, study_name="shared", log_dir=tmp_path,
                     pruner=None, verbose=False)
    again.search(lambda config, trial: calls.append(trial.number) or 0.5)
    assert calls == [0] and [t.number for t in again.trials] == [0]  # trial 0 run again; trial 1 never


def _killed_worker(url: str, log_dir: str, barrier, out: str, die_in: int) -> None:
    """A tuner process that SIGKILLs itself in the middle of its ``die_in``-th trial (after one report)."""
    ran: list[int] = []

    def train_fn(config, trial):
        if not ran:
            barrier.wait(timeout=60)
        ran.append(trial.number)
        Path(out).write_text(json.dumps({"pid": os.getpid(), "ran": ran}))
        value = (config["x"] - 0.3) ** 2 + (config["y"] + 0.2) ** 2
        trial.report(value + 1.0, step=1)
        if len(ran) == die_in:
            os.kill(os.getpid(), signal.SIGKILL)  # no exception, no clean-up: as the out-of-memory killer does
        time.sleep(0.02)
        return value

    _tuner(url, log_dir).search(train_fn)


@pytest.mark.filterwarnings("ignore:GeoTuner. max_trials=12 is too small")
@pytest.mark.parametrize("die_in", [1, 3])
def test_a_tuner_process_killed_mid_trial_loses_no_trial_and_doubles_none(tmp_path, die_in):
    """The other process takes the dead process's running trial over (its pid is gone, or a zombie its parent has
    not collected) and runs it with its number and config; the study ends as an unkilled one would: every trial
    once, each value the objective of its own config, the best the best of them."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    context = multiprocessing.get_context("forkserver")  # preloaded in conftest.py: no re-import
    barrier = context.Barrier(2)
    outs = [tmp_path / "survivor.json", tmp_path / "killed.json"]
    workers = [context.Process(target=_worker, args=(url, str(tmp_path), barrier, str(outs[0]))),
               context.Process(target=_killed_worker, args=(url, str(tmp_path), barrier, str(outs[1]), die_in))]
    for worker in workers:
        worker.start()
    workers[0].join(timeout=240)  # the killed one stays a zombie until joined: the survivor must see it dead
    workers[1].join(timeout=10)
    assert [w.exitcode for w in workers] == [0, -signal.SIGKILL]
    survivor, killed = (json.loads(out.read_text()) for out in outs)
    late: list[int] = []  # a trial the dead process held after the survivor's last look: the next search runs it
    _tuner(url, tmp_path).search(lambda config, trial: late.append(trial.number) or (
        (config["x"] - 0.3) ** 2 + (config["y"] + 0.2) ** 2))
    dead_trial = killed["ran"][-1]
    assert dead_trial in survivor["ran"] + late  # run again, by the survivor unless it had already stopped
    if die_in == 1:  # the survivor had most of the study still to run when the other process died
        assert dead_trial in survivor["ran"] and late == []
    assert sorted(survivor["ran"] + killed["ran"][:-1] + late) == list(range(MAX_TRIALS))  # nothing else twice

    study = optuna.load_study(study_name="shared", storage=url)
    trials = [t for t in study.trials if not t.user_attrs.get("geo:surplus")]
    assert sorted(t.number for t in trials) == list(range(MAX_TRIALS))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    values = [(t.params["x"] - 0.3) ** 2 + (t.params["y"] + 0.2) ** 2 for t in trials]
    assert [t.value for t in trials] == pytest.approx(values)  # the taken-over trial kept its config
    assert study.best_value == pytest.approx(min(values))
