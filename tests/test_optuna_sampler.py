"""GeoSampler: GEO's BayesianOptimizer inside Optuna studies (needs the optional ``optuna`` extra)."""

from __future__ import annotations

import math
import warnings

import pytest

optuna = pytest.importorskip("optuna")

from lightning_geo.tuning.optuna import GeoSampler, centre_of  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def mixed_objective(trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    layers = trial.suggest_int("layers", 1, 9, step=2)
    width = trial.suggest_int("width", 16, 1024, log=True)
    dropout = trial.suggest_float("dropout", 0.0, 0.5, step=0.1)
    act = trial.suggest_categorical("act", ["relu", "gelu", "tanh"])
    return ((x - 1.0) ** 2 + (math.log10(lr) + 3.0) ** 2 + 0.1 * (layers - 5) ** 2 + 0.01 * math.log2(width)
            + (dropout - 0.2) ** 2 + {"relu": 0.3, "gelu": 0.0, "tanh": 1.0}[act])


def sphere(trial) -> float:
    return sum((trial.suggest_float(f"x{i}", 0.0, 1.0) - 0.3) ** 2 for i in range(4))


def run(objective, sampler, n_trials: int, **study_kwargs):
    study = optuna.create_study(sampler=sampler, **study_kwargs)
    study.optimize(objective, n_trials=n_trials)
    return study


def test_same_seed_same_trials_and_every_distribution_kind_on_its_grid():
    first = run(mixed_objective, GeoSampler(seed=0, num_initial=4, num_candidates=128), 7)
    again = run(mixed_objective, GeoSampler(seed=0, num_initial=4, num_candidates=128), 7)
    other = run(mixed_objective, GeoSampler(seed=1, num_initial=4, num_candidates=128), 7)
    assert [t.params for t in first.trials] == [t.params for t in again.trials]
    assert [t.params for t in first.trials][1:] != [t.params for t in other.trials][1:]
    # the first trial is the centre of the space (GEO's design starts there), whatever the seed
    assert first.trials[0].params == other.trials[0].params
    assert first.trials[0].params["lr"] == pytest.approx(1e-3)
    for t in first.trials:
        p = t.params
        assert -5.0 <= p["x"] <= 5.0 and 1e-5 <= p["lr"] <= 1e-1
        assert p["layers"] in (1, 3, 5, 7, 9) and 16 <= p["width"] <= 1024 and isinstance(p["width"], int)
        assert any(math.isclose(p["dropout"], 0.1 * k) for k in range(6))
        assert p["act"] in ("relu", "gelu", "tanh")
    assert len({json_key(t.params) for t in first.trials}) == len(first.trials)


def json_key(params: dict) -> str:
    return repr(sorted(params.items()))


def test_beats_random_search_on_a_smooth_function():
    geo = run(sphere, GeoSampler(seed=0), 20)
    random_bests = [run(sphere, optuna.samplers.RandomSampler(seed=s), 20).best_value for s in range(10)]
    mean_random = sum(random_bests) / len(random_bests)
    assert geo.best_value < 0.25 * mean_random, (geo.best_value, random_bests)


def test_constraints_keep_the_search_in_the_feasible_region():
    def objective(trial):
        x, y = trial.suggest_float("x", 0.0, 3.0), trial.suggest_float("y", 0.0, 3.0)
        return (x - 2.0) ** 2 + (y - 2.0) ** 2  # unconstrained optimum (2, 2) is infeasible

    def constraints(trial):
        return (trial.params["x"] + trial.params["y"] - 2.0,)  # feasible: x + y <= 2; optimum (1, 1), value 2

    study = run(objective, GeoSampler(seed=0, num_initial=5, num_candidates=256, constraints_func=constraints), 16)
    feasible = [t for t in study.trials if t.params["x"] + t.params["y"] <= 2.0]
    late = study.trials[5:]
    assert min(t.value for t in feasible) < 2.3
    assert sum(t.params["x"] + t.params["y"] <= 2.05 for t in late) >= 0.6 * len(late)
    assert study.best_trial.params["x"] + study.best_trial.params["y"] <= 2.0  # Optuna's best is feasible


def test_multi_objective_study_finds_a_wider_front_than_random():
    def objective(trial):
        x, y = trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
        return x**2 + 0.5 * y**2, (x - 1.0) ** 2 + 0.5 * y**2  # front: y = 0, x in [0, 1]

    def hypervolume(study) -> float:  # 2-D, reference point (1.5, 1.5)
        front = sorted(t.values for t in study.best_trials)
        volume, previous = 0.0, 1.5
        for f1, f2 in front:
            if f1 < 1.5 and f2 < previous:
                volume += (1.5 - f1) * (previous - f2)
                previous = f2
        return volume

    geo = run(objective, GeoSampler(seed=0, num_initial=5, num_candidates=256), 13, directions=["minimize", "minimize"])
    rand = [run(objective, optuna.samplers.RandomSampler(seed=s), 13, directions=["minimize", "minimize"])
            for s in range(5)]
    assert len(geo.best_trials) >= 5
    assert hypervolume(geo) > max(hypervolume(r) for r in rand)


def test_running_trials_are_pending_so_parallel_workers_get_distinct_points():
    study = run(sphere, GeoSampler(seed=0, num_initial=4, num_candidates=128), 6)
    asked = [study.ask() for _ in range(3)]  # three workers, none has told yet
    points = [tuple(t.suggest_float(f"x{i}", 0.0, 1.0) for i in range(4)) for t in asked]
    assert len(set(points)) == 3  # without pending points the same history would give the same point thrice


def test_failed_and_pruned_trials_steer_the_search_away():
    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        y = trial.suggest_float("y", 0.0, 1.0)
        if x > 0.6:
            raise RuntimeError("diverged")  # a failed trial
        if y > 0.7:
            trial.report(5.0, step=0)
            raise optuna.TrialPruned()
        return (x - 0.55) ** 2 + (y - 0.65) ** 2  # best next to both bad regions

    study = optuna.create_study(sampler=GeoSampler(seed=0, num_initial=6))
    study.optimize(objective, n_trials=20, catch=(RuntimeError,))
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.FAIL in states[:6] and optuna.trial.TrialState.PRUNED in states[:6]
    bad_late = sum(s != optuna.trial.TrialState.COMPLETE for s in states[6:])
    assert bad_late <= 5, states  # random search lands in a bad region 52% of the time
    assert study.best_value < 0.01


def test_conditional_parameter_is_sampled_independently_with_one_warning():
    def objective(trial):
        opt = trial.suggest_categorical("opt", ["sgd", "adam"])
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        momentum = trial.suggest_float("momentum", 0.0, 0.99) if opt == "sgd" else 0.0
        return (math.log10(lr) + 2) ** 2 + (momentum - 0.9) ** 2 + (0.1 if opt == "adam" else 0.0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = run(objective, GeoSampler(seed=0, num_initial=4, num_candidates=128), 8)
    said = [w for w in caught if "momentum" in str(w.message)]
    assert len(said) == 1
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_centre_of_each_distribution_kind():
    d = optuna.distributions
    assert centre_of(d.FloatDistribution(1e-4, 1e-2, log=True)) == pytest.approx(1e-3)
    assert centre_of(d.IntDistribution(0, 10, step=5)) == 5
    assert centre_of(d.CategoricalDistribution(["a", "b", "c", "d"])) == "c"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_initial": 0}, "num_initial=0 must be a positive integer"),
        ({"num_candidates": 8}, "num_candidates=8 must be an integer >= 16"),
        ({"seed": 1.5}, "seed=1.5 must be an integer"),
        ({"constraints_func": 3}, "constraints_func=3 must be a callable"),
        ({"independent_sampler": "random"}, "independent_sampler='random' must be an optuna sampler"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GeoSampler(**kwargs)


def test_geo_curve_pruner_stops_a_hopeless_curve_and_keeps_a_promising_one():
    from lightning_geo.tuning.optuna_pruner import GeoCurvePruner

    def curve(final: float):
        def objective(trial):
            trial.suggest_float("x", 0.0, 1.0)
            for step in range(1, 5):
                trial.report(final + 1.0 / step, step)  # the final value is 1.0 below the first report
                if trial.should_prune():
                    raise optuna.TrialPruned()
            return final
        return objective

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=GeoCurvePruner(n_startup_trials=3))
    for final in (1.0, 1.1, 1.2):
        study.optimize(curve(final), n_trials=1)
    study.optimize(curve(5.0), n_trials=1)  # 6.0 at step 1: even a gain of 1.0 cannot reach 1.0
    study.optimize(curve(0.9), n_trials=1)  # 1.9 at step 1: with the same gain as the others it wins
    assert study.trials[3].state == optuna.trial.TrialState.PRUNED and len(study.trials[3].intermediate_values) == 1
    assert study.trials[4].state == optuna.trial.TrialState.COMPLETE and study.best_value == 0.9


def _worker(url: str, n_trials: int) -> None:
    """One of several processes sharing a study (module level: spawned processes import it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.load_study(study_name="shared", storage=storage, sampler=GeoSampler(seed=0, num_initial=3,
                                                                                         num_candidates=128))
    study.optimize(sphere, n_trials=n_trials)


def test_two_processes_share_one_sqlite_study(tmp_path):
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="shared", storage=url)
    context = multiprocessing.get_context("forkserver")  # preloaded in conftest.py: no re-import
    workers = [context.Process(target=_worker, args=(url, 5)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    assert [w.exitcode for w in workers] == [0, 0]
    trials = optuna.load_study(study_name="shared", storage=url).trials
    assert len(trials) == 10 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({json_key(t.params) for t in trials}) == 10  # each worker saw the other's running trials
