"""Wrong user inputs to ``lightning_geo.tuning`` (found by ``benchmarks/bad_inputs.py``): each is refused by name, at
construction where the input is known then, instead of a raw error from deep inside Python, pathlib or Ray, or being
taken silently."""

from __future__ import annotations

import pytest

from lightning_geo.tuning import CurvePruner, Float, GeoTuner, MedianPruner, SearchSpace, SubprocessExecutor

SPACE = SearchSpace({"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)})


def never_called(config, trial):  # a bad argument must be refused before any trial runs
    raise AssertionError("a trial ran")


# ----------------------------------------------------------------------------- GeoTuner
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"space": [Float(0.0, 1.0)]}, TypeError, r"space=\[Float.* must be a SearchSpace",
                     id="space-list"),
        pytest.param({"executor": "subprocess", "devices": 2}, TypeError,
                     r"devices=2 must be a list of device ids", id="devices-int"),
        pytest.param({"executor": "subprocess", "devices": "0,1"}, TypeError,
                     r"devices='0,1' must be a list of device ids", id="devices-str"),
        pytest.param({"devices": 2}, TypeError, r"devices=2 must be a list of device ids", id="devices-int-in-process"),
        pytest.param({"resume": "no"}, TypeError, r"resume='no' must be True or False", id="resume-str"),
        pytest.param({"verbose": 1}, TypeError, r"verbose=1 must be True or False", id="verbose-int"),
        pytest.param({"monitor": 5}, ValueError, r"monitor=5 must be a metric name", id="monitor-int"),
    ],
)
def test_geotuner_refuses_bad_arguments_by_name(kwargs, error, match, tmp_path):
    kwargs = {"space": SPACE, "log_dir": tmp_path, **kwargs}
    with pytest.raises(error, match=match):
        GeoTuner(kwargs.pop("space"), **kwargs)


@pytest.mark.parametrize("devices", [2, "0,1", [0, True]])
def test_subprocess_executor_refuses_devices_that_are_not_a_list_of_ids(devices):
    with pytest.raises(TypeError, match=r"devices=.* must be a list of device ids"):
        SubprocessExecutor(n_parallel=1, devices=devices)


def test_geotuner_takes_a_dict_as_its_space(tmp_path):
    tuner = GeoTuner({"x": Float(0.0, 1.0), "epochs": 2}, log_dir=tmp_path)
    assert isinstance(tuner.space, SearchSpace) and tuner.space.d == 1 and tuner.space.fixed == {"epochs": 2}


def test_geotuner_refuses_a_folder_as_storage(tmp_path):
    with pytest.raises(ValueError, match=r"storage=.* is a folder.*trials\.jsonl"):
        GeoTuner(SPACE, log_dir=tmp_path, storage=tmp_path)


def test_geotuner_refuses_storage_under_a_file(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"storage=.*a_file.* is a file"):
        GeoTuner(SPACE, log_dir=tmp_path, storage=tmp_path / "a_file" / "trials.jsonl")


def test_geotuner_refuses_log_dir_under_a_file(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"log_dir=.*a_file.* is a file"):
        GeoTuner(SPACE, log_dir=tmp_path / "a_file" / "tuning")


def test_geotuner_refuses_a_log_dir_it_cannot_create_before_any_trial():
    # as root the folder check at construction passes (root may write in /proc), so search refuses it
    with pytest.raises(ValueError, match=r"log_dir='/proc/nope'"):
        GeoTuner(SPACE, log_dir="/proc/nope", verbose=False).search(never_called)


# ----------------------------------------------------------------------------- pruners
@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        pytest.param(lambda: CurvePruner(optimism="high"), TypeError, r"optimism='high' must be a number",
                     id="optimism-str"),
        pytest.param(lambda: CurvePruner(optimism=None), TypeError, r"optimism=None must be a number",
                     id="optimism-none"),
        pytest.param(lambda: CurvePruner(optimism=True), TypeError, r"optimism=True must be a number",
                     id="optimism-bool"),
        pytest.param(lambda: CurvePruner(optimism=float("nan")), ValueError, r"optimism=nan must be a finite number",
                     id="optimism-nan"),
        pytest.param(lambda: CurvePruner(n_startup_trials=True), ValueError,
                     r"n_startup_trials=True must be a positive integer", id="startup-bool"),
        pytest.param(lambda: MedianPruner(n_warmup_steps=False), ValueError,
                     r"n_warmup_steps=False must be a non-negative", id="warmup-bool"),
        pytest.param(lambda: Float(1e-3, 1.0, log="yes"), TypeError, r"Float: log='yes' must be True or False",
                     id="float-log-str"),
    ],
)
def test_pruners_refuse_bad_numbers_by_name(make, error, match):
    with pytest.raises(error, match=match):
        make()


# ----------------------------------------------------------------------------- GeoSearch (constructed only)
@pytest.fixture(scope="module")
def geo_search():
    pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    from lightning_geo.tuning.ray import GeoSearch

    return GeoSearch


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"metric": ["a", "b"], "mode": ["min"]}, ValueError,
                     r"mode=\['min'\] has 1 entries but metric=\['a', 'b'\] has 2", id="mode-shorter"),
        pytest.param({"metric": "a", "mode": ["min", "max"]}, ValueError,
                     r"mode=\['min', 'max'\] has 2 entries but metric=\['a'\] has 1", id="mode-longer"),
        pytest.param({"metric": ""}, ValueError, r"metric='' must be a metric name", id="metric-empty"),
        pytest.param({"metric": ["a", 1], "mode": "min"}, ValueError, r"metric=\['a', 1\] must be a metric name",
                     id="metric-not-str"),
        pytest.param({"num_candidates": 0}, ValueError, r"num_candidates=0 must be an integer >= 16",
                     id="num_candidates-0"),
        pytest.param({"num_initial": -1}, ValueError, r"num_initial=-1 must be a positive integer or None",
                     id="num_initial-negative"),
        pytest.param({"num_initial": True}, ValueError, r"num_initial=True must be a positive integer or None",
                     id="num_initial-bool"),
        pytest.param({"seed": "x"}, TypeError, r"seed='x' must be an integer", id="seed-str"),
        pytest.param({"space": [1, 2]}, TypeError, r"space=\[1, 2\] must be a SearchSpace", id="space-list"),
    ],
)
def test_geosearch_refuses_bad_arguments_by_name(geo_search, kwargs, error, match):
    with pytest.raises(error, match=match):
        geo_search(**kwargs)


def test_geosearch_takes_one_mode_for_several_metrics(geo_search):
    search = geo_search(metric=("a", "b"), mode="max")  # Ray's Searcher wants lists of the same length
    assert search.metric == ["a", "b"] and search.mode == ["max", "max"]
    single = geo_search(metric="a", mode=("min",))
    assert single.metric == "a" and single.mode == "min"
