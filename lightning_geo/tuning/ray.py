"""``GeoSearch``: GEO's [`BayesianOptimizer`][lightning_geo.tuning.BayesianOptimizer] as a Ray Tune search algorithm.

``tune.TuneConfig(search_alg=GeoSearch(seed=0), scheduler=ASHAScheduler(), ...)`` proposes Ray Tune's trials
with GEO's BoTorch optimizer, on Ray's cluster, schedulers and fault tolerance. The space is Ray Tune's own
``param_space`` (``tune.uniform``, ``tune.loguniform``, ``tune.randint``, ``tune.lograndint``,
``tune.choice``; other values are passed unchanged) or a GEO [`SearchSpace`][lightning_geo.tuning.SearchSpace].

Trials still running are pending points of every ask (so concurrent trials get distinct configs); a trial
that errors is told as a failure (the GP imputes the worst value seen there); a trial a scheduler stops early
(ASHA) is told its last reported value. Also ``RayExecutor``, to run
``GeoTuner``'s trials as Ray tasks, is importable from here.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.sample import Categorical as RayCategorical
from ray.tune.search.sample import Domain, Float, Integer, LogUniform, Quantized

from lightning_geo.tuning.optimizer import BayesianOptimizer, _check_settings, _metric_names, _modes, _objectives
from lightning_geo.tuning.ray_executor import RayExecutor
from lightning_geo.tuning.space import Categorical, Config, Int, SearchSpace, as_space
from lightning_geo.tuning.space import Float as GeoFloat


def space_from_ray(param_space: Mapping[str, Any]) -> SearchSpace:
    """A GEO search space from a flat Ray Tune ``param_space`` (non-``Domain`` values become fixed values).

    Raises:
        ValueError: for quantized domains, grid search, nested dicts of domains, or a space without a domain.
    """
    parameters: dict[str, Any] = {}
    for name, value in param_space.items():
        nested = isinstance(value, Mapping) and any(isinstance(v, Domain) for v in value.values())
        if nested or (isinstance(value, Mapping) and "grid_search" in value):
            raise ValueError(f"param_space[{name!r}]: GeoSearch takes a flat space without grid_search, got {value!r}")
        if not isinstance(value, Domain):
            parameters[name] = value
            continue
        sampler = value.get_sampler()
        if isinstance(sampler, Quantized):
            raise ValueError(f"param_space[{name!r}]: quantized domains are not supported; use tune.randint or "
                             "tune.choice over the grid")
        log = isinstance(sampler, LogUniform)
        if isinstance(value, Float):
            parameters[name] = GeoFloat(value.lower, value.upper, log=log)
        elif isinstance(value, Integer):
            parameters[name] = Int(value.lower, value.upper - 1, log=log)  # Ray's integer upper bound is exclusive
        elif isinstance(value, RayCategorical):
            parameters[name] = Categorical(list(value.categories))
        else:
            raise ValueError(f"param_space[{name!r}]: {type(value).__name__} domains are not supported")
    return SearchSpace(parameters)


class GeoSearch(Searcher):
    """A Ray Tune search algorithm that proposes trials with GEO's BoTorch
    [`BayesianOptimizer`][lightning_geo.tuning.BayesianOptimizer].

    Args:
        space: A GEO [`SearchSpace`][lightning_geo.tuning.SearchSpace] or a Ray Tune ``param_space`` dict; ``None``
            (default): the Tuner's ``param_space``, passed in by Ray Tune.
        metric: The reported metric to optimise (a list of names: several objectives, a Pareto front);
            ``None``: the ``TuneConfig``'s.
        mode: ``"min"``/``"max"`` (one per metric); ``None``: the ``TuneConfig``'s.
        seed: Seeds the optimiser: the same results give the same proposals. Default 0.
        num_initial: Trials of GEO's quasi-random initial design (see
            [`BayesianOptimizer`][lightning_geo.tuning.BayesianOptimizer]).
        num_candidates: Sobol candidates per ask. Default 1024.

    Raises:
        ValueError: for a bad ``space`` (see ``space_from_ray``), ``metric`` or ``mode`` (a list of modes must have
            one entry per metric), or a non-positive ``num_initial`` or ``num_candidates < 16``.
        TypeError: for a ``space`` that is neither a SearchSpace nor a mapping, or a ``seed`` that is not an integer.

    Example:
        ```python
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from lightning_geo.tuning.ray import GeoSearch

        tuner = tune.Tuner(
            train_fn,  # reports {"val_loss": ...} with tune.report
            param_space={"lr": tune.loguniform(1e-4, 1e-1), "layers": tune.randint(1, 7)},
            tune_config=tune.TuneConfig(metric="val_loss", mode="min", num_samples=30,
                                        search_alg=GeoSearch(seed=0), scheduler=ASHAScheduler()),
        )
        best = tuner.fit().get_best_result().config
        ```
    """

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any] | None = None,
        *,
        metric: str | Sequence[str] | None = None,
        mode: str | Sequence[str] | None = None,
        seed: int = 0,
        num_initial: int | None = None,
        num_candidates: int = 1024,
    ) -> None:
        _check_settings(seed=seed, num_initial=num_initial, num_candidates=num_candidates)
        if metric is not None and mode is not None:  # checked here: Ray's Searcher would assert
            metrics, modes = _objectives(metric, mode, name="metric")
            several = not isinstance(metric, str)  # Ray wants a str for both or a list of the same length for both
            metric, mode = (list(metrics), list(modes)) if several else (metrics[0], modes[0])
        elif metric is not None:
            metrics = _metric_names(metric, name="metric")
            metric = metric if isinstance(metric, str) else list(metrics)
        elif mode is not None:
            modes = _modes(mode)  # raises ValueError for anything but min/max
            mode = mode if isinstance(mode, str) else list(modes)
        # Ray's Searcher takes lists of metrics and modes (multi-objective) though its hints say str
        super().__init__(metric=metric, mode=mode)  # type: ignore[arg-type]
        self.seed = seed
        self.num_initial = num_initial
        self.num_candidates = num_candidates
        self._space: SearchSpace | None = None
        if isinstance(space, Mapping) and not isinstance(space, SearchSpace):
            self._space = space_from_ray(space)
        elif space is not None:
            self._space = as_space(space)  # a SearchSpace, or TypeError naming space
        self._optimizer: BayesianOptimizer | None = None
        self._live: dict[str, Config] = {}  # trial id -> config suggested and not yet completed

    # ------------------------------------------------------------------ Searcher
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Take the Tuner's ``param_space``, metric and mode where this searcher was not given its own."""
        if self._optimizer is not None:
            return False
        if self._space is None:
            if not config:
                return False
            self._space = space_from_ray(config)
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def suggest(self, trial_id: str) -> Config | None:
        """The next config (GEO's ask, with every running trial as a pending point)."""
        optimizer = self._ensure_optimizer()
        config = optimizer.ask()
        self._live[trial_id] = config
        return dict(config)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell the trial's last reported metric(s); an error or a missing/NaN metric is a failed trial."""
        config = self._live.pop(trial_id, None)
        if config is None or self._optimizer is None:
            return
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        values = None
        if not error and result is not None and all(m in result for m in metrics):
            values = [float(result[m]) for m in metrics]
            if not all(math.isfinite(v) for v in values):
                values = None
        self._optimizer.tell(config, values)

    def save(self, checkpoint_path: str) -> None:
        """Pickle the study so far (told results, running trials) for ``restore``."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        """Load what ``save`` wrote."""
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    # ------------------------------------------------------------------ internals
    def _ensure_optimizer(self) -> BayesianOptimizer:
        if self._optimizer is None:
            if self._space is None:
                raise RuntimeError("GeoSearch has no search space: pass space= or a param_space to tune.Tuner")
            if not self._metric or not self._mode:
                raise RuntimeError("GeoSearch needs metric= and mode=, here or in tune.TuneConfig")
            _, modes = _objectives(self._metric, self._mode, name="metric")  # the Tuner's may not match this one's
            self._optimizer = BayesianOptimizer(
                self._space, seed=self.seed, mode=modes, num_initial=self.num_initial,
                num_candidates=self.num_candidates,
            )
        return self._optimizer

    @property
    def optimizer(self) -> BayesianOptimizer | None:
        """The optimiser behind the searcher (``None`` before the first suggestion): observations, best, front."""
        return self._optimizer


__all__ = ["GeoSearch", "RayExecutor", "space_from_ray"]
