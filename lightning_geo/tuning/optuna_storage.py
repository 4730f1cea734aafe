"""``OptunaStorage``: ``GeoTuner``'s trials in an Optuna storage (SQLite or any RDB URL, or a journal file).

``GeoTuner(..., storage="sqlite:///tuning/study.db")`` keeps the study in a real database instead of the JSON
lines file: ``optuna.load_study(study_name=..., storage=...)`` and ``optuna-dashboard`` open it as an ordinary
Optuna study (params with their distributions, values, intermediate values as learning curves, states). The
resume contract is the JSON file's: every trial is created ``RUNNING`` when it starts and set ``COMPLETE``,
``PRUNED`` or ``FAIL`` in one transaction when it ends; on resume, finished trials are replayed and trials
still ``RUNNING`` (the tuner died) are run again with the same number and config, into the same Optuna trial.

GEO's own fields ride along as trial user attributes (``geo:x``: the encoded config; ``geo:params``: the
config as JSON; ``geo:values``: a pruned trial's last report; ``geo:seconds``, ``geo:error``), and the
study's space, monitor and mode as the study user attribute ``geo:header``, which a resume checks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState as OptunaState

from lightning_geo.tuning.space import Categorical, Float, Int, SearchSpace
from lightning_geo.tuning.storage import StoredStudy
from lightning_geo.tuning.trial import TrialRecord, TrialState

_STATES = {TrialState.COMPLETE: OptunaState.COMPLETE, TrialState.PRUNED: OptunaState.PRUNED,
           TrialState.FAILED: OptunaState.FAIL}
_OPTUNA_CHOICE = (type(None), bool, int, float, str)


def is_optuna_storage(storage: Any) -> bool:
    """Whether ``storage`` names an Optuna storage: an RDB URL (``sqlite:///...``, ``postgresql://...``) or an
    ``optuna.storages.BaseStorage`` instance (e.g. a ``JournalStorage`` on a shared file system)."""
    if isinstance(storage, str):
        return "://" in storage
    return type(storage).__module__.startswith("optuna.")


def _distribution(dim: Float | Int | Categorical) -> BaseDistribution | None:
    """The Optuna distribution of a GEO dimension (``None`` for categories Optuna cannot store, e.g. tuples)."""
    if isinstance(dim, Categorical):
        if all(isinstance(c, _OPTUNA_CHOICE) for c in dim.choices):
            return CategoricalDistribution(list(dim.choices))
        return None
    if isinstance(dim, Int):
        return IntDistribution(dim.low, dim.high, log=dim.log)
    return FloatDistribution(dim.low, dim.high, log=dim.log)


class OptunaStorage:
    """A ``GeoTuner`` study kept as an Optuna study.

    Args:
        storage: An Optuna storage URL (``"sqlite:///tuning/study.db"``) or ``optuna.storages.BaseStorage``
            (``JournalStorage(JournalFileBackend(path))`` for a shared file system without a database).
        study_name: The Optuna study's name.
        space: The tuner's search space (for the parameters' distributions).
        mode: ``"min"``/``"max"`` per monitored metric (the study's directions).

    One tuner process writes a study at a time (several processes would pick the same trial numbers).
    """

    def __init__(self, storage: str | Any, study_name: str, space: SearchSpace, mode: Sequence[str]) -> None:
        if not is_optuna_storage(storage):
            raise ValueError(f"storage={storage!r} must be an Optuna storage URL or optuna.storages instance")
        self.url = storage
        self.study_name = study_name
        self.space = space
        self.directions = ["minimize" if m == "min" else "maximize" for m in mode]
        self._study: optuna.Study | None = None
        self._trial_ids: dict[int, int] = {}  # GEO trial number -> Optuna trial id

    @property
    def path(self) -> str:
        """Where the study lives (for messages)."""
        return f"{self.url} (study {self.study_name!r})"

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (after :meth:`open`)."""
        assert self._study is not None, "open() the storage first"
        return self._study

    def open(self, header: dict[str, Any]) -> StoredStudy:
        """Create the study with ``header``, or check that an existing one is the same study and read it.

        Raises:
            ValueError: if the existing study was made for a different space, monitor or mode.
        """
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._study = optuna.create_study(storage=self.url, study_name=self.study_name,
                                          directions=self.directions, load_if_exists=True)
        header = json.loads(json.dumps(header, default=repr))
        stored = self._study.user_attrs.get("geo:header")
        if stored is None:
            self._study.set_user_attr("geo:header", header)
        else:
            for key in ("space", "monitor", "mode"):
                if stored.get(key) != header.get(key):
                    raise ValueError(f"{self.path} holds a study with a different {key} ({stored.get(key)!r}, now "
                                     f"{header.get(key)!r}); use another study name or storage")
        finished, unfinished = [], []
        for trial in self._study.get_trials(deepcopy=False):
            if "geo:x" not in trial.user_attrs:
                continue  # not a GeoTuner trial (e.g. added by hand): not ours to replay
            self._trial_ids[trial.number] = trial._trial_id
            params, x = json.loads(trial.user_attrs["geo:params"]), list(trial.user_attrs["geo:x"])
            if trial.state == OptunaState.RUNNING:
                unfinished.append((trial.number, params, x))
            elif trial.state in (OptunaState.COMPLETE, OptunaState.PRUNED, OptunaState.FAIL):
                finished.append((self._record(trial, params), x))
        return StoredStudy(finished, unfinished)

    def start(self, number: int, params: dict[str, Any], x: list[float]) -> None:
        """Create trial ``number`` as a ``RUNNING`` Optuna trial with its params (a re-run reuses its trial)."""
        if number in self._trial_ids:
            return
        storage = self.study._storage
        trial_id = storage.create_new_trial(self.study._study_id)
        created = storage.get_trial_number_from_id(trial_id)
        if created != number:
            raise RuntimeError(f"{self.path}: Optuna numbered the new trial {created}, GeoTuner {number}: another "
                               "process is writing this study; run one GeoTuner per study")
        self._trial_ids[number] = trial_id
        for name, dim in self.space.dimensions.items():
            distribution = _distribution(dim)
            if name in params and distribution is not None:
                storage.set_trial_param(trial_id, name, distribution.to_internal_repr(params[name]), distribution)
        storage.set_trial_user_attr(trial_id, "geo:params", json.dumps(params, default=repr))
        storage.set_trial_user_attr(trial_id, "geo:x", list(x))

    def finish(self, record: TrialRecord, x: list[float]) -> None:
        """Write a finished trial's reports, fields and state (the state last: it is what resume trusts)."""
        storage = self.study._storage
        trial_id = self._trial_ids[record.number]
        for step, value in record.reports:
            if math.isfinite(value):
                storage.set_trial_intermediate_value(trial_id, step, value)
        storage.set_trial_user_attr(trial_id, "geo:seconds", record.seconds)
        storage.set_trial_user_attr(trial_id, "geo:error", record.error)
        storage.set_trial_user_attr(trial_id, "geo:values", None if record.values is None else list(record.values))
        state = _STATES[record.state]  # a COMPLETE record always has values (run_trial makes NaN a FAILED one)
        storage.set_trial_state_values(trial_id, state, list(record.values) if state == OptunaState.COMPLETE else None)

    @staticmethod
    def _record(trial: optuna.trial.FrozenTrial, params: dict[str, Any]) -> TrialRecord:
        values = trial.user_attrs.get("geo:values")
        state = {OptunaState.COMPLETE: TrialState.COMPLETE, OptunaState.PRUNED: TrialState.PRUNED}.get(
            trial.state, TrialState.FAILED)
        return TrialRecord(
            number=trial.number,
            params=params,
            state=state,
            values=None if values is None else tuple(float(v) for v in values),
            reports=sorted((int(s), float(v)) for s, v in trial.intermediate_values.items()),
            seconds=float(trial.user_attrs.get("geo:seconds") or 0.0),
            error=trial.user_attrs.get("geo:error"),
        )
