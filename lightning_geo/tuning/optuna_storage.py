"""``OptunaStorage``: ``GeoTuner``'s trials in an Optuna storage (SQLite or any RDB URL, or a journal file).

``GeoTuner(..., storage="sqlite:///tuning/study.db")`` keeps the study in a real database instead of the JSON
lines file: ``optuna.load_study(study_name=..., storage=...)`` and ``optuna-dashboard`` open it as an ordinary
Optuna study (params with their distributions, values, intermediate values as learning curves, states). The
resume contract is the JSON file's: every trial is created ``RUNNING`` when it starts and set ``COMPLETE``,
``PRUNED`` or ``FAIL`` when it ends; on resume, finished trials are replayed and trials still ``RUNNING`` whose
process is gone are run again with the same number and config, into the same Optuna trial.

Several ``GeoTuner`` processes can share one study (the same script started on several machines or GPUs):
Optuna numbers the trials, so numbers never collide; each running trial names its process (``geo:owner``,
``host:pid``), so a process never takes a trial another live process is running for an interrupted one; each
process sees the others' finished trials (the GP learns from them, the pruner compares with them) and their
running configs (pending points), and together they stop at ``max_trials`` trials: should two processes start
the study's last trial at the same moment, the one Optuna numbered later is marked ``FAIL`` with ``geo:surplus``
and not run (every GEO reader skips it). A trial whose process is gone is run again by a process of the study
(one opening it, or one running it, at its next ask): on the same machine as soon as its pid is gone; from
another machine, where a pid cannot be checked, once that process let it go (``search`` ended with an error or
a ``KeyboardInterrupt``) or once its heartbeat stopped: every process writes the time (``geo:heartbeat``, its
clock's seconds since the epoch) to each trial it runs every ``heartbeat_s`` seconds, and a trial whose last
beat is ``STALE_AFTER_BEATS`` beats old (5 minutes by default) is taken for interrupted; this assumes the
machines' clocks agree to well within that (NTP). Should two processes still run one trial (both took it for
interrupted at the same moment, or a stalled process came back), the first result counts and the second is
dropped with a warning: a trial may run twice, it is never counted twice.

GEO's own fields ride along as trial user attributes (``geo:x``: the encoded config; ``geo:params``: the
config as JSON; ``geo:values``: a pruned trial's last report; ``geo:seconds``, ``geo:error``, ``geo:owner``,
``geo:heartbeat``, ``geo:heartbeat_s``, ``geo:surplus``), and
the study's space, monitor and mode as the study user attribute ``geo:header``, which a resume checks.
``OptunaTrialPruner`` lets any Optuna pruner (``optuna.pruners.MedianPruner()``, ``GeoCurvePruner()``)
prune the trials of such a study: ``GeoTuner(pruner=optuna.pruners.MedianPruner(), storage="sqlite:///...")``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState
from sqlalchemy.exc import SQLAlchemyError

from lightning_geo.tuning.pruners import Curve, FinishedCurve
from lightning_geo.tuning.space import Categorical, Float, Int, SearchSpace
from lightning_geo.tuning.storage import (
    HEARTBEAT_S,
    FinishedTrials,
    InterruptedTrials,
    RunningTrials,
    StoredStudy,
    TrialStorage,
    check_heartbeat_s,
)
from lightning_geo.tuning.trial import TrialRecord, TrialState

_STATES = {TrialState.COMPLETE: OptunaState.COMPLETE, TrialState.PRUNED: OptunaState.PRUNED,
           TrialState.FAILED: OptunaState.FAIL}
_OPTUNA_CHOICE = (type(None), bool, int, float, str)
_OWNER = "geo:owner"  # user attribute of a running trial: "host:pid" of the process running it ("" once let go)
HEARTBEAT = "geo:heartbeat"
"""User attribute of a running trial: when its process last said it runs it (``time.time()`` of that machine)."""
_HEARTBEAT_EVERY = "geo:heartbeat_s"  # the owner's heartbeat interval, so that any reader judges its beats alike
_SURPLUS = "geo:surplus"  # a trial started over max_trials by a race between processes: FAIL, never run, skipped
STALE_AFTER_BEATS = 10
"""A trial on another machine whose last heartbeat is this many of its beats old is taken for interrupted."""
SQLITE_TIMEOUT_S = 60.0
"""How long a SQLite write waits for another process's write before 'database is locked' (Python's default: 5 s)."""
CONNECT_TRIES = 5
"""Tries to open a database URL while other processes create its tables (see ``connect``)."""


def is_optuna_storage(storage: Any) -> bool:
    """Whether ``storage`` names an Optuna storage: an RDB URL (``sqlite:///...``, ``postgresql://...``) or an
    ``optuna.storages.BaseStorage`` instance (e.g. a ``JournalStorage`` on a shared file system)."""
    if isinstance(storage, str):
        return "://" in storage
    return type(storage).__module__.startswith("optuna.")


STORAGE_EXAMPLE = "sqlite:///path/to/study.db"
"""A correct storage URL, shown in the messages about wrong ones (three slashes: a path relative to the current
folder; four for an absolute one, ``sqlite:////data/study.db``)."""
_DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "psycopg[binary]", "mysqldb": "mysqlclient",
                    "pymysql": "pymysql", "asyncpg": "asyncpg", "pg8000": "pg8000", "oracledb": "oracledb",
                    "pyodbc": "pyodbc", "mysqlconnector": "mysql-connector-python"}


def check_storage_url(url: str) -> None:
    """Raise ``ValueError`` naming ``storage=`` for a URL that would fail only when the study opens: not a URL,
    an unknown database, a driver that is not installed, a SQLite file in a folder that does not exist, or
    ``sqlite://name.db`` (two slashes: SQLAlchemy reads ``name.db`` as a host and opens an in-memory database)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise ValueError(f"storage={url!r} is not a database URL ({err}); e.g. storage={STORAGE_EXAMPLE!r}") from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise ValueError(
            f"storage={url!r}: unknown database {parsed.drivername!r}; use an SQLAlchemy URL such as "
            f"{STORAGE_EXAMPLE!r} or 'postgresql://user:password@host/db' (or a path for a JSON lines file)"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        package = _DRIVER_PACKAGES.get(str(dialect.driver), str(dialect.driver))
        raise ValueError(
            f"storage={url!r}: the {parsed.get_backend_name()} driver {dialect.driver!r} is not installed ({err}); "
            f"pip install {package}, or name an installed driver as '{parsed.get_backend_name()}+<driver>://...'"
        ) from None
    if parsed.get_backend_name() != "sqlite":
        return
    if parsed.host:
        path = parsed.host + (f"/{parsed.database}" if parsed.database else "")
        raise ValueError(
            f"storage={url!r} has two slashes, so {parsed.host!r} is read as a host and the study would live in an "
            f"in-memory database; a file needs three: storage='sqlite:///{path}' (four for an absolute path)"
        )
    if not parsed.database or parsed.database == ":memory:":
        raise ValueError(f"storage={url!r} is an in-memory database, lost when the process ends and never shared; "
                         f"give a file, e.g. storage={STORAGE_EXAMPLE!r}")
    folder = os.path.dirname(os.path.abspath(parsed.database))
    if not os.path.isdir(folder):
        raise ValueError(f"storage={url!r}: the folder {folder!r} of the SQLite file does not exist; create it, or "
                         f"give a path in an existing folder, e.g. storage={STORAGE_EXAMPLE!r}")


def _distribution(dim: Float | Int | Categorical) -> BaseDistribution | None:
    """The Optuna distribution of a GEO dimension (``None`` for categories Optuna cannot store, e.g. tuples)."""
    if isinstance(dim, Categorical):
        if all(isinstance(c, _OPTUNA_CHOICE) for c in dim.choices):
            return CategoricalDistribution(list(dim.choices))
        return None
    if isinstance(dim, Int):
        return IntDistribution(dim.low, dim.high, log=dim.log)
    return FloatDistribution(dim.low, dim.high, log=dim.log)


def connect(storage: str | Any) -> Any:
    """The Optuna storage to open (an ``optuna.storages`` instance is used as it is).

    A URL becomes an ``RDBStorage``; for SQLite with a ``SQLITE_TIMEOUT_S`` busy timeout, so that processes
    sharing the file wait for each other's writes. Creating it is tried up to ``CONNECT_TRIES`` times:
    processes that open a new database at the same moment race to create its tables, and the losers fail with
    "table ... already exists" or a unique-constraint error on the schema version (seen with 3 processes).
    """
    if not isinstance(storage, str):
        return storage
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if storage.startswith("sqlite:") else {}
    for attempt in range(1, CONNECT_TRIES):
        try:
            return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)
        except SQLAlchemyError:
            time.sleep(0.2 * attempt)  # the other process finishes the tables meanwhile
    return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)  # the last try raises its error


def _this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(trial: FrozenTrial) -> bool:
    """Whether the process that owns running ``trial`` may still be running it: not when it let the trial go
    (owner ``""``, or none: a study written before owners were kept), nor when it ran on this machine and its
    process is gone or is this one (an earlier ``search`` here), nor when it runs on another machine and its
    heartbeat is ``STALE_AFTER_BEATS`` beats old (a trial without heartbeats, written before they were kept,
    cannot be judged: alive)."""
    owner = trial.user_attrs.get(_OWNER, "")
    host, _, pid = owner.rpartition(":")
    if not pid.isdigit():
        return False
    if host != socket.gethostname():
        beat, every = trial.user_attrs.get(HEARTBEAT), trial.user_attrs.get(_HEARTBEAT_EVERY, HEARTBEAT_S)
        return beat is None or time.time() - float(beat) < STALE_AFTER_BEATS * float(every)
    if int(pid) == os.getpid() or os.name == "nt":  # on Windows, os.kill(pid, 0) would send a Ctrl-C: one writer
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return not _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but its parent has not collected it yet (Linux; ``False`` where unknown). A
    killed tuner process that a ``multiprocessing`` parent or a shell has not waited for still answers
    ``os.kill(pid, 0)``; its trials must be taken over all the same."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]  # the state follows the command name in parentheses


def _is_geo_trial(trial: FrozenTrial) -> bool:
    """A trial GeoTuner runs (not one added by hand or by another sampler, nor a surplus one it never ran)."""
    return "geo:x" in trial.user_attrs and not trial.user_attrs.get(_SURPLUS)


class OptunaStorage(TrialStorage):
    """A ``GeoTuner`` study kept as an Optuna study, which several ``GeoTuner`` processes may share.

    Args:
        storage: An Optuna storage URL (``"sqlite:///tuning/study.db"``) or ``optuna.storages.BaseStorage``
            (``JournalStorage(JournalFileBackend(path))`` for a shared file system without a database).
        study_name: The Optuna study's name.
        space: The tuner's search space (for the parameters' distributions).
        mode: ``"min"``/``"max"`` per monitored metric (the study's directions).
        heartbeat_s: Seconds between two heartbeats of each trial this process runs. Default ``HEARTBEAT_S``.

    Raises:
        ValueError: for a ``storage`` that is not an Optuna one or a URL that cannot open (an unknown database,
            a driver that is not installed, a SQLite file in a missing folder or ``sqlite://name.db``), or a
            ``heartbeat_s`` that is not a positive number.
    """

    def __init__(self, storage: str | Any, study_name: str, space: SearchSpace, mode: Sequence[str], *,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        if not is_optuna_storage(storage):
            raise ValueError(f"storage={storage!r} must be an Optuna storage URL or optuna.storages instance")
        if isinstance(storage, str):
            check_storage_url(storage)
        self.heartbeat_s = check_heartbeat_s(heartbeat_s)
        self._beating: threading.Thread | None = None
        self._stop_beating = threading.Event()
        self._lock = threading.Lock()  # guards _mine between the search and the heartbeat thread
        self.url = storage
        self.study_name = study_name
        self.space = space
        self.directions: list[Literal["minimize", "maximize"]] = [
            "minimize" if m == "min" else "maximize" for m in mode
        ]
        self._study: optuna.Study | None = None
        self._trial_ids: dict[int, int] = {}  # GEO trial number -> Optuna trial id
        self._mine: set[int] = set()  # trials this process runs (started, or claimed as interrupted), unfinished

    @property
    def path(self) -> str:
        """Where the study lives (for messages)."""
        return f"{self.url} (study {self.study_name!r})"

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (after ``open``)."""
        assert self._study is not None, "open() the storage first"
        return self._study

    def open(self, header: dict[str, Any]) -> StoredStudy:
        """Create the study with ``header``, or check that an existing one is the same study and read it; claim
        the interrupted trials (``RUNNING``, their process gone) to run them again.

        Raises:
            ValueError: if the existing study was made for a different space, monitor or mode.
        """
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._study = optuna.create_study(storage=connect(self.url), study_name=self.study_name,
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
        finished, _, unfinished = self._read_trials(known=set())
        self._start_beating()
        return StoredStudy(finished, unfinished)

    def start(self, number: int | None, params: dict[str, Any], x: list[float], *, max_trials: int) -> int | None:
        """Create a new trial (``number=None``; Optuna numbers it) as a ``RUNNING`` Optuna trial with its params and
        GEO fields, in one write; a re-run (``number`` given) already has its trial. Returns the trial's number, or
        ``None`` when other processes had started ``max_trials`` trials before this one (it is then marked
        ``FAIL`` with ``geo:surplus`` and is not to be run)."""
        if number is not None:
            assert number in self._mine, f"trial {number} was not claimed by open() or sync()"
            return number
        distributions = {name: d for name, dim in self.space.dimensions.items()
                         if name in params and (d := _distribution(dim)) is not None}
        template = FrozenTrial(
            number=-1, state=OptunaState.RUNNING, value=None, datetime_start=datetime.now(), datetime_complete=None,
            params={name: params[name] for name in distributions}, distributions=distributions,
            user_attrs={"geo:params": json.dumps(params, default=repr), "geo:x": list(x), _OWNER: _this_process(),
                        HEARTBEAT: time.time(), _HEARTBEAT_EVERY: self.heartbeat_s},
            system_attrs={}, intermediate_values={}, trial_id=-1,
        )
        storage = self.study._storage
        trial_id = storage.create_new_trial(self.study._study_id, template_trial=template)
        number = storage.get_trial_number_from_id(trial_id)
        self._trial_ids[number] = trial_id
        before = sum(_is_geo_trial(t) and t.number < number for t in self.study.get_trials(deepcopy=False))
        if before >= max_trials:  # another process took the study's last place between our count and this write
            storage.set_trial_user_attr(trial_id, _SURPLUS, True)
            storage.set_trial_state_values(trial_id, OptunaState.FAIL)
            return None
        with self._lock:
            self._mine.add(number)
        return number

    def finish(self, record: TrialRecord, x: list[float]) -> bool:
        """Write a finished trial's reports, fields and state (the state last: it is what resume trusts).

        Returns:
            ``False`` if another process finished this trial first (then its result stands, not this one).
        """
        storage = self.study._storage
        trial_id = self._trial_ids[record.number]
        with self._lock:
            self._mine.discard(record.number)
        try:
            for step, value in record.reports:
                if math.isfinite(value):
                    storage.set_trial_intermediate_value(trial_id, step, value)
            storage.set_trial_user_attr(trial_id, "geo:seconds", record.seconds)
            storage.set_trial_user_attr(trial_id, "geo:error", record.error)
            storage.set_trial_user_attr(trial_id, "geo:values", None if record.values is None else list(record.values))
            state = _STATES[record.state]
            values = None
            if state == OptunaState.COMPLETE:
                assert record.values is not None  # a COMPLETE record always has values (run_trial makes NaN FAILED)
                values = list(record.values)
            storage.set_trial_state_values(trial_id, state, values)
        except UpdateFinishedTrialError:
            return False
        return True

    def sync(self, known: set[int]) -> tuple[FinishedTrials, RunningTrials, InterruptedTrials]:
        """The GeoTuner trials other processes finished that are not in ``known``, the configs of those they are
        running now, and those whose process is gone (pid gone, or heartbeat stale), now claimed by this process
        to run again."""
        return self._read_trials(known)

    def _read_trials(self, known: set[int]) -> tuple[FinishedTrials, RunningTrials, InterruptedTrials]:
        """One read of the study's GeoTuner trials that are not in ``known`` and not this process's own: the
        finished ones, the running ones whose process is alive, and the interrupted ones, each claimed here (one
        that another process finished just before the claim is left out: the next read finds it finished)."""
        finished: FinishedTrials = []
        running: RunningTrials = {}
        interrupted: InterruptedTrials = []
        for trial in self.study.get_trials(deepcopy=False):
            if not _is_geo_trial(trial) or trial.number in known or trial.number in self._mine:
                continue  # e.g. added by hand or by another sampler: not ours to replay
            self._trial_ids[trial.number] = trial._trial_id
            params, x = json.loads(trial.user_attrs["geo:params"]), list(trial.user_attrs["geo:x"])
            if trial.state == OptunaState.RUNNING:
                if _alive(trial):
                    running[trial.number] = (params, x)
                elif self._claim(trial.number):
                    interrupted.append((trial.number, params, x))
            elif trial.state.is_finished():
                finished.append((self._record(trial, params), x))
        return finished, running, interrupted

    def release(self) -> None:
        """Stop the heartbeats and let go of this process's unfinished trials, so that the next process to open the
        study runs them."""
        self._stop_beating.set()
        if self._beating is not None:
            self._beating.join()
            self._beating = None
        with self._lock:
            mine, self._mine = sorted(self._mine), set()
        for number in mine:
            with contextlib.suppress(UpdateFinishedTrialError):  # another process ran it too and finished it
                self.study._storage.set_trial_user_attr(self._trial_ids[number], _OWNER, "")

    def _claim(self, number: int) -> bool:
        """Make this process the owner of interrupted trial ``number`` (``False``: another process finished it
        meanwhile)."""
        storage, trial_id = self.study._storage, self._trial_ids[number]
        try:
            storage.set_trial_user_attr(trial_id, _OWNER, _this_process())
            storage.set_trial_user_attr(trial_id, _HEARTBEAT_EVERY, self.heartbeat_s)
            storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())
        except UpdateFinishedTrialError:
            return False
        with self._lock:
            self._mine.add(number)
        return True

    def _start_beating(self) -> None:
        """Start the thread that writes the heartbeat of this process's running trials (once per ``open``)."""
        if self._beating is not None:
            return
        self._stop_beating.clear()
        self._beating = threading.Thread(target=self._beat, name="geo-tuner-heartbeat", daemon=True)
        self._beating.start()

    def _beat(self) -> None:
        storage = self.study._storage
        while not self._stop_beating.wait(self.heartbeat_s):
            with self._lock:
                mine = [self._trial_ids[n] for n in self._mine]
            for trial_id in mine:
                # a trial another process finished, or a moment the database is locked: the next beat tries again
                with contextlib.suppress(UpdateFinishedTrialError, SQLAlchemyError, OSError):
                    storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())

    def trial_pruner(self, pruner: BasePruner, number: int) -> OptunaTrialPruner:
        """``pruner`` deciding for trial ``number`` of this study."""
        return OptunaTrialPruner(pruner, self.url, self.study_name, number, study=self.study)

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


class OptunaTrialPruner:
    """An Optuna pruner deciding for one ``GeoTuner`` trial of an Optuna study.

    ``GeoTuner(pruner=optuna.pruners.MedianPruner(), storage="sqlite:///tuning/study.db")`` gives each trial one
    of these. After each report, ``trial.should_prune()`` writes the new reports to the study as the trial's
    intermediate values (``optuna-dashboard`` shows the running curve) and asks ``pruner.prune(study, trial)``,
    which sees the study as Optuna does, the trials of other processes included. It travels with the trial
    (pickled) to a subprocess, a ``ddp_spawn`` rank or a Ray worker, which opens the study again.

    Args:
        pruner: Any ``optuna.pruners.BasePruner`` (``MedianPruner``, ``PercentilePruner``,
            ``SuccessiveHalvingPruner``, GEO's ``GeoCurvePruner``...).
        storage: The study's Optuna storage URL or ``optuna.storages`` instance.
        study_name: The study's name.
        number: The trial's number in the study.
        study: The study, where it is open in this process already (it is not pickled).
    """

    def __init__(self, pruner: BasePruner, storage: str | Any, study_name: str, number: int, *,
                 study: optuna.Study | None = None) -> None:
        self.pruner = pruner
        self.storage = storage
        self.study_name = study_name
        self.number = number
        self._study = study
        self._written = 0  # reports already in the study

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None}

    def should_prune(self, reports: Curve, finished: Sequence[FinishedCurve], mode: str) -> bool:
        """Write the reports not written yet and ask the Optuna pruner; ``finished`` and ``mode`` are not used (the
        pruner reads the study itself)."""
        if self._study is None:
            self._study = optuna.load_study(study_name=self.study_name, storage=connect(self.storage))
        storage = self._study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self._study._study_id, self.number)
        for step, value in reports[self._written:]:
            storage.set_trial_intermediate_value(trial_id, step, value)
        self._written = len(reports)
        return bool(self.pruner.prune(self._study, storage.get_trial(trial_id)))
