"""``GeoSampler``: GEO's [`BayesianOptimizer`][lightning_geo.tuning.BayesianOptimizer] as an Optuna sampler.

``optuna.create_study(sampler=GeoSampler(seed=0))`` runs GEO's BoTorch optimizer inside any Optuna study: its
storage (in memory, SQLite/RDB, journal), its pruners, ``optuna-dashboard``, ``n_jobs`` and several processes
sharing one storage. It works as Optuna's own ``GPSampler`` does:

- The *relative* search space is the intersection of the completed trials' distributions (Optuna's
  define-by-run spaces); the GP models those parameters jointly. Parameters outside it (conditional ones, or
  all of them until a first trial completes) are sampled *independently*: trial 0 gets the centre of every
  distribution (the first point of GEO's design), later trials uniform draws seeded by ``(seed, trial
  number, parameter name)``, so that workers sharing a storage never draw the same values (or your own
  ``independent_sampler``).
- Every ``sample_relative`` rebuilds a [`BayesianOptimizer`][lightning_geo.tuning.BayesianOptimizer] from the study's
  trials: completed trials are told their values; failed trials are told as failures (the GP imputes the worst value
  seen there); pruned trials their last intermediate value (single objective; a failure without one, or with several
  objectives); constraint values (``constraints_func`` or ``trial.set_constraint``, a value > 0 violates) are modelled
  by the GP as extra outputs, and the acquisition is weighted by the probability of feasibility; trials still running
  (other workers) are pending points, so parallel workers get distinct configs.
- Several objectives (``directions=[...]``) use qLogNoisyExpectedHypervolumeImprovement (a Pareto front).

The same trials give the same proposals: every ask is seeded from ``(seed, trials told, trials pending)``,
and the GP hyperparameters are warm-started from this sampler's previous fit of the same space.
"""

from __future__ import annotations

import json
import random
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeGuard, cast

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lightning_geo.tuning.optimizer import BayesianOptimizer, Mode, TuningError, _check_settings
from lightning_geo.tuning.space import Categorical, Dimension, Float, Int, SearchSpace

_PENDING_KEY = "geo:relative_params"  # the relative params of a running trial, for other workers' pending points
_ATTR_CHUNK = 2045  # RDB storages cap a system attribute's JSON at 2048 characters (as GPSampler chunks them)
_CONSTRAINTS_KEY = "constraints"  # where Optuna (and constraints_func) keep a trial's constraint values


