"""GEO on Ray: GeoSearch inside Ray Tune (with ASHA) and GeoTuner's trials as Ray tasks, on a real local Ray
instance of 2 CPUs, including a worker killed in the middle of a trial. Needs the optional ``ray[tune]`` extra."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
tune = pytest.importorskip("ray.tune")

from lightning_geo.tuning import Categorical, Float, GeoTuner, Int, SearchSpace, TrialState  # noqa: E402
from lightning_geo.tuning.ray import GeoSearch, RayExecutor, space_from_ray  # noqa: E402

SPACE = SearchSpace({"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)})
# the trainables travel by value, so Ray Tune's trial actors need not import this module (and torch, Lightning)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


# ----------------------------------------------------------------------------- search spaces, arguments
def test_ray_param_space_converts_to_a_geo_space():
    space = space_from_ray({
        "lr": tune.loguniform(1e-4, 1e-1), "dropout": tune.uniform(0.0, 0.5), "layers": tune.randint(1, 7),
        "width": tune.lograndint(16, 1025), "act": tune.choice(["relu", "gelu"]), "epochs": 3,
    })
    assert space["lr"] == Float(1e-4, 1e-1, log=True) and space["dropout"] == Float(0.0, 0.5)
    assert space["layers"] == Int(1, 6) and space["width"] == Int(16, 1024, log=True)  # Ray's upper bound: exclusive
    assert space["act"] == Categorical(["relu", "gelu"]) and space.fixed == {"epochs": 3}


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: space_from_ray({"x": tune.quniform(0, 1, 0.1)}), "quantized domains are not supported"),
        (lambda: space_from_ray({"x": tune.grid_search([1, 2])}), "without grid_search"),
        (lambda: GeoSearch(SPACE, metric="loss", mode="best"), "mode='best' must be 'min', 'max'"),
        (lambda: RayExecutor(0), "n_parallel=0 must be a positive integer"),
        (lambda: RayExecutor(1, num_gpus=-1), "num_gpus=-1 must be a non-negative number"),
        (lambda: RayExecutor(1, max_retries=-1), "max_retries=-1 must be a non-negative integer"),
    ],
)
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- Ray Tune
def curve_trainable(config):
    """A learning curve that falls over 4 iterations towards (x - 0.3)^2 + (y - 0.7)^2."""
    final = (config["x"] - 0.3) ** 2 + (config["y"] - 0.7) ** 2
    for step in range(1, 5):
        tune.report({"loss": final + 0.2 / step})


def test_geo_search_runs_a_ray_tune_study_with_asha(cluster, tmp_path):
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    search = GeoSearch(seed=0, num_initial=4, num_candidates=256)
    tuner = tune.Tuner(
        curve_trainable,
        param_space={"x": tune.uniform(0.0, 1.0), "y": tune.uniform(0.0, 1.0)},
        tune_config=tune.TuneConfig(
            metric="loss", mode="min", num_samples=8, search_alg=ConcurrencyLimiter(search, max_concurrent=2),
            scheduler=ASHAScheduler(max_t=4, grace_period=1, reduction_factor=2),
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="geo", verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 8 and not results.errors
    configs = {(r.config["x"], r.config["y"]) for r in results}
    assert len(configs) == 8  # concurrent trials were pending points of each other's asks
    assert any(r.metrics["training_iteration"] < 4 for r in results)  # ASHA stopped some early
    best = results.get_best_result()
    assert best.metrics["loss"] < 0.2 + 0.25 / 4 + 0.01  # the initial design's centre (0.5, 0.5) is at 0.08 + 0.05


# ----------------------------------------------------------------------------- GeoTuner on Ray tasks
def dies_once_train_fn(config, trial):
    """Trial 1's worker process dies the first time it runs (as under the out-of-memory killer)."""
    marker = Path(trial.log_dir).parent / "killed_once"
    trial.report(1.0, step=1)
    if trial.number == 1 and not marker.exists():
        marker.touch()
        os._exit(1)
    return (config["x"] - 0.3) ** 2 + (config["y"] - 0.7) ** 2


@pytest.mark.parametrize("max_retries", [1, 0])
def test_ray_executor_trial_whose_worker_dies_is_rerun_or_failed_never_lost_or_doubled(cluster, tmp_path,
                                                                                       max_retries):
    executor = RayExecutor(n_parallel=2, max_retries=max_retries)
    tuner = GeoTuner(SPACE, max_trials=4, num_initial=4, pruner=None, executor=executor, log_dir=tmp_path,
                     verbose=False)
    tuner.search(dies_once_train_fn)
    assert (tmp_path / "study" / "killed_once").exists()
    assert sorted(t.number for t in tuner.trials) == [0, 1, 2, 3]
    killed = next(t for t in tuner.trials if t.number == 1)
    if max_retries:
        assert all(t.state is TrialState.COMPLETE for t in tuner.trials)
        assert killed.reports == [(1, 1.0)]  # the dead attempt's report is not counted twice
    else:
        assert killed.state is TrialState.FAILED and "Ray task failed" in killed.error
        assert sum(t.state is TrialState.COMPLETE for t in tuner.trials) == 3
