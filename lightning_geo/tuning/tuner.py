"""``GeoTuner``: Bayesian hyperparameter search over Lightning runs, with pruning, parallel trials and resume."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_geo.tuning.executors import DIVERGED, TrainFn, TrialExecutor, make_executor
from lightning_geo.tuning.optimizer import (
    BayesianOptimizer,
    Mode,
    TuningError,
    _objectives,
    default_num_initial,
    pareto_mask,
)
from lightning_geo.tuning.pruners import Pruner, PruningRule, make_pruner
from lightning_geo.tuning.reporter import MONITOR_MISSING
from lightning_geo.tuning.space import Categorical, Config, SearchSpace, as_space
from lightning_geo.tuning.storage import HEARTBEAT_S, JsonlStorage, check_folder, check_heartbeat_s, make_folder
from lightning_geo.tuning.study_log import StudyWriter, plot_study, progress_line, results_table
from lightning_geo.tuning.trial import Trial, TrialRecord, TrialState
from lightning_geo.utils.checks import check_bool

if TYPE_CHECKING:
    from optuna.pruners import BasePruner

    from lightning_geo.tuning.optuna_storage import OptunaStorage

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_URL_WITHOUT_SLASHES = re.compile(r"^(sqlite|postgres|postgresql|mysql|mariadb|oracle|mssql)(\+\w+)?:", re.IGNORECASE)


class GeoTuner:
    """Tune a Lightning training run with Bayesian optimisation (BoTorch), pruning bad trials early.

    ``search(train_fn)`` calls ``train_fn(config, trial)`` for up to ``max_trials`` configs. ``train_fn`` builds
    a Trainer and a module from ``config`` and fits; adding ``trial.reporter()`` to the Trainer's callbacks
    reports the monitored metric after each validation and lets the pruner stop a bad trial, and
    ``trial.logger()`` puts the run in the study's TensorBoard folder.

    Every finished trial is written at once to ``storage`` (JSON lines, fsynced): run the same script again
    after a crash or a kill and the study continues where it stopped, without losing or repeating a finished
    trial; trials that were running are run again with the same config. On an Optuna storage, several processes
    (the same script on several machines) can run one study together: each sees the others' trials, and they stop
    together at ``max_trials`` finished trials.

    Args:
        space: What to search over: a [`SearchSpace`][lightning_geo.tuning.SearchSpace], or the mapping one is built
            from (``{"lr": Float(1e-4, 1e-1, log=True), "epochs": 3}``).
        monitor: The metric to optimise, a key of ``trainer.callback_metrics`` (``"val_loss"`` by default); a
            sequence of names makes a multi-objective study (e.g. ``("val_loss", "step_time")``), whose result
            is a Pareto front; such trials are not pruned.
        mode: ``"min"`` (default) or ``"max"`` for every monitored metric, or a sequence of one per metric.
        max_trials: Trials in the study, failed and pruned ones included (resumed trials count, and so do those of
            other processes sharing an Optuna study). Default 20.
        n_parallel: Trials at once (needs ``executor="subprocess"`` or your own executor). Default 1.
        executor: ``"in_process"`` (default), ``"subprocess"`` (each trial in a fresh process, isolated from
            crashes and out-of-memory kills, one device each), or a
            [`TrialExecutor`][lightning_geo.tuning.TrialExecutor] (e.g. ``RayExecutor``: each trial a Ray task).
        devices: With ``executor="subprocess"``: a list of the ``CUDA_VISIBLE_DEVICES`` value of each parallel
            slot, e.g. ``[0, 1]`` (any other executor refuses it: in this process the trial's Trainer picks its
            devices, and an executor of yours places its trials itself).
        pruner: ``"median"`` (default), ``"curve"``, ``None`` (never prune) or a
            [`Pruner`][lightning_geo.tuning.Pruner]; on an Optuna ``storage``, also an Optuna pruner
            (``optuna.pruners.MedianPruner(n_startup_trials=5)``, ``GeoCurvePruner()``, any
            ``optuna.pruners.BasePruner``), which then decides on the Optuna study.
        log_dir: Root folder of the study's TensorBoard runs and storage; it must be a folder this process can
            write or create. Default ``"tuning"``.
        study_name: The study's folder under ``log_dir``: ``<log_dir>/<study_name>/``. Default ``"study"``.
        storage: The trial file (not a folder); default ``<log_dir>/<study_name>/trials.jsonl``. An Optuna storage URL
            (``"sqlite:///tuning/study.db"``) or ``optuna.storages`` instance (``JournalStorage`` for a shared file
            system) keeps the study as the Optuna study ``study_name`` there instead, which ``optuna.load_study``
            and ``optuna-dashboard`` open (needs ``pip install lightning-geo[optuna]``); same resume contract,
            and several processes may share that study.
        resume: Continue the study in an existing ``storage`` (default). With ``False``, an existing file with
            trials is an error, so a new study never mixes with an old one by accident.
        seed: Seeds the optimiser. Default 0.
        num_initial: Quasi-random trials before the GP takes over. Default ``min(10, max(5, d + 1))`` for ``d``
            searched parameters, but at most ``max_trials // 2`` (at least 2), so a short study still uses the
            GP. A study too small to fit the GP or to prune anything says so with one warning.
        max_consecutive_failures: Stop with [`TuningError`][lightning_geo.tuning.TuningError] when this many trials fail
            in a row (a bug in ``train_fn`` should not burn the whole budget). Default 5.
        verbose: Print one line per finished trial. Default ``True``.
        heartbeat_s: On an Optuna storage, seconds between two heartbeats this process writes to each trial it
            runs; a trial of a process on another machine whose last heartbeat is 10 of its beats old is taken for
            interrupted and run again by a process of the study. Default 30 (5 minutes to take over).

    Raises:
        ValueError: for a bad ``monitor``, ``mode``, trial count, ``executor``, ``pruner``, ``study_name``,
            ``storage`` or ``heartbeat_s``, or a ``log_dir`` this process cannot write in.
        TypeError: for a ``space`` that is neither a SearchSpace nor a mapping, ``devices`` that are not a list of
            device ids, a ``seed`` that is not an integer, or a ``resume``/``verbose`` that is not a bool.

    Example:
        ```python
        def train_fn(config, trial):
            model = MyModule(lr=config["lr"], layers=config["layers"])
            trainer = L.Trainer(max_epochs=3, callbacks=[trial.reporter()], logger=trial.logger())
            trainer.fit(model, datamodule)
            return trainer.callback_metrics["val_loss"]

        tuner = GeoTuner(SearchSpace({"lr": Float(1e-4, 1e-1, log=True), "layers": Int(1, 6)}), max_trials=30)
        best = tuner.search(train_fn)
        ```
    """

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        *,
        monitor: str | Sequence[str] = "val_loss",
        mode: Mode | Sequence[Mode] = "min",
        max_trials: int = 20,
        n_parallel: int = 1,
        executor: str | TrialExecutor = "in_process",
        devices: Sequence[int | str] | None = None,
        pruner: str | Pruner | BasePruner | None = "median",
        log_dir: str | Path = "tuning",
        study_name: str = "study",
        storage: str | Path | Any | None = None,
        resume: bool = True,
        seed: int = 0,
        num_initial: int | None = None,
        max_consecutive_failures: int = 5,
        verbose: bool = True,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        space = as_space(space)
        self.monitor, self.mode = _objectives(monitor, mode)
        for name, value in (("max_trials", max_trials), ("n_parallel", n_parallel),
                            ("max_consecutive_failures", max_consecutive_failures)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        check_bool("GeoTuner", "resume", resume)
        check_bool("GeoTuner", "verbose", verbose)
        if not isinstance(study_name, str) or not _NAME.match(study_name):
            raise ValueError(f"study_name={study_name!r} must be a folder name of letters, digits, '_', '.', '-'")
        self.space = space
        self.max_trials = max_trials
        self.executor = make_executor(executor, n_parallel, devices)
        if isinstance(executor, TrialExecutor) and n_parallel not in (1, executor.n_parallel):
            raise ValueError(
                f"n_parallel={n_parallel} differs from the executor's own n_parallel={executor.n_parallel}"
            )
        self.log_dir = log_dir
        self.study_dir = Path(log_dir) / study_name
        check_folder(self.study_dir, name="log_dir", value=log_dir)
        if isinstance(storage, str) and "://" not in storage and _URL_WITHOUT_SLASHES.match(storage):
            raise ValueError(f"storage={storage!r} looks like a database URL without '//' (it would be taken for a "
                             "file name); write it as 'sqlite:///path/to/study.db'")
        if (isinstance(storage, str) and "://" in storage) or not isinstance(storage, str | Path | None):
            try:
                from lightning_geo.tuning.optuna_storage import OptunaStorage
            except ImportError as err:
                raise ImportError(f"storage={storage!r} is an Optuna storage, which needs Optuna and SQLAlchemy "
                                  f"({err}): pip install lightning-geo[optuna], or leave storage= out for the JSON "
                                  "lines file") from err

            self.storage: JsonlStorage | OptunaStorage = OptunaStorage(storage, study_name, space, self.mode,
                                                                       heartbeat_s=heartbeat_s)
        else:
            check_heartbeat_s(heartbeat_s)
            if storage is not None and Path(storage).is_dir():
                raise ValueError(f"storage={str(storage)!r} is a folder; storage= is the trial file, e.g. "
                                 f"{str(Path(storage) / 'trials.jsonl')!r} (leave it out for "
                                 "<log_dir>/<study_name>/trials.jsonl)")
            if storage is not None:
                check_folder(Path(storage).parent, name="storage", value=storage)
            self.storage = JsonlStorage(storage if storage is not None else self.study_dir / "trials.jsonl")
        self.pruner = self._check_pruner(pruner)
        self.resume = resume
        self.max_consecutive_failures = max_consecutive_failures
        self.verbose = verbose
        self.seed = seed
        self.num_initial = num_initial if num_initial is not None else default_num_initial(space.d, max_trials)
        self.optimizer = BayesianOptimizer(space, seed=seed, mode=self.mode, num_initial=self.num_initial)
        self.trials: list[TrialRecord] = []
        self._warn_if_too_small()

    def _check_pruner(self, pruner: Any) -> Pruner | BasePruner | None:
        """A GEO pruner (built from its name), or an Optuna pruner where the study is an Optuna study."""
        optuna = sys.modules.get("optuna")  # an Optuna pruner comes with optuna imported
        if optuna is None or not isinstance(pruner, optuna.pruners.BasePruner):
            return make_pruner(pruner)
        if isinstance(self.storage, JsonlStorage):
            raise ValueError(
                f"pruner={pruner!r} is an Optuna pruner, which prunes through an Optuna study: pass an Optuna "
                "storage too (storage='sqlite:///tuning/study.db'), or use pruner='median' or 'curve'"
            )
        return pruner

    def _warn_if_too_small(self) -> None:
        """One warning when the study cannot use the GP or the pruner at all (e.g. a 4-trial smoke test)."""
        problems = []
        if self.max_trials <= self.num_initial:
            problems.append(f"all {self.max_trials} trials are quasi-random (num_initial={self.num_initial}): the GP "
                            "is never fitted")
        startup = getattr(self.pruner, "n_startup_trials", None)  # GEO's pruners and GeoCurvePruner say
        if startup is not None and len(self.monitor) == 1 and self.max_trials <= startup:
            problems.append(f"the pruner waits for {startup} finished trials (n_startup_trials), so no trial is "
                            "ever pruned")
        if problems:
            warnings.warn(f"GeoTuner: max_trials={self.max_trials} is too small: " + "; ".join(problems) + ".",
                          UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ results
    @property
    def best_trial(self) -> TrialRecord | None:
        """The best completed trial by the first monitored metric (``None`` before one completes)."""
        done = [t for t in self.trials if t.state is TrialState.COMPLETE and t.values is not None]
        if not done:
            return None
        sign = 1.0 if self.mode[0] == "min" else -1.0
        return min(done, key=lambda t: sign * t.values[0])  # type: ignore[index]

    @property
    def best_params(self) -> Config | None:
        """The config of [`best_trial`][lightning_geo.tuning.GeoTuner.best_trial]."""
        best = self.best_trial
        return None if best is None else dict(best.params)

    @property
    def best_value(self) -> float | None:
        """The first monitored metric of [`best_trial`][lightning_geo.tuning.GeoTuner.best_trial]."""
        best = self.best_trial
        return None if best is None else best.value

    def pareto_front(self) -> list[TrialRecord]:
        """Completed trials that no other completed trial beats on every monitored metric."""
        done = [t for t in self.trials if t.state is TrialState.COMPLETE and t.values is not None]
        if not done:
            return []
        mask = pareto_mask([t.values for t in done], self.mode)  # type: ignore[misc]
        return [t for t, keep in zip(done, mask, strict=True) if keep]

    def results_table(self) -> str:
        """Every finished trial as a text table."""
        return results_table(self.trials, self.monitor)

    def importance(self) -> dict[str, float]:
        """Parameter importance from the GP (shares summing to 1); see
        [`BayesianOptimizer.importance`][lightning_geo.tuning.BayesianOptimizer.importance]."""
        return self.optimizer.importance()

    def plot(self, path: str | Path | None = None) -> Path:
        """Save the optimisation history and parameter importance as a PNG (default ``<study dir>/tuning.png``)."""
        try:
            importance = self.importance()
        except TuningError:
            importance = None
        target = Path(path) if path is not None else self.study_dir / "tuning.png"
        return plot_study(self.trials, importance, monitor=self.monitor[0], mode=self.mode[0], path=target)

    # ------------------------------------------------------------------ the study
    def _header(self) -> dict[str, Any]:
        return {"space": self.space.describe(), "monitor": list(self.monitor), "mode": list(self.mode)}

    def _trial_dir(self, number: int) -> Path:
        """The trial's folder: its TensorBoard run and its reports."""
        return self.study_dir / f"trial_{number:04d}"

    def _trial(self, number: int, params: Config) -> Trial:
        finished = tuple(t.curve() for t in self.trials if t.state is not TrialState.FAILED)
        trial_dir = self._trial_dir(number)
        stale = trial_dir / "reports.jsonl"
        if stale.exists():  # reports of an interrupted earlier run of this trial
            stale.unlink()
        pruner = self.pruner
        rule: PruningRule | None
        if pruner is not None and not isinstance(pruner, Pruner):  # an Optuna pruner: it decides on the Optuna study
            storage = self.storage
            assert not isinstance(storage, JsonlStorage)  # _check_pruner takes an Optuna pruner with an Optuna storage
            rule = storage.trial_pruner(pruner, number)
        else:
            rule = pruner
        return Trial(number, dict(params), self.monitor, self.mode, str(trial_dir), rule, finished)

    def search(self, train_fn: TrainFn) -> Config | None:
        """Run the study (or continue it from its storage) until ``max_trials`` trials have finished.

        With other processes on the same Optuna study, it returns once this process has nothing left to run
        (their last trials may still be running).

        Args:
            train_fn: ``train_fn(config, trial)``; see the class docstring. With ``executor="subprocess"`` it
                must be picklable (a module-level function).

        Returns:
            [`best_params`][lightning_geo.tuning.GeoTuner.best_params] (for a multi-objective study, ``None``: see
                [`pareto_front`][lightning_geo.tuning.GeoTuner.pareto_front]).

        Raises:
            TuningError: after ``max_consecutive_failures`` failed trials in a row (with the last error).
            ValueError: if ``resume=False`` and the storage already holds trials, or it holds another study, or the
                study's folder under ``log_dir`` cannot be created.
        """
        if not callable(train_fn):
            raise TypeError(f"train_fn must be callable as train_fn(config, trial), got {train_fn!r}")
        make_folder(self.study_dir, name="log_dir", value=self.log_dir)
        stored = self.storage.open(self._header())
        if stored.finished and not self.resume:
            raise ValueError(f"{self.storage.path} already holds {len(stored.finished)} trials; pass resume=True "
                             "to continue that study, or use another study_name")
        self.trials = []  # rebuilt from the storage, which is the truth also when search is called again
        self.optimizer = BayesianOptimizer(self.space, seed=self.seed, mode=self.mode, num_initial=self.num_initial)
        for record, x in stored.finished:
            record.params = self._stored_params(record.params, x)
            self._record(record, x)
        requeue: list[tuple[int | None, Config]] = [
            (n, self._stored_params(params, x)) for n, params, x in stored.unfinished
        ]
        writer = StudyWriter(self.study_dir, self.monitor)
        if self.verbose and (stored.finished or requeue):
            print(f"GeoTuner: resuming {self.storage.path}: {len(stored.finished)} finished trials, "
                  f"{len(requeue)} interrupted ones run again")
        running: dict[int, tuple[Trial, list[float], float | None]] = {}
        elsewhere: dict[int, Config] = {}  # trials that other processes sharing the study run now
        failures = 0
        try:
            while True:
                while len(running) < self.executor.n_parallel:
                    elsewhere, interrupted = self._sync(elsewhere)
                    requeue.extend((n, params) for n, params in interrupted if n not in running)
                    if len(self.trials) + len(running) + len(elsewhere) >= self.max_trials and not requeue:
                        break
                    ask_seconds = None
                    if requeue:
                        number, params = requeue.pop(0)
                        self.optimizer.mark_pending(params)
                    else:
                        number, params = None, self.optimizer.ask()  # the storage numbers a new trial
                        ask_seconds = self.optimizer.ask_seconds[-1]
                    x = self.space.encode([params])[0].tolist()
                    started = self.storage.start(number, dict(params), x, max_trials=self.max_trials)
                    if started is None:  # another process started the study's last trial at the same moment
                        self.optimizer.forget_pending(params)
                        break
                    number = started
                    trial = self._trial(number, params)
                    running[number] = (trial, x, ask_seconds)
                    self.executor.submit(train_fn, trial)
                if not running:
                    break  # this process has nothing left to run (others may still finish their last trials)
                for record in self.executor.wait():
                    _, x, ask_seconds = running.pop(record.number)
                    if not self.storage.finish(record, x):
                        warnings.warn(f"GeoTuner: trial {record.number} was run by another process too, which "
                                      "finished it first; its result counts, this one is dropped", stacklevel=2)
                        self.optimizer.forget_pending(record.params)
                        continue
                    self._record(record, x)
                    writer.trial_finished(record, best=self.best_value, trial_dir=self._trial_dir(record.number),
                                          ask_seconds=ask_seconds, counts=self._counts())
                    if self.verbose:
                        print(progress_line(record, total=self.max_trials, best=self.best_trial, monitor=self.monitor),
                              flush=True)
                    if record.state is TrialState.FAILED and (record.error or "").startswith(MONITOR_MISSING):
                        raise TuningError(f"trial {record.number}: {record.error}")
                    crashed = record.state is TrialState.FAILED and record.error != DIVERGED
                    failures = failures + 1 if crashed else 0
                    if failures >= self.max_consecutive_failures:
                        raise TuningError(
                            f"{failures} trials failed in a row; the last one (trial {record.number}) with:\n"
                            f"{record.error}"
                        )
            # the trials other processes finished meanwhile; a trial it finds interrupted now is claimed and let go
            # again by release() below, for a process still searching or the next one to open the study
            self._sync(elsewhere)
        finally:
            self.executor.shutdown()
            self.storage.release()
            if self.trials:
                writer.text("results", "```\n" + self.results_table() + "\n```")
            writer.close()
        return self.best_params if len(self.monitor) == 1 else None

    def _stored_params(self, params: dict[str, Any], x: list[float]) -> Config:
        """A stored config: numbers exactly as written (JSON keeps floats bit for bit), categories from their
        encoded index (JSON would turn a tuple choice into a list)."""
        config = self.space.decode(torch.tensor([x], dtype=torch.double))[0]
        for name, dim in self.space.dimensions.items():
            if name in config and name in params and not isinstance(dim, Categorical):
                config[name] = type(config[name])(params[name])
        return config

    def _sync(self, elsewhere: dict[int, Config]) -> tuple[dict[int, Config], list[tuple[int, Config]]]:
        """Take in the trials that other processes sharing the study finished, and hold the configs they run now
        (``elsewhere`` before, the first return value after) as pending points, so that asks avoid them. Also
        returns the interrupted trials (their process gone) this process is now to run again."""
        finished, running, interrupted = self.storage.sync({t.number for t in self.trials})
        for record, x in finished:
            record.params = self._stored_params(record.params, x)
            self._record(record, x)
        now = {number: self._stored_params(params, x) for number, (params, x) in running.items()}
        for number, params in elsewhere.items():
            if number not in now:
                self.optimizer.forget_pending(params)
        for params in now.values():
            self.optimizer.mark_pending(params)
        return now, [(number, self._stored_params(params, x)) for number, params, x in interrupted]

    def _counts(self) -> dict[str, int]:
        return {state.value.lower(): sum(t.state is state for t in self.trials)
                for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED)}

    def _record(self, record: TrialRecord, x: list[float]) -> None:
        self.trials.append(record)
        self.optimizer.tell(record.params, record.values)
