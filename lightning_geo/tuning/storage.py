"""Durable trial storage: one JSON line per event, fsynced as it happens.

The file holds a header (what the study optimises, over which space), then a ``start`` line when a trial is
launched and a ``finish`` line when it ends. Killing the tuner at any moment loses at most the line being
written: a torn last line is cut off when the file is opened again. On resume, trials with a ``finish`` line
are replayed (never run again), and trials with only a ``start`` line, the ones that were running when the
tuner died, are run again with the same number and the same config (a crash does not count as a failure).

``TrialStorage`` is what ``GeoTuner`` needs of a storage; the JSON-lines file has one writer, an Optuna
storage (``OptunaStorage``) can have several at once.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_geo.tuning.trial import TrialRecord, TrialState

FORMAT_VERSION = 1
FinishedTrials = list[tuple[TrialRecord, list[float]]]
"""Finished trials, each with its encoded row (what the optimiser is told)."""
RunningTrials = dict[int, tuple[dict[str, Any], list[float]]]
"""Running trials by number: their config and its encoded row."""
InterruptedTrials = list[tuple[int, dict[str, Any], list[float]]]
"""Trials to run again, each as (number, params, encoded row)."""


HEARTBEAT_S = 30.0
"""Default seconds between two heartbeats of a running trial on a shared study (``GeoTuner(heartbeat_s=...)``)."""


def check_heartbeat_s(heartbeat_s: Any) -> float:
    """``heartbeat_s`` as a float, or ``ValueError`` naming it if it is not a positive, finite number of seconds."""
    if isinstance(heartbeat_s, bool) or not isinstance(heartbeat_s, int | float) or not 0 < heartbeat_s < math.inf:
        raise ValueError(f"heartbeat_s={heartbeat_s!r} must be a positive, finite number of seconds")
    return float(heartbeat_s)


def check_folder(folder: str | os.PathLike[str], *, name: str, value: Any) -> None:
    """``ValueError`` naming ``name`` (the argument ``value`` was given as) unless ``folder`` is a folder this process
    may write in, or could be created as one: its nearest existing parent is such a folder. Creates nothing."""
    path = Path(folder).absolute()
    existing = next(p for p in (path, *path.parents) if os.path.exists(p))
    if not existing.is_dir():
        raise ValueError(f"{name}={str(value)!r}: {existing} is a file, so the folder {path} cannot be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name}={str(value)!r}: this process may not write in {existing}, so the folder {path} "
                         "cannot be made or written there")


def make_folder(folder: str | os.PathLike[str], *, name: str, value: Any) -> None:
    """Create ``folder`` (and its parents), or ``ValueError`` naming ``name`` if that fails (which ``check_folder``
    cannot always tell without trying: root may write in ``/proc``, yet nothing can be made there)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{name}={str(value)!r}: cannot create the folder {folder} ({err.strerror or err})") from err


@dataclass
class StoredStudy:
    """What a storage file holds: finished trials in finishing order and trials that never finished."""

    finished: FinishedTrials
    unfinished: InterruptedTrials

    @property
    def next_number(self) -> int:
        """The first trial number not used yet."""
        numbers = [r.number for r, _ in self.finished] + [n for n, _, _ in self.unfinished]
        return max(numbers, default=-1) + 1


class TrialStorage(ABC):
    """Where a study's trials live: ``GeoTuner`` opens it, starts and finishes trials in it, and (with several
    processes on one study) syncs with what the others did."""

    path: Any  # where the study lives, for messages

    @abstractmethod
    def open(self, header: dict[str, Any]) -> StoredStudy:
        """Create the study with ``header`` or check that the stored one matches it; its finished trials, and the
        interrupted ones this process is to run again (now claimed by it)."""

    @abstractmethod
    def start(self, number: int | None, params: dict[str, Any], x: list[float], *, max_trials: int) -> int | None:
        """Record a launched trial: ``number`` for a re-run, ``None`` for a new trial numbered by the storage;
        returns the trial's number, or ``None`` when the new trial would be one more than the study's
        ``max_trials`` (another process started the last one at the same moment): then it is not to be run."""

    @abstractmethod
    def finish(self, record: TrialRecord, x: list[float]) -> bool:
        """Record a finished trial; ``False`` if another process had already finished it (then it is not ours)."""

    def sync(self, known: set[int]) -> tuple[FinishedTrials, RunningTrials, InterruptedTrials]:
        """Trials other processes finished that are not in ``known`` (each with its encoded row), the configs
        (with their rows) of the trials they are running now, by number, and the trials whose process is gone,
        now claimed by this one to run again."""
        return [], {}, []

    def release(self) -> None:  # noqa: B027 (optional hook; nothing to release with one writer)
        """Let another process run this one's unfinished trials again (called when ``search`` ends)."""


