"""A trial whose process died on another machine is run again once its heartbeat stops: never lost, never counted
twice. A process on another machine cannot be checked by pid, so each running trial's process writes a heartbeat
(``geo:heartbeat``) to the Optuna study every ``heartbeat_s`` seconds; a trial whose last beat is
``STALE_AFTER_BEATS`` beats old is taken as interrupted."""

from __future__ import annotations

import threading
import time

import pytest

optuna = pytest.importorskip("optuna")

from lightning_geo.tuning import Float, GeoTuner, SearchSpace  # noqa: E402
from lightning_geo.tuning.optuna_storage import HEARTBEAT, STALE_AFTER_BEATS  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:GeoTuner. max_trials=.* is too small")

SPACE = SearchSpace({"x": Float(-1.0, 1.0)})
MAX_TRIALS = 4
ELSEWHERE = "another-machine.example:4242"  # a process on another host: its pid cannot be checked from here


def _tuner(url: str, tmp_path, **kwargs) -> GeoTuner:
    # num_initial=MAX_TRIALS: quasi-random trials only, no GP fit
    return GeoTuner(SPACE, max_trials=MAX_TRIALS, num_initial=MAX_TRIALS, storage=url, study_name="s",
                    log_dir=tmp_path, pruner=None, verbose=False, **kwargs)


def _trial_running_elsewhere(url: str, tmp_path, beat_age_s: float, heartbeat_s: float = 30.0) -> float:
    """Start trial 0 of the study as a process on another machine would (beating every ``heartbeat_s``), whose
    last heartbeat was ``beat_age_s`` seconds ago. Returns the trial's ``x``."""
    tuner = _tuner(url, tmp_path, heartbeat_s=heartbeat_s)
    tuner.storage.open(tuner._header())
    params = {"x": 0.25}
    x = SPACE.encode([params])[0].tolist()
    number = tuner.storage.start(None, dict(params), x, max_trials=MAX_TRIALS)
    assert number == 0
    tuner.storage._stop_beating.set()  # that process stops here without letting its trial go
    tuner.storage._beating.join()
    storage, trial_id = tuner.storage.study._storage, tuner.storage._trial_ids[0]
    storage.set_trial_user_attr(trial_id, "geo:owner", ELSEWHERE)
    storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time() - beat_age_s)
    return params["x"]


def _states(url: str) -> dict[int, str]:
    study = optuna.load_study(study_name="s", storage=url)
    return {t.number: t.state.name for t in study.trials}


def test_a_trial_whose_heartbeat_stopped_is_run_again_with_its_number_and_config(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    x = _trial_running_elsewhere(url, tmp_path, beat_age_s=3600.0)
    calls: list[tuple[int, float]] = []
    _tuner(url, tmp_path).search(lambda config, trial: calls.append((trial.number, config["x"])) or config["x"] ** 2)
    assert calls[0] == (0, x)  # the interrupted trial first, same number, same config
    assert sorted(n for n, _ in calls) == list(range(MAX_TRIALS))
    assert _states(url) == {n: "COMPLETE" for n in range(MAX_TRIALS)}


def test_a_trial_with_a_recent_heartbeat_is_left_to_its_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _trial_running_elsewhere(url, tmp_path, beat_age_s=0.0)
    calls: list[int] = []
    _tuner(url, tmp_path, heartbeat_s=600.0).search(lambda config, trial: calls.append(trial.number) or 1.0)
    assert 0 not in calls and len(calls) == MAX_TRIALS - 1  # trial 0 holds its place in the study's count
    assert _states(url)[0] == "RUNNING"


def test_a_trial_whose_heartbeat_stops_during_a_search_is_taken_over(tmp_path):
    """The other machine's process dies while this one runs the study: once trial 0's heartbeat is stale, this
    process runs it again, so the study still ends with every trial complete.

    The other process keeps beating until this search has started a trial of its own, then dies; so however slow
    this machine is to open the study, trial 0 goes stale during the search, never before it."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    heartbeat_s = 0.05  # stale after STALE_AFTER_BEATS * 0.05 s
    _trial_running_elsewhere(url, tmp_path, beat_age_s=0.0, heartbeat_s=heartbeat_s)
    elsewhere = optuna.load_study(study_name="s", storage=url)
    trial_0 = next(t._trial_id for t in elsewhere.trials if t.number == 0)
    died = threading.Event()

    def beat_until_death() -> None:
        while not died.wait(heartbeat_s):
            elsewhere._storage.set_trial_user_attr(trial_0, HEARTBEAT, time.time())

    beating = threading.Thread(target=beat_until_death, daemon=True)
    beating.start()
    calls: list[int] = []

    def train_fn(config, trial):
        calls.append(trial.number)
        died.set()
        time.sleep(heartbeat_s * STALE_AFTER_BEATS / 2)
        return config["x"] ** 2

    try:
        _tuner(url, tmp_path, heartbeat_s=heartbeat_s).search(train_fn)
    finally:
        died.set()
        beating.join()
    assert calls[0] != 0 and 0 in calls[1:] and sorted(calls) == list(range(MAX_TRIALS))
    assert _states(url) == {n: "COMPLETE" for n in range(MAX_TRIALS)}


def test_a_trial_finished_elsewhere_just_before_it_is_claimed_is_not_run_again(tmp_path, monkeypatch):
    """The other machine's process finishes trial 0 between this process's read of the study (stale beat) and its
    claim: the claim fails, and the trial is neither run again nor counted twice."""
    from lightning_geo.tuning.optuna_storage import OptunaStorage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    _trial_running_elsewhere(url, tmp_path, beat_age_s=3600.0)
    claim = OptunaStorage._claim

    def finished_first(self, number):
        self.study._storage.set_trial_state_values(self._trial_ids[number], optuna.trial.TrialState.COMPLETE, [0.0])
        return claim(self, number)

    monkeypatch.setattr(OptunaStorage, "_claim", finished_first)
    calls: list[int] = []
    tuner = _tuner(url, tmp_path)
    tuner.search(lambda config, trial: calls.append(trial.number) or 1.0)
    assert calls == list(range(1, MAX_TRIALS))
    assert _states(url) == {n: "COMPLETE" for n in range(MAX_TRIALS)}
    assert sorted(t.number for t in tuner.trials) == list(range(MAX_TRIALS))


def test_a_running_trial_beats_while_it_runs(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    beats: list[float] = []

    def train_fn(config, trial):
        study = optuna.load_study(study_name="s", storage=url)
        for _ in range(2):
            beats.append(study._storage.get_trial(study.trials[trial.number]._trial_id).user_attrs[HEARTBEAT])
            time.sleep(0.5)
        return 1.0

    _tuner(url, tmp_path, heartbeat_s=0.1).search(train_fn)
    assert len(beats) == 2 * MAX_TRIALS
    assert all(later > earlier for earlier, later in zip(beats[::2], beats[1::2], strict=True))


@pytest.mark.parametrize("heartbeat_s", [0, -1.0, float("nan"), True, "30"])
def test_a_bad_heartbeat_is_refused_by_name(tmp_path, heartbeat_s):
    with pytest.raises((TypeError, ValueError), match="heartbeat_s"):
        _tuner(f"sqlite:///{tmp_path / 'study.db'}", tmp_path, heartbeat_s=heartbeat_s)
