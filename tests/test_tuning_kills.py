"""A tuner process killed in the middle of a trial's storage writes, on a SQLite study: the trial is run again once,
with its number and config, and the study keeps the re-run's result; killed once the result is written, the trial is
not run again. Either way it counts once. (``benchmarks/faults.py --tuner-kills`` kills real processes at random
moments; here each point is reached by hand, in this process.)"""

from __future__ import annotations

import contextlib
import socket
import subprocess

import pytest

optuna = pytest.importorskip("optuna")

from lightning_geo.tuning import Float, GeoTuner, SearchSpace, TrialRecord, TrialState  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:GeoTuner. max_trials=.* is too small")

SPACE = SearchSpace({"x": Float(-1.0, 1.0), "y": Float(-1.0, 1.0)})
MAX_TRIALS = 3
PARAMS = {"x": 0.25, "y": -0.5}  # trial 0's config, which the killed process was running


class _Killed(Exception):
    """Stands for the SIGKILL: the write it interrupts does not happen, nor anything after it."""


def _objective(config) -> float:
    return (config["x"] - 0.6) ** 2 + (config["y"] + 0.6) ** 2


def _tuner(url: str, tmp_path) -> GeoTuner:
    return GeoTuner(SPACE, max_trials=MAX_TRIALS, num_initial=MAX_TRIALS, storage=url, study_name="s",
                    log_dir=tmp_path, pruner=None, verbose=False)


def _killed_during(url: str, tmp_path, point: str) -> None:
    """Leave trial 0 as a process killed at ``point`` of it leaves it: RUNNING, owned by a process that is gone, with
    what that process wrote before it died (its partial result a different value than a re-run's), or COMPLETE."""
    tuner = _tuner(url, tmp_path)
    storage = tuner.storage
    storage.open(tuner._header())
    assert storage.start(None, dict(PARAMS), SPACE.encode([PARAMS])[0].tolist(), max_trials=MAX_TRIALS) == 0
    writes, trial_id = storage.study._storage, storage._trial_ids[0]
    storage._stop_beating.set()  # the process dies: no more heartbeats, no release
    storage._beating.join()
    if point == "reports":
        for step in (1, 2):
            writes.set_trial_intermediate_value(trial_id, step, 9.0)
    if point in ("result", "state"):
        value = 7.0 if point == "result" else _objective(PARAMS)
        record = TrialRecord(0, dict(PARAMS), TrialState.COMPLETE, (value,), [(1, 9.0)], seconds=0.5)
        if point == "result":  # every write of the result but the last one, the state
            def killed(*args, **kwargs):
                raise _Killed
            writes.set_trial_state_values = killed
        with contextlib.suppress(_Killed):
            storage.finish(record, SPACE.encode([PARAMS])[0].tolist())
    if point != "state":
        gone = subprocess.Popen(["true"])
        gone.wait()
        writes.set_trial_user_attr(trial_id, "geo:owner", f"{socket.gethostname()}:{gone.pid}")


@pytest.mark.parametrize("point", ["start", "reports", "result", "state"])
def test_a_trial_killed_anywhere_in_its_writes_is_run_again_once_or_not_at_all(tmp_path, point):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _killed_during(url, tmp_path, point)
    calls: list[tuple[int, dict]] = []
    tuner = _tuner(url, tmp_path)
    tuner.search(lambda config, trial: calls.append((trial.number, config)) or _objective(config))
    if point == "state":
        assert [n for n, _ in calls] == [1, 2]  # its result was written: not run again
    else:
        assert calls[0] == (0, PARAMS) and sorted(n for n, _ in calls) == [0, 1, 2]  # first, same number and config
    study = optuna.load_study(study_name="s", storage=url)
    assert [(t.number, t.state.name) for t in study.trials] == [(n, "COMPLETE") for n in range(MAX_TRIALS)]
    values = [_objective(t.params) for t in study.trials]
    assert [t.value for t in study.trials] == values  # trial 0 keeps the re-run's value, not the partial result's
    assert sorted(t.number for t in tuner.trials) == [0, 1, 2] and [t.value for t in tuner.trials] == [
        values[t.number] for t in tuner.trials]  # each once, with the study's value
    assert tuner.best_value == study.best_value == min(values)
    again = _tuner(url, tmp_path)  # read back by the next process: the same trials, the same best
    again.search(lambda config, trial: pytest.fail("the study is complete"))
    assert sorted((t.number, t.value) for t in again.trials) == sorted((t.number, t.value) for t in tuner.trials)
    assert again.best_params == tuner.best_params