def dimension_of(distribution: BaseDistribution) -> Dimension:
    """The GEO dimension that searches an Optuna distribution (stepped distributions: an ``Int`` grid index).

    Raises:
        TypeError: for a distribution that is not a Float, Int or Categorical distribution.
    """
    if isinstance(distribution, CategoricalDistribution):
        return Categorical(list(distribution.choices))
    if isinstance(distribution, IntDistribution):
        if distribution.step == 1:
            return Int(distribution.low, distribution.high, log=distribution.log)
        return Int(0, (distribution.high - distribution.low) // distribution.step)
    if isinstance(distribution, FloatDistribution):
        if distribution.step is None:
            return Float(distribution.low, distribution.high, log=distribution.log)
        return Int(0, round((distribution.high - distribution.low) / distribution.step))
    raise TypeError(f"GeoSampler cannot search {distribution!r}: expected a Float, Int or Categorical distribution")


def _stepped(distribution: BaseDistribution) -> TypeGuard[IntDistribution | FloatDistribution]:
    return isinstance(distribution, IntDistribution | FloatDistribution) and distribution.step not in (None, 1)


def to_geo(distribution: BaseDistribution, value: Any) -> Any:
    """An Optuna parameter value as the value of ``dimension_of`` (a grid index for stepped ones)."""
    if _stepped(distribution):
        return round((value - distribution.low) / distribution.step)
    return value


def from_geo(distribution: BaseDistribution, value: Any) -> Any:
    """A value of ``dimension_of`` as the Optuna parameter value (inside the distribution's bounds)."""
    if isinstance(distribution, CategoricalDistribution):
        return value
    # not categorical: an Int or Float distribution (the other kinds dimension_of searches)
    numeric = cast("IntDistribution | FloatDistribution", distribution)
    if _stepped(numeric):
        value = numeric.low + value * numeric.step
    kind = int if isinstance(numeric, IntDistribution) else float
    return kind(min(numeric.high, max(numeric.low, value)))


def centre_of(distribution: BaseDistribution) -> Any:
    """The centre of a distribution, as GEO's design starts (log scale for ``log=True``, category ``k // 2``)."""
    dim = dimension_of(distribution)
    if isinstance(dim, Categorical):
        return dim.choices[len(dim.choices) // 2]
    return from_geo(distribution, dim.from_unit(0.5))


def _constraints(trial: FrozenTrial) -> list[float]:
    """The trial's constraint values, through ``FrozenTrial.constraints`` (Optuna >= 5) or the old system attr."""
    values = getattr(trial, "constraints", None)
    if isinstance(values, Mapping):
        return [float(v) for v in values.values()]
    return [float(v) for v in (trial.system_attrs.get(_CONSTRAINTS_KEY) or ())]


class GeoSampler(BaseSampler):
    """An Optuna sampler that proposes trials with GEO's BoTorch
    [`BayesianOptimizer`][lightning_geo.tuning.BayesianOptimizer].

    Args:
        seed: Seeds the optimizer and the independent sampler; the same study history gives the same
            proposals. Default ``None``: a random seed.
        num_initial: Trials of GEO's quasi-random initial design (centre + Sobol) before the GP takes over.
            Default ``min(10, max(5, d + 1))`` for ``d`` parameters in the relative search space.
        num_candidates: Sobol candidates the acquisition is evaluated on per ask (plus local ones). Default 1024.
        independent_sampler: Samples parameters outside the relative search space (after trial 0, which gets
            the centre of every distribution). Default: uniform draws seeded per trial and parameter.
        constraints_func: ``constraints_func(frozen_trial) -> sequence of floats`` evaluated after each complete
            or pruned trial (a value > 0 violates a constraint), as Optuna's own samplers take it; constraints
            set with ``trial.set_constraint`` are honoured too. Default ``None``.
        warn_independent_sampling: Warn (once per parameter) when a parameter is sampled independently after
            the study has completed trials, i.e. it is conditional and the GP does not model it. Default
            ``True``.

    Raises:
        ValueError: for a non-positive ``num_initial``, ``num_candidates < 16`` or a non-callable
            ``constraints_func``.

    Example:
        ```python
        import optuna
        from lightning_geo.tuning.optuna import GeoSampler

        def objective(trial):
            x = trial.suggest_float("x", -5, 5)
            lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
            return (x - 1) ** 2 + (math.log10(lr) + 3) ** 2

        study = optuna.create_study(sampler=GeoSampler(seed=0))
        study.optimize(objective, n_trials=30)
        ```
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        num_initial: int | None = None,
        num_candidates: int = 1024,
        independent_sampler: BaseSampler | None = None,
        constraints_func: Callable[[FrozenTrial], Sequence[float]] | None = None,
        warn_independent_sampling: bool = True,
    ) -> None:
        _check_settings(seed=0 if seed is None else seed, num_initial=num_initial, num_candidates=num_candidates)
        if constraints_func is not None and not callable(constraints_func):
            raise ValueError(f"constraints_func={constraints_func!r} must be a callable frozen_trial -> floats or None")
        if independent_sampler is not None and not isinstance(independent_sampler, BaseSampler):
            raise ValueError(f"independent_sampler={independent_sampler!r} must be an optuna sampler or None")
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.num_initial = num_initial
        self.num_candidates = num_candidates
        self.constraints_func = constraints_func
        self.warn_independent_sampling = warn_independent_sampling
        self._independent_sampler = independent_sampler
        self._intersection = IntersectionSearchSpace()
        self._warm_start: dict[str, Any] = {}  # per relative search space: (last fit's hyperparameters, its trials)
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ BaseSampler
    def reseed_rng(self) -> None:
        """Reseed a given independent sampler (Optuna calls it per worker thread); GEO's asks and the default
        independent draws stay seeded by the study's history and trial numbers."""
        if self._independent_sampler is not None:
            self._independent_sampler.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """The parameters every completed trial has with the same distribution (one-value ones left out), in
        the order the first completed trial suggested them (so the GP's columns do not depend on names)."""
        common = {name: d for name, d in self._intersection.calculate(study).items() if not d.single()}
        if not common:
            return {}
        first = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))[0]
        ordered = [name for name in first.distributions if name in common]
        return {name: common[name] for name in ordered + sorted(set(common) - set(ordered))}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Propose the relative search space's parameters with GEO's optimizer, from every other trial of the
        study (see the module docstring for how each state counts)."""
        if not search_space:
            return {}
        space = SearchSpace({name: dimension_of(d) for name, d in search_space.items()})
        modes: list[Mode] = ["min" if d == StudyDirection.MINIMIZE else "max" for d in study.directions]
        optimizer = BayesianOptimizer(
            space, seed=self.seed, mode=modes, num_initial=self.num_initial, num_candidates=self.num_candidates
        )
        key = json.dumps([space.describe(), modes])
        optimizer._warm_start, optimizer._fitted_on = self._warm_start.get(key, (None, 0))
        asking = 0  # earlier trials of other workers still inside their own ask (no params stored yet)
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number:
                continue
            config = self._config(other, search_space)
            if config is None:
                asking += other.state == TrialState.RUNNING and other.number < trial.number and not other.params
                continue
            if other.state == TrialState.RUNNING:
                optimizer.mark_pending(config)
            elif other.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED):
                optimizer.tell(config, self._value(other, len(modes)), constraints=_constraints(other) or None)
        optimizer.set_pending_elsewhere(asking)
        try:
            config = optimizer.ask()
        except TuningError as err:
            self._warn_once("<relative>", f"GeoSampler: {err}; sampling trial {trial.number} independently")
            return {}
        self._warm_start[key] = (optimizer._warm_start, optimizer._fitted_on)
        params = {name: from_geo(d, config[name]) for name, d in search_space.items()}
        text = json.dumps(params)
        for i in range(0, len(text), _ATTR_CHUNK):  # visible to other workers before the trial suggests them
            study._storage.set_trial_system_attr(trial._trial_id, f"{_PENDING_KEY}:{i // _ATTR_CHUNK}",
                                                 text[i : i + _ATTR_CHUNK])
        return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """The centre of the distribution in trial 0, then a draw of the independent sampler."""
        if trial.number == 0 and not param_distribution.single():
            return centre_of(param_distribution)
        warn = self.warn_independent_sampling and param_name not in self._warned
        if warn and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            self._warn_once(
                param_name,
                f"GeoSampler: parameter {param_name!r} is not in every completed trial with the same distribution "
                "(conditional or changed), so the GP does not model it; it is sampled independently (said once "
                "per parameter)",
            )
        sampler = self._independent_sampler
        if sampler is None:  # a generator per trial and parameter: distinct across workers, reproducible
            sampler = RandomSampler(seed=zlib.crc32(f"{self.seed}:{trial.number}:{param_name}".encode()))
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Forwarded to a given independent sampler."""
        if self._independent_sampler is not None:
            self._independent_sampler.before_trial(study, trial)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        """Store ``constraints_func``'s values on a complete or pruned trial; forwarded to a given independent
        sampler."""
        if self.constraints_func is not None and state in (TrialState.COMPLETE, TrialState.PRUNED):
            constraints = tuple(float(c) for c in self.constraints_func(trial))
            if any(c != c for c in constraints):
                raise ValueError(f"constraints_func returned NaN for trial {trial.number}: {constraints}")
            study._storage.set_trial_system_attr(trial._trial_id, _CONSTRAINTS_KEY, constraints)
        if self._independent_sampler is not None:
            self._independent_sampler.after_trial(study, trial, state, values)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _config(trial: FrozenTrial, search_space: Mapping[str, BaseDistribution]) -> dict[str, Any] | None:
        """The trial's values of the relative space as GEO values, or ``None`` if it lacks one (conditional) or
        holds one outside the distribution (the space changed)."""
        params = dict(trial.params)
        if trial.state == TrialState.RUNNING:
            chunks, i = [], 0
            while (chunk := trial.system_attrs.get(f"{_PENDING_KEY}:{i}")) is not None:
                chunks.append(chunk)
                i += 1
            params = {**(json.loads("".join(chunks)) if chunks else {}), **params}
        if not search_space.keys() <= params.keys():
            return None
        try:
            config = {name: to_geo(d, params[name]) for name, d in search_space.items()}
            if not all(d._contains(d.to_internal_repr(params[name])) for name, d in search_space.items()):
                return None
        except (TypeError, ValueError):
            return None
        return config

    @staticmethod
    def _value(trial: FrozenTrial, num_objectives: int) -> list[float] | None:
        """What the model is told: the values of a complete trial, a pruned trial's last intermediate value
        (single objective), ``None`` (a failure) otherwise."""
        if trial.state == TrialState.COMPLETE and trial.values is not None:
            return list(trial.values)
        if trial.state == TrialState.PRUNED and num_objectives == 1 and trial.intermediate_values:
            return [trial.intermediate_values[max(trial.intermediate_values)]]
        return None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)


__all__ = ["GeoSampler", "centre_of", "dimension_of", "from_geo", "to_geo"]
