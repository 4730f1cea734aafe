"""GEO tuning: search spaces, the BoTorch optimizer (ask/tell) and ``GeoTuner`` over Lightning runs.

BoTorch is imported inside the modules of this package only, and only when a model is fitted, never at
``import lightning_geo``.

Example:
    ```python
    from lightning_geo.tuning import Categorical, Float, GeoTuner, Int, SearchSpace

    space = SearchSpace({"lr": Float(1e-5, 1e-1, log=True), "layers": Int(1, 6), "act": Categorical(["relu", "gelu"])})
    tuner = GeoTuner(space, monitor="val_loss", max_trials=30)
    best = tuner.search(train_fn)  # train_fn(config, trial) builds a Trainer with trial.reporter() and fits
    ```

Optional modules, not imported here (they need the ``optuna`` / ``ray`` extras):
``lightning_geo.tuning.optuna.GeoSampler`` (GEO's optimizer inside any Optuna study),
``lightning_geo.tuning.optuna_pruner.GeoCurvePruner`` (the curve rule as an Optuna pruner),
``lightning_geo.tuning.optuna_storage.OptunaStorage`` (``GeoTuner(storage="sqlite:///...")``),
``lightning_geo.tuning.ray.GeoSearch`` (a Ray Tune search algorithm) and ``RayExecutor`` (trials as Ray tasks).
"""

from lightning_geo.tuning.executors import InProcessExecutor, SubprocessExecutor, TrialExecutor, run_trial
from lightning_geo.tuning.optimizer import BayesianOptimizer, Observation, TuningError
from lightning_geo.tuning.pruners import CurvePruner, MedianPruner, Pruner
from lightning_geo.tuning.reporter import TrialReporter
from lightning_geo.tuning.space import Categorical, Float, Int, SearchSpace
from lightning_geo.tuning.storage import JsonlStorage
from lightning_geo.tuning.trial import Trial, TrialPruned, TrialRecord, TrialState
from lightning_geo.tuning.tuner import GeoTuner

__all__ = [
    "BayesianOptimizer",
    "Categorical",
    "CurvePruner",
    "Float",
    "GeoTuner",
    "InProcessExecutor",
    "Int",
    "JsonlStorage",
    "MedianPruner",
    "Observation",
    "Pruner",
    "SearchSpace",
    "SubprocessExecutor",
    "Trial",
    "TrialExecutor",
    "TrialPruned",
    "TrialRecord",
    "TrialReporter",
    "TrialState",
    "TuningError",
    "run_trial",
]
