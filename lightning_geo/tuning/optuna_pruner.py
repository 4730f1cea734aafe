"""``GeoCurvePruner``: GEO's learning-curve pruning rule as an Optuna pruner.

The rule of [`CurvePruner`][lightning_geo.tuning.CurvePruner]: forecast a running trial's final value from how much
the study's finished trials still improved after the same step, and prune only when even an optimistic
forecast cannot beat the best final value so far. It prunes later than Optuna's ``MedianPruner`` and kills
fewer trials that would have won. Works with anything that calls ``trial.report``/``trial.should_prune``,
e.g. optuna-integration's ``PyTorchLightningPruningCallback``, and as the pruner of a ``GeoTuner`` study on an
Optuna storage (``GeoTuner(pruner=GeoCurvePruner(), storage="sqlite:///tuning/study.db")``).
"""

from __future__ import annotations

from optuna.pruners import BasePruner
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lightning_geo.tuning.pruners import CurvePruner, FinishedCurve


class GeoCurvePruner(BasePruner):
    """Prune an Optuna trial whose optimistic learning-curve forecast cannot beat the best final value.

    Args:
        optimism: Quantile in ``(0, 1]`` of the finished trials' later improvements used for the forecast;
            higher prunes less. Default 0.9.
        n_startup_trials: Finished (complete or pruned) trials needed before anything is pruned. Default 5.
        n_warmup_steps: Reports at a step below this are never pruned. Default 0.

    Raises:
        TypeError: for an ``optimism`` that is not a number.
        ValueError: for ``optimism`` outside ``(0, 1]``, a non-positive ``n_startup_trials`` or a negative
            ``n_warmup_steps``.

    Example:
        ```python
        study = optuna.create_study(sampler=GeoSampler(seed=0), pruner=GeoCurvePruner(n_startup_trials=5))
        ```
    """

    def __init__(self, *, optimism: float = 0.9, n_startup_trials: int = 5, n_warmup_steps: int = 0) -> None:
        self.rule = CurvePruner(optimism=optimism, n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)

    @property
    def n_startup_trials(self) -> int:
        """Finished trials needed before anything is pruned."""
        return self.rule.n_startup_trials

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """Whether ``trial`` (running, with its latest report) should stop; never for multi-objective studies."""
        if len(study.directions) != 1 or not trial.intermediate_values:
            return False
        finished = []
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            reports = tuple(sorted(other.intermediate_values.items()))
            last = reports[-1][1] if reports else None  # a pruned trial ends at its last report, as in GeoTuner
            final = other.value if other.state == TrialState.COMPLETE else last
            finished.append(FinishedCurve(reports, final))
        mode = "min" if study.direction == StudyDirection.MINIMIZE else "max"
        return self.rule.should_prune(sorted(trial.intermediate_values.items()), finished, mode)