class JsonlStorage(TrialStorage):
    """Trials of one study in a JSON-lines file (one process writes it at a time).

    Args:
        path: The file; its folder is created. Default name used by ``GeoTuner``: ``<study dir>/trials.jsonl``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._next_number = 0

    def open(self, header: dict[str, Any]) -> StoredStudy:
        """Create the file with ``header``, or check that an existing file belongs to the same study and read it.

        Raises:
            ValueError: if the existing file was written for a different space, monitor or mode.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {"event": "study", "format": FORMAT_VERSION, **header}
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append(header)
            self._next_number = 0
            return StoredStudy([], [])
        self._cut_torn_tail()
        lines = self.path.read_text(encoding="utf-8").splitlines()
        stored_header = json.loads(lines[0])
        for key in ("space", "monitor", "mode"):
            if stored_header.get(key) != header.get(key):
                raise ValueError(
                    f"{self.path} holds a study with a different {key} ({stored_header.get(key)!r}, now "
                    f"{header.get(key)!r}); use another study name or storage file"
                )
        started: dict[int, tuple[dict[str, Any], list[float]]] = {}
        finished: list[tuple[TrialRecord, list[float]]] = []
        done: set[int] = set()
        for line in lines[1:]:
            event = json.loads(line)
            number = int(event["number"])
            if event["event"] == "start":
                started[number] = (event["params"], event["x"])
            elif event["event"] == "finish" and number not in done:
                done.add(number)
                params, x = started.get(number, (event["params"], event["x"]))
                record = TrialRecord(
                    number=number,
                    params=params,
                    state=TrialState(event["state"]),
                    values=None if event["values"] is None else tuple(float(v) for v in event["values"]),
                    reports=[(int(s), float(v)) for s, v in event.get("reports", [])],
                    seconds=float(event.get("seconds", 0.0)),
                    error=event.get("error"),
                )
                finished.append((record, x))
        unfinished = [(n, p, x) for n, (p, x) in started.items() if n not in done]
        stored = StoredStudy(finished, unfinished)
        self._next_number = stored.next_number
        return stored

    def start(self, number: int | None, params: dict[str, Any], x: list[float], *, max_trials: int) -> int | None:
        """Record that trial ``number`` (``None``: the next new number) was launched with ``params`` (encoded as
        ``x``); returns its number (one writer: never over ``max_trials``, which the tuner checked)."""
        number = self._next_number if number is None else number
        self._next_number = max(self._next_number, number + 1)
        self._append({"event": "start", "number": number, "params": params, "x": x, "time": time.time()})
        return number

    def finish(self, record: TrialRecord, x: list[float]) -> bool:
        """Record a finished trial (always ours: one process writes the file)."""
        self._append(
            {
                "event": "finish",
                "number": record.number,
                "params": record.params,
                "x": x,
                "state": record.state.value,
                "values": None if record.values is None else list(record.values),
                "reports": [list(r) for r in record.reports],
                "seconds": record.seconds,
                "error": record.error,
                "time": time.time(),
            }
        )
        return True

    def _append(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, default=repr, allow_nan=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _cut_torn_tail(self) -> None:
        """Drop a last line that a kill left half-written (no newline, or not valid JSON)."""
        data = self.path.read_bytes()
        keep = len(data)
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
        else:
            last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
            try:
                json.loads(data[last_start:].decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                keep = last_start
        if keep < len(data):
            warnings.warn(f"{self.path}: dropping a torn last line left by an interrupted write", stacklevel=3)
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
