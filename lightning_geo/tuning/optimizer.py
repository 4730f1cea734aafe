"""``BayesianOptimizer``: ask/tell Bayesian optimisation with BoTorch.

The method, step by step (the same recipe as Ax's default, with HEBO's robustness to bad trials):

1. Initial design: the centre of the space, then scrambled Sobol points, ``num_initial`` in all (default
   ``min(10, max(5, d + 1))``; they count against the budget).
2. Then, per ``ask``: a GP (``surrogate``) is fitted in double precision on the
   normalised inputs and the warped (mean of a robust, bad-tail-compressed scale and a rank scale),
   standardised outcomes; failed trials are imputed at the worst value seen, so the model steers away from
   where they failed.
3. The acquisition is qLogNoisyExpectedImprovement (Ament et al. 2023; noisy-objective safe, as a training
   run's validation loss is), or qLogNoisyExpectedHypervolumeImprovement with several objectives. Outcome
   constraints told with the results (``tell(..., constraints=...)``, feasible when <= 0) are modelled by the
   same GP as extra outputs and weight the acquisition by the probability of feasibility. It is
   maximised over candidates: 1024 Sobol points, perturbations of the best trials, then a finer local pass
   around the best candidates; integers and categories are always on their grid, constraints and already
   tried or pending configs are excluded. With one objective and no constraints the winner is then polished
   by gradient ascent (L-BFGS-B, categories held) from it and from the best trials, on the analytic LogEI
   (``log_expected_improvement``; the MC acquisition where other points are
   pending), snapped to the grid, and kept where the acquisition says it is better: the candidate search alone
   lands a few percent short of the acquisition's peak in continuous dimensions, which on smooth 5-6-d problems
   cost 10-35 points of benchmark score.
4. ``ask(n)`` picks ``n`` points greedily, each one fantasised as pending for the next (q-batch). Trials
   asked but not yet told are pending for later asks too, so parallel workers get distinct points.

Every ask is seeded from ``(seed, trials told, trials pending)``: the same sequence of tells gives the same
asks.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast, overload

import torch

from lightning_geo.tuning.botorch_compile import skip_fused_kernel_compile
from lightning_geo.tuning.space import Config, SearchSpace
from lightning_geo.tuning.surrogate import (
    condition_surrogate,
    fit_surrogate,
    log_expected_improvement,
    mean_sensitivity,
    outcome_warp,
)

Mode = Literal["min", "max"]
FIT_ITERATIONS = 100  # L-BFGS-B iterations of a GP fit (warm-started from the previous ask's hyperparameters)
# From this many trials on, fits are bounded: below it every ask refits in full (a few tenths of a second, and
# early hyperparameters move a lot: capping them there lost score on a smooth 4-d test function); above it the
# uncapped fit was 85% of an ask at 200 trials (1.9 of 2.2 s, 117 likelihood evaluations).
BOUNDED_FIT_FROM = 40
WARM_FIT_ITERATIONS = 20  # bounded: iterations of a warm-started fit; one more trial moves the optimum little
# bounded: the hyperparameters are re-optimised once the trials have grown by this fraction since the last fit
# (every 5th ask at 50 trials, every 20th at 200); in between the GP conditions on the new trials with the last
# fit's hyperparameters
REFIT_GROWTH = 0.1
# past this many trials the hyperparameters are fitted on a subset of this size (the model still conditions on
# every trial): the fit's cost grows with n^3 and was 2.9 of 4.1 s per ask at 500 trials even when capped
FIT_SUBSET = 200
# single objective: the noisy EI's baseline is the 32 trials with the best posterior mean (at 200 trials its joint
# posterior over every trial was 85% of an ask, 1.2 of 1.4 s; scoring candidates with the analytic log EI instead,
# 10x cheaper, lost 20 points of benchmark score on mixed_hp and 7 on ackley5_int)
NOISY_BASELINE = 32
POLISH_STARTS = 3  # gradient polish starts: the candidate search's winner and the best trials
POLISH_ITERATIONS = 50  # L-BFGS-B iterations per polish start


class TuningError(RuntimeError):
    """The optimiser cannot go on (e.g. no feasible config left to propose)."""


@dataclass(frozen=True)
class Observation:
    """A told result: the config, its objective values (``None`` for a failed trial) and its outcome constraint
    values (``None``: unconstrained or unknown; a value > 0 violates a constraint)."""

    config: Config
    values: tuple[float, ...] | None
    constraints: tuple[float, ...] | None = None

    @property
    def failed(self) -> bool:
        """Whether the trial failed (no usable value)."""
        return self.values is None

    @property
    def feasible(self) -> bool:
        """Whether every known constraint value is <= 0 (a trial without constraint values counts as feasible)."""
        return self.constraints is None or all(c <= 0 for c in self.constraints)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the GP work on one intra-op thread: its matrices are tiny (trials x trials), and on a busy 2-core
    machine two spinning threads made each ask ~15x slower (4 s instead of 0.25 s at 15 trials)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _signs(modes: Sequence[str]) -> torch.Tensor:
    """``+1`` for each maximised objective and ``-1`` for each minimised one: values times signs are maximised."""
    return torch.tensor([-1.0 if m == "min" else 1.0 for m in modes], dtype=torch.double)


def pareto_mask(values: Sequence[Sequence[float]], modes: Sequence[str]) -> list[bool]:
    """For ``n`` rows of objective values (one column per objective, each in its own ``mode``): whether no other
    row is at least as good in every objective and better in one (exact repeats keep their first row)."""
    from botorch.utils.multi_objective.pareto import is_non_dominated

    Y = torch.tensor(values, dtype=torch.double).reshape(len(values), len(modes))
    return is_non_dominated(Y * _signs(modes), deduplicate=True).tolist()


def default_num_initial(d: int, budget: int | None = None) -> int:
    """Trials of the initial design for ``d`` searched parameters: ``min(10, max(5, d + 1))``, and with a
    ``budget`` (the study's trial count) at most half of it (but at least 2), so that a short study still
    gets trials from the GP (Ax sizes its start the same way)."""
    default = min(10, max(5, d + 1))
    return default if budget is None else min(default, max(2, budget // 2))


def _modes(mode: str | Sequence[str]) -> tuple[Mode, ...]:
    """``mode`` as a tuple of checked modes (any string comes in: this is where modes are validated)."""
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    if not modes or any(m not in ("min", "max") for m in modes):
        raise ValueError(f"mode={mode!r} must be 'min', 'max' or a sequence of them (one per objective)")
    return cast("tuple[Mode, ...]", modes)  # checked just above


def _metric_names(metric: str | Sequence[str], *, name: str = "monitor") -> tuple[str, ...]:
    """``metric`` as a tuple of names; ``name`` is what the caller calls that argument, for messages."""
    metrics = (metric,) if isinstance(metric, str) else tuple(metric) if isinstance(metric, Sequence) else ()
    if not metrics or not all(isinstance(m, str) and m for m in metrics):
        raise ValueError(f"{name}={metric!r} must be a metric name or a non-empty sequence of names")
    return metrics


def _objectives(metric: str | Sequence[str], mode: str | Sequence[str], *,
                name: str = "monitor") -> tuple[tuple[str, ...], tuple[Mode, ...]]:
    """The metric names and one checked mode per metric (one mode string: the same for every metric)."""
    metrics = _metric_names(metric, name=name)
    modes = _modes(mode)
    if isinstance(mode, str):
        modes = modes * len(metrics)
    if len(modes) != len(metrics):
        raise ValueError(
            f"mode={mode!r} has {len(modes)} entries but {name}={list(metrics)!r} has {len(metrics)}: give one entry "
            f"per monitored metric, e.g. mode={['min'] * len(metrics)!r}, or one string for all of them"
        )
    return metrics, modes


def _check_settings(*, seed: Any, num_initial: Any, num_candidates: Any) -> None:
    """The optimiser's settings, checked where they are given (``BayesianOptimizer``, ``GeoSearch``)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r} must be an integer")
    if num_initial is not None and (isinstance(num_initial, bool) or not isinstance(num_initial, int)
                                    or num_initial < 1):
        raise ValueError(f"num_initial={num_initial!r} must be a positive integer or None")
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 16:
        raise ValueError(f"num_candidates={num_candidates!r} must be an integer >= 16")


class BayesianOptimizer:
    """Bayesian optimisation of a black-box objective over a [`SearchSpace`][lightning_geo.tuning.SearchSpace], through
    ``ask``/``tell``.

    Args:
        space: The search space.
        seed: Seeds the initial design and every acquisition; the same tells give the same asks. Default 0.
        mode: ``"min"`` (default) or ``"max"``; a sequence such as ``("min", "min")`` makes a multi-objective
            study (values are then told as sequences of the same length).
        num_initial: Trials of the quasi-random initial design (centre + Sobol) before the GP takes over.
            Default ``min(10, max(5, d + 1))`` for ``d`` searched parameters.
        num_candidates: Sobol candidates the acquisition is evaluated on per ask (plus local ones).
            Default 1024.

    Raises:
        ValueError: for an unknown ``mode`` or a non-positive ``num_initial``/``num_candidates``.

    Example:
        ```python
        opt = BayesianOptimizer(SearchSpace({"x": Float(-5, 5)}), seed=0)
        for _ in range(20):
            params = opt.ask()
            opt.tell(params, (params["x"] - 1.0) ** 2)
        opt.best_params  # close to {"x": 1.0}
        ```
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        mode: Mode | Sequence[Mode] = "min",
        num_initial: int | None = None,
        num_candidates: int = 1024,
    ) -> None:
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
        _check_settings(seed=seed, num_initial=num_initial, num_candidates=num_candidates)
        self.space = space
        self.seed = seed
        self.modes = _modes(mode)
        self.num_initial = num_initial if num_initial is not None else default_num_initial(space.d)
        self.num_candidates = num_candidates
        self.observations: list[Observation] = []
        self._pending: dict[tuple[float, ...], Config] = {}  # SearchSpace.key -> config
        self._warm_start: dict[str, torch.Tensor] | None = None  # hyperparameters of the last fit
        self._fitted_on = 0  # trials that fit saw
        self._pending_elsewhere = 0
        self._model: Any = None
        self.ask_seconds: list[float] = []  # wall time of every ask, for latency reports

    # ------------------------------------------------------------------ public API
    @property
    def num_objectives(self) -> int:
        """How many values each trial reports."""
        return len(self.modes)

    @property
    def pending(self) -> list[Config]:
        """Configs asked for and not yet told."""
        return list(self._pending.values())

    @overload
    def ask(self, n: None = None) -> Config: ...

    @overload
    def ask(self, n: int) -> list[Config]: ...

    @overload
    def ask(self, n: int | None) -> Config | list[Config]: ...

    def ask(self, n: int | None = None) -> Config | list[Config]:
        """Propose the next config, or a batch of ``n`` distinct configs to evaluate in parallel.

        Returns:
            One config (``ask()``) or a list of ``n`` configs (``ask(n)``); each includes the fixed values.
        """
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n={n!r} must be a positive integer or None")
        started = time.perf_counter()
        with torch.random.fork_rng(), _one_thread():
            torch.manual_seed(self._ask_seed())
            rows = self._propose(1 if n is None else n)
        configs = self.space.decode(rows)
        for config in configs:
            self._pending[self.space.key(config)] = config
        self.ask_seconds.append(time.perf_counter() - started)
        return configs[0] if n is None else configs

    def tell(
        self,
        params: Mapping[str, Any],
        value: float | Sequence[float] | None,
        *,
        constraints: Sequence[float] | None = None,
    ) -> None:
        """Record the result of a config.

        Args:
            params: The config, as returned by [`ask`][lightning_geo.tuning.BayesianOptimizer.ask] (or any config of the
                space).
            value: The objective (a sequence of them in multi-objective mode). ``None``, NaN or infinity marks
                a failed trial: it is kept, and the model treats it as the worst result seen so far.
            constraints: Outcome constraint values measured with the result (e.g. memory - budget); a config is
                feasible when all are <= 0. Tell the same number with every constrained result; ``None`` for
                an unconstrained study (or a trial whose constraints are unknown: imputed as the worst seen).

        Raises:
            ValueError: if ``params`` is not a config of the space, ``value`` has the wrong length or a
                constraint value is not a finite number.
        """
        config = dict(params)
        key = self.space.key(config)  # validates the config
        values = self._check_value(value)
        checked = None
        if constraints is not None:
            checked = tuple(float(c) for c in constraints)
            if not all(math.isfinite(c) for c in checked):
                raise ValueError(f"constraints={constraints!r} must be finite numbers (<= 0 means feasible)")
        self._pending.pop(key, None)
        self.observations.append(Observation({**self.space.fixed, **config}, values, checked))

    def mark_pending(self, params: Mapping[str, Any]) -> None:
        """Treat ``params`` as being evaluated (e.g. a trial re-run after a crash), so asks avoid it."""
        self._pending[self.space.key(params)] = dict(params)

    def forget_pending(self, params: Mapping[str, Any]) -> None:
        """Drop a config asked for that will never be told (e.g. a trial that was abandoned)."""
        self._pending.pop(self.space.key(params), None)

    def set_pending_elsewhere(self, count: int) -> None:
        """Say that ``count`` other workers are asking right now, their configs not known yet: the next asks
        skip that many points of the initial design and are seeded differently, so that two workers that ask at
        the same moment from the same history do not propose the same config. Default 0.

        Raises:
            ValueError: for a negative ``count``.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count={count!r} must be a non-negative integer")
        self._pending_elsewhere = count

    @property
    def best(self) -> Observation | None:
        """The best successful observation (single-objective studies), or ``None`` before the first success."""
        if self.num_objectives != 1:
            raise TuningError("best is for single-objective studies; use pareto_front() with several objectives")
        done = [o for o in self.observations if not o.failed and o.feasible]
        if not done:
            return None
        sign = -1.0 if self.modes[0] == "min" else 1.0
        return max(done, key=lambda o: sign * o.values[0])  # type: ignore[index]

    @property
    def best_params(self) -> Config | None:
        """The config of [`best`][lightning_geo.tuning.BayesianOptimizer.best] (``None`` before the first success)."""
        best = self.best
        return None if best is None else dict(best.config)

    def pareto_front(self) -> list[Observation]:
        """The non-dominated successful feasible observations (every objective in its own ``mode``), in telling
        order."""
        done = [o for o in self.observations if not o.failed and o.feasible]
        if not done:
            return []
        mask = pareto_mask([o.values for o in done], self.modes)  # type: ignore[misc]
        return [o for o, keep in zip(done, mask, strict=True) if keep]

    def importance(self) -> dict[str, float]:
        """Importance of each searched parameter: how far the GP's mean moves when that parameter is swept over
        its range with the others held (averaged over 64 Sobol points of the space); shares that sum to 1.

        Fits the model on the current observations if no ask has done so since the last tell.

        Raises:
            TuningError: with fewer than two successful observations.
        """
        with torch.random.fork_rng(), _one_thread():
            torch.manual_seed(self.seed)
            if self._model is None or self._model.train_inputs[0].shape[-2] != len(self.observations):
                data = self._training_data()
                if data is None:
                    raise TuningError("importance needs at least two successful trials")
                self._fit(*data)
            engine = torch.quasirandom.SobolEngine(self.space.d, scramble=True, seed=self.seed)
            background = self._from_raw(engine.draw(64, dtype=torch.double))
            grids = [
                torch.arange(k, dtype=torch.double) if k else torch.linspace(0, 1, 11, dtype=torch.double)
                for k in self.space.num_categories
            ]
            shares = mean_sensitivity(self._model, background, grids)
        return dict(zip(self.space.names, shares.tolist(), strict=True))

    # ------------------------------------------------------------------ internals
    def _check_value(self, value: float | Sequence[float] | None) -> tuple[float, ...] | None:
        if value is None:
            return None
        values = (value,) if isinstance(value, int | float) or torch.is_tensor(value) else tuple(value)
        if len(values) != self.num_objectives:
            raise ValueError(f"value={value!r}: expected {self.num_objectives} objective value(s), one per mode")
        floats = tuple(float(v) for v in values)
        return floats if all(math.isfinite(v) for v in floats) else None

    def _ask_seed(self) -> int:
        pending = len(self._pending) * 104_729 + self._pending_elsewhere * 15_485_863
        return (self.seed * 1_000_003 + len(self.observations) * 7919 + pending) % (2**63)

    def _maximisation_values(self, observations: Sequence[Observation]) -> torch.Tensor:
        return torch.tensor([o.values for o in observations], dtype=torch.double) * _signs(self.modes)

    @property
    def num_constraints(self) -> int:
        """How many outcome constraint values the results were told with (0: unconstrained)."""
        return max((len(o.constraints) for o in self.observations if o.constraints is not None), default=0)

    def _training_data(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``n x d`` inputs and ``n x (m + c)`` outcomes to fit: ``m`` objectives (maximisation form, failures
        imputed at the worst, warped) then ``c`` raw constraint values (unknown ones imputed at the worst)."""
        done = [o for o in self.observations if not o.failed]
        if len(done) < 2:
            return None
        X = self.space.encode([o.config for o in self.observations])
        Y_done = self._maximisation_values(done)
        worst = Y_done.min(dim=0).values
        Y = torch.stack(
            [worst if o.failed else self._maximisation_values([o])[0] for o in self.observations]
        )
        if self.num_objectives == 1:
            Y = outcome_warp(Y)
        c = self.num_constraints
        if c:
            known = [o.constraints for o in self.observations if o.constraints is not None and len(o.constraints) == c]
            highest = torch.tensor(known, dtype=torch.double).amax(dim=0)
            C = torch.stack([
                torch.tensor(o.constraints, dtype=torch.double)
                if o.constraints is not None and len(o.constraints) == c and not o.failed else highest
                for o in self.observations
            ])
            Y = torch.cat([Y, C], dim=-1)
        return X, Y

    def _constraint_callables(self) -> list[Any] | None:
        """BoTorch outcome constraints on the model's extra outputs (feasible where the callable is <= 0)."""
        m = self.num_objectives
        return [lambda Z, i=m + j: Z[..., i] for j in range(self.num_constraints)] or None

    def _fit(self, X: torch.Tensor, Y: torch.Tensor) -> Any:
        n = X.shape[0]
        bounded = self._warm_start is not None and n >= BOUNDED_FIT_FROM
        if bounded and self._fitted_on <= n < self._fitted_on * (1 + REFIT_GROWTH):
            assert self._warm_start is not None  # bounded: a previous fit left its hyperparameters
            self._model = condition_surrogate(X, Y, cat_dims=self.space.cat_dims, hyperparameters=self._warm_start)
            return self._model
        iterations = WARM_FIT_ITERATIONS if bounded else FIT_ITERATIONS
        self._model = fit_surrogate(X, Y, cat_dims=self.space.cat_dims, warm_start=self._warm_start,
                                    max_iterations=iterations, max_fit_points=FIT_SUBSET)
        self._warm_start = {k: v.detach().clone() for k, v in self._model.state_dict().items()}
        self._fitted_on = n
        return self._model

    def _seen_keys(self) -> set[tuple[float, ...]]:
        rows = self.space.encode([o.config for o in self.observations] + list(self._pending.values()))
        return {self.space.row_key(row) for row in rows.tolist()}

    def _propose(self, q: int) -> torch.Tensor:
        skip = self._pending_elsewhere
        asked = len(self.observations) + len(self._pending) + skip
        data = self._training_data()
        if asked < self.num_initial or data is None:
            initial = self._initial_design(q + skip)[skip:]
            if data is None or asked + q <= self.num_initial:
                return initial
            # the batch straddles the end of the initial design: the rest comes from the model
            take = max(0, self.num_initial - asked)
            return torch.cat([initial[:take], self._acquire(q - take, data, initial[:take])])
        return self._acquire(q, data, torch.empty(0, self.space.d, dtype=torch.double))

    def _initial_design(self, q: int) -> torch.Tensor:
        """The next ``q`` points of the design sequence (the centre, then scrambled Sobol points) that have not
        been asked or told yet, skipping infeasible ones and points that snap onto an earlier one."""
        engine = torch.quasirandom.SobolEngine(self.space.d, scramble=True, seed=self.seed)
        seen = self._seen_keys()
        rows: list[torch.Tensor] = []
        raw = torch.full((1, self.space.d), 0.5, dtype=torch.double)  # the centre
        for _ in range(200):
            for row in self._from_raw(raw):
                key = self.space.row_key(row.tolist())
                if key in seen or not self.space.feasible(self.space.decode(row)[0]):
                    continue
                seen.add(key)
                rows.append(row)
                if len(rows) == q:
                    return torch.stack(rows)
            raw = engine.draw(64, dtype=torch.double)
        raise TuningError("could not find new feasible configs: the space or its constraints leave too few points")

    def _from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Map unit-cube rows to encoded rows (category columns: ``floor(u * k)``), snapped to the grid."""
        X = raw.clone()
        for i, k in enumerate(self.space.num_categories):
            if k:
                X[:, i] = torch.floor(raw[:, i] * k).clamp(max=k - 1)
        return self.space.snap(X)

    def _acquisition(self, model: Any, X: torch.Tensor, pending: torch.Tensor) -> Any:
        from botorch.acquisition.objective import GenericMCObjective
        from botorch.sampling import SobolQMCNormalSampler

        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([128]), seed=int(torch.randint(2**31, ()).item()))
        X_pending = pending if len(pending) else None
        constraints = self._constraint_callables()
        m = self.num_objectives
        if m == 1:
            from botorch.acquisition.logei import qLogNoisyExpectedImprovement

            def first_output(Z: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
                return Z[..., 0]

            objective = GenericMCObjective(first_output) if constraints else None
            baseline = X if constraints else self._noisy_baseline(model, X)
            return qLogNoisyExpectedImprovement(
                model, X_baseline=baseline, sampler=sampler, prune_baseline=True, X_pending=X_pending,
                objective=objective, constraints=constraints,
            )
        from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
        from botorch.acquisition.multi_objective.objective import IdentityMCMultiOutputObjective

        skip_fused_kernel_compile()
        done = [o for o in self.observations if not o.failed and o.feasible]
        done = done or [o for o in self.observations if not o.failed]
        Y_done = self._maximisation_values(done)
        low, high = Y_done.min(dim=0).values, Y_done.max(dim=0).values
        ref_point = low - 0.1 * (high - low).clamp(min=1e-9)
        mo_objective = IdentityMCMultiOutputObjective(outcomes=list(range(m))) if constraints else None
        return qLogNoisyExpectedHypervolumeImprovement(
            model, ref_point=ref_point.tolist(), X_baseline=X, sampler=sampler, prune_baseline=True,
            X_pending=X_pending, objective=mo_objective, constraints=constraints,
        )

    @staticmethod
    def _noisy_baseline(model: Any, X: torch.Tensor) -> torch.Tensor:
        """The trials the noisy EI weighs as the incumbent: all of them, or past ``NOISY_BASELINE`` the ones
        whose posterior mean (first outcome) is highest."""
        if len(X) <= NOISY_BASELINE:
            return X
        with torch.no_grad():
            mean = model.posterior(X).mean[..., 0]
        return X[torch.topk(mean, NOISY_BASELINE).indices]

    def _candidates(self, centres: torch.Tensor, sigmas: Sequence[float], per_centre: int, num_global: int,
                    seen: set[tuple[float, ...]]) -> torch.Tensor:
        """Global Sobol candidates and Gaussian perturbations of ``centres``, snapped to the grid, without the
        configs in ``seen``, repeats and infeasible ones."""
        d = self.space.d
        parts = []
        if num_global:
            engine = torch.quasirandom.SobolEngine(d, scramble=True, seed=int(torch.randint(2**31, ()).item()))
            parts.append(self._from_raw(engine.draw(num_global, dtype=torch.double)))
        is_cat = torch.tensor([k > 0 for k in self.space.num_categories])
        for centre in centres:
            noise = torch.randn(per_centre, d, dtype=torch.double)
            scale = torch.tensor(sigmas, dtype=torch.double)[torch.randint(len(sigmas), (per_centre, 1))]
            local = centre + noise * scale
            if is_cat.any():
                flip = torch.rand(per_centre, d) < 1.0 / d
                random_cat = self._from_raw(torch.rand(per_centre, d, dtype=torch.double))
                local = torch.where(is_cat & flip, random_cat, torch.where(is_cat, centre.expand_as(local), local))
            parts.append(self.space.snap(local))
        return self._fresh(torch.cat(parts), seen)

    def _fresh(self, C: torch.Tensor, seen: set[tuple[float, ...]]) -> torch.Tensor:
        """The rows of snapped ``C`` that are new (not in ``seen``, not repeated) and feasible, in order."""
        keep = []
        unique: set[tuple[float, ...]] = set()
        for i, row in enumerate(C.tolist()):
            key = self.space.row_key(row)
            if key in seen or key in unique:
                continue
            unique.add(key)
            keep.append(i)
        C = C[keep]
        if self.space.constraints and len(C):
            feasible = [self.space.feasible(c) for c in self.space.decode(C)]
            C = C[torch.tensor(feasible, dtype=torch.bool)]
        return C

    @staticmethod
    def _evaluate(acq: Any, C: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([acq(chunk.unsqueeze(1)) for chunk in C.split(256)])

    def _acquire(self, q: int, data: tuple[torch.Tensor, torch.Tensor], chosen: torch.Tensor) -> torch.Tensor:
        X, Y = data
        model = self._fit(X, Y)
        m = self.num_objectives
        infeasible = (Y[:, m:] > 0).any(dim=-1)  # local search starts from the best feasible trials first
        if m == 1:
            top = X[torch.topk(Y[:, 0] - 1e6 * infeasible, min(5, len(Y))).indices]
        else:
            front = self._pareto_rows(Y[~infeasible, :m]) if (~infeasible).any() else self._pareto_rows(Y[:, :m])
            top = (X[~infeasible] if (~infeasible).any() else X)[front][:5]
        rows: list[torch.Tensor] = [row for row in chosen]
        seen = self._seen_keys()  # told and pending configs; fixed during this ask (rows chosen now: _exclude)
        pending_base = self.space.encode(list(self._pending.values())) if self._pending else chosen[:0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numerical warnings of the MC acquisition on tiny data
            for _ in range(q):
                pending = torch.cat([pending_base, *(r.unsqueeze(0) for r in rows)]) if rows else pending_base
                acq = self._acquisition(model, X, pending)
                C = self._candidates(top, (0.02, 0.05, 0.15), 64, self.num_candidates, seen)
                C = self._exclude(C, rows)
                if not len(C):
                    raise TuningError("no new feasible configs left to propose in the search space")
                values = self._evaluate(acq, C)
                best = C[torch.topk(values, min(3, len(C))).indices]
                fine = self._exclude(self._candidates(best, (0.005, 0.02), 128, 0, seen), rows)
                if len(fine):
                    C, values = torch.cat([C, fine]), torch.cat([values, self._evaluate(acq, fine)])
                winner, value = C[int(torch.argmax(values))], values.max()
                if m == 1 and not self.num_constraints:
                    winner = self._polish(acq, model, X, Y, winner, value, pending, seen, rows)
                rows.append(winner)
        return torch.stack(rows[len(chosen):])

    def _polish(self, acq: Any, model: Any, X: torch.Tensor, Y: torch.Tensor, winner: torch.Tensor,
                value: torch.Tensor, pending: torch.Tensor, seen: set[tuple[float, ...]],
                rows: list[torch.Tensor]) -> torch.Tensor:
        """Gradient ascent of the acquisition over the continuous columns (categories held) from ``winner`` and the
        best trials, all starts in one batched L-BFGS-B run; the best snapped, new, feasible result if ``acq``
        rates it above ``winner``'s ``value``."""
        from scipy.optimize import minimize

        held = set(self.space.cat_dims)
        free = [i for i in range(self.space.d) if i not in held]
        if not free:
            return winner
        # the analytic EI cannot see pending points: with some, climb the MC acquisition, which does
        climb = (lambda Z: acq(Z.unsqueeze(1))) if len(pending) else log_expected_improvement(model)
        starts = torch.cat([winner.unsqueeze(0), X[torch.topk(Y[:, 0], min(POLISH_STARTS - 1, len(Y))).indices]])
        shape = (len(starts), len(free))

        def negative_acquisition(flat: Any) -> tuple[float, Any]:
            moved = torch.tensor(flat, dtype=torch.double).reshape(shape).requires_grad_(True)
            full = starts.clone()
            full[:, free] = moved
            loss = -climb(full).sum()  # the starts are independent: one sum, one backward
            (gradient,) = torch.autograd.grad(loss, moved)
            return float(loss), gradient.reshape(-1).numpy()

        try:
            result = minimize(negative_acquisition, starts[:, free].reshape(-1).numpy(), jac=True, method="L-BFGS-B",
                              bounds=[(0.0, 1.0)] * (shape[0] * shape[1]), options={"maxiter": POLISH_ITERATIONS})
        except (RuntimeError, ValueError):  # a numerically broken acquisition: keep the candidate search's winner
            return winner
        climbed = starts.clone()
        climbed[:, free] = torch.tensor(result.x, dtype=torch.double).reshape(shape)
        C = self._fresh(self._exclude(self.space.snap(climbed), rows), seen)
        if not len(C):
            return winner
        values = self._evaluate(acq, C)
        return C[int(torch.argmax(values))] if values.max() > value else winner

    @staticmethod
    def _exclude(C: torch.Tensor, rows: list[torch.Tensor]) -> torch.Tensor:
        if not rows or not len(C):
            return C
        taken = torch.stack(rows)
        same = (C.unsqueeze(1) - taken.unsqueeze(0)).abs().amax(dim=-1) < 1e-9
        return C[~same.any(dim=1)]

    @staticmethod
    def _pareto_rows(Y: torch.Tensor) -> torch.Tensor:
        from botorch.utils.multi_objective.pareto import is_non_dominated

        return torch.nonzero(is_non_dominated(Y)).reshape(-1)
