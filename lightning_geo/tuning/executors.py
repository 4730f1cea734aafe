"""Where trials run: in this process, each in its own subprocess (several at once), or on an engine of yours.

An executor takes ``(train_fn, trial)`` pairs and hands back [`TrialRecord`][lightning_geo.tuning.TrialRecord] results;
the tuner never looks inside. [`run_trial`][lightning_geo.tuning.run_trial] is the whole life of a trial (call
``train_fn``, read its reports, classify the outcome) and is what every executor runs where the trial runs. To run
trials on Ray, use ``RayExecutor`` (each trial a Ray task with its own resources; needs ``pip install
lightning-geo[ray]``); for another engine, implement the three methods of
[`TrialExecutor`][lightning_geo.tuning.TrialExecutor] around [`run_trial`][lightning_geo.tuning.run_trial], with
``log_dir`` on a file system the workers share, so that the study sees every trial's reports and TensorBoard run.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, cast

from lightning_geo.tuning.trial import Trial, TrialPruned, TrialRecord, TrialState, values_from_result

TrainFn = Callable[[dict[str, Any], Trial], Any]
"""``train_fn(config, trial)``: builds a Trainer and a module from ``config``, fits, and returns the monitored
metric(s) (or ``None`` to use the last value ``trial.reporter()`` reported)."""


DIVERGED = "diverged: the monitored metric is not finite"
"""The ``error`` of a trial whose result was NaN or infinite: a bad config, not a bug (it does not count towards
``max_consecutive_failures``)."""


def _check_devices(devices: Any) -> list[str] | None:
    """``devices`` as the ``CUDA_VISIBLE_DEVICES`` value of each parallel slot, or ``TypeError`` naming it."""
    if devices is None:
        return None
    if (isinstance(devices, str) or not isinstance(devices, Sequence)
            or not all(isinstance(d, int | str) and not isinstance(d, bool) for d in devices)):
        raise TypeError(f"devices={devices!r} must be a list of device ids, one per parallel trial (e.g. "
                        "devices=[0, 1] for two trials on GPUs 0 and 1), or None")
    return [str(d) for d in devices]


def run_trial(train_fn: TrainFn, trial: Trial) -> TrialRecord:
    """Run one trial and classify how it ended; never raises (except ``KeyboardInterrupt``/``SystemExit``).

    An exception in ``train_fn`` gives a ``FAILED`` record with the traceback; ``TrialPruned``, or a Trainer
    stopped by ``TrialReporter``, a ``PRUNED`` record valued at the last report; otherwise ``COMPLETE``.
    """
    started = time.perf_counter()
    state, values, error = TrialState.COMPLETE, None, None
    try:
        result = train_fn(dict(trial.params), trial)
        trial.load_reports()  # reports made by a spawned rank 0 reach this process through the file
        values = values_from_result(None if trial.pruned else result, trial)
        state = TrialState.PRUNED if trial.pruned else TrialState.COMPLETE
    except TrialPruned:
        trial.load_reports()
        state = TrialState.PRUNED
        values = (trial.reports[-1][1],) if trial.reports and len(trial.monitor) == 1 else None
    except Exception as err:  # a failed trial must not end the study
        state, error = TrialState.FAILED, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
    if values is not None and not all(math.isfinite(v) for v in values):
        values = None  # a NaN or infinite result is a failed evaluation for the optimiser
        error = DIVERGED
        if state is TrialState.COMPLETE:
            state = TrialState.FAILED
    return TrialRecord(
        number=trial.number,
        params=dict(trial.params),
        state=state,
        values=values,
        reports=list(trial.reports),
        seconds=time.perf_counter() - started,
        error=error,
    )


class TrialExecutor(ABC):
    """Runs trials; the tuner keeps at most ``n_parallel`` of them submitted at once."""

    n_parallel: int = 1

    @abstractmethod
    def submit(self, train_fn: TrainFn, trial: Trial) -> None:
        """Start ``trial`` (or queue it); must not block until it ends unless ``n_parallel`` is 1."""

    @abstractmethod
    def wait(self) -> list[TrialRecord]:
        """Block until at least one submitted trial has ended; return the records of all that have."""

    def shutdown(self) -> None:  # noqa: B027 (optional hook; nothing to release by default)
        """Stop what is still running (called when the study ends or is interrupted)."""


class InProcessExecutor(TrialExecutor):
    """Runs each trial in this process, one at a time (the default; simplest to debug)."""

    n_parallel = 1

    def __init__(self) -> None:
        self._done: list[TrialRecord] = []

    def submit(self, train_fn: TrainFn, trial: Trial) -> None:
        """Run the trial now."""
        self._done.append(run_trial(train_fn, trial))

    def wait(self) -> list[TrialRecord]:
        """The trial run by the last ``submit``."""
        done, self._done = self._done, []
        return done


def _child(train_fn: TrainFn, trial: Trial, conn: multiprocessing.connection.Connection) -> None:
    record = run_trial(train_fn, trial)
    conn.send(record)
    conn.close()


class SubprocessExecutor(TrialExecutor):
    """Runs each trial in a fresh (spawned) Python process, up to ``n_parallel`` at once, one device each.

    A trial that crashes its process (out of memory, a segfault in an extension, ``os._exit``) becomes a
    ``FAILED`` trial with the exit code; the study goes on. ``train_fn`` must be picklable: a function defined
    at module level (not in a notebook cell or a ``lambda``) or an instance of a module-level class.

    Args:
        n_parallel: Trials at once. Default 1.
        devices: One entry per parallel slot, set as ``CUDA_VISIBLE_DEVICES`` of the trial's process (so
            ``devices=1`` in the trial's Trainer means "my GPU"). Default: GPUs ``0 .. n_parallel - 1`` when
            CUDA has at least ``n_parallel`` of them, otherwise the environment is left as it is.

    Raises:
        ValueError: for a non-positive ``n_parallel`` or fewer ``devices`` than ``n_parallel``.
        TypeError: for ``devices`` that are not a list of device ids (ints or strings).
    """

    def __init__(self, n_parallel: int = 1, devices: Sequence[int | str] | None = None) -> None:
        if isinstance(n_parallel, bool) or not isinstance(n_parallel, int) or n_parallel < 1:
            raise ValueError(f"n_parallel={n_parallel!r} must be a positive integer")
        ids = _check_devices(devices)
        if devices is not None and len(devices) < n_parallel:
            raise ValueError(f"devices={list(devices)!r} needs one entry per parallel trial (n_parallel={n_parallel})")
        self.n_parallel = n_parallel
        self.devices = ids if ids is not None else self._default_devices(n_parallel)
        self._context = multiprocessing.get_context("spawn")
        self._running: dict[int, tuple[Any, Any, Trial, str | None, float]] = {}  # sentinel -> process, ...

    @staticmethod
    def _default_devices(n_parallel: int) -> list[str] | None:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() >= n_parallel:
            return [str(i) for i in range(n_parallel)]
        return None

    def submit(self, train_fn: TrainFn, trial: Trial) -> None:
        """Start the trial in a new process on a free device."""
        busy = {device for _, _, _, device, _ in self._running.values()}
        device = next((d for d in self.devices if d not in busy), None) if self.devices else None
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_child, args=(train_fn, trial, send), daemon=True)
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        if device is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = device  # inherited by the child at spawn
        try:
            process.start()
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise TypeError(
                f"executor='subprocess' needs a picklable train_fn (a function defined at module level, not a "
                f"lambda, a nested function or a notebook cell): {err}"
            ) from err
        finally:
            if device is not None:
                if previous is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = previous
        send.close()
        self._running[process.sentinel] = (process, receive, trial, device, time.perf_counter())

    def wait(self) -> list[TrialRecord]:
        """Block until a trial process ends; its record, or a ``FAILED`` one if the process died."""
        if not self._running:
            return []
        # waited on process sentinels (ints), so the ready ones are ints too
        ready = cast("list[int]", multiprocessing.connection.wait(list(self._running)))
        records = []
        for sentinel in ready:
            process, receive, trial, _, started = self._running.pop(sentinel)
            record = None
            if receive.poll():
                try:
                    record = receive.recv()
                except (EOFError, OSError):
                    record = None
            process.join()
            receive.close()
            if record is None:
                trial.load_reports()
                record = TrialRecord(
                    number=trial.number,
                    params=dict(trial.params),
                    state=TrialState.FAILED,
                    values=None,
                    reports=list(trial.reports),
                    seconds=time.perf_counter() - started,
                    error=f"the trial's process died with exit code {process.exitcode} "
                    "(a negative code is a signal: -9 is often the out-of-memory killer)",
                )
            records.append(record)
        return records

    def shutdown(self) -> None:
        """Terminate trials still running."""
        for process, receive, *_ in self._running.values():
            process.terminate()
            process.join(timeout=10)
            receive.close()
        self._running.clear()


def make_executor(executor: str | TrialExecutor, n_parallel: int, devices: Sequence[int | str] | None) -> TrialExecutor:
    """``"in_process"``, ``"subprocess"`` or a [`TrialExecutor`][lightning_geo.tuning.TrialExecutor] instance, as an
    executor.

    Raises:
        ValueError: for an unknown ``executor``, ``n_parallel`` above 1 in this process, or ``devices`` with an
            executor other than ``"subprocess"`` (which would ignore them).
        TypeError: for ``devices`` that are not a list of device ids.
    """
    _check_devices(devices)
    if devices is not None and executor != "subprocess":
        where = ("in this process the trial's Trainer picks its own devices (Trainer(devices=...) in train_fn)"
                 if executor == "in_process" else "your executor places its trials itself")
        raise ValueError(f"devices={list(devices)!r} applies only with executor='subprocess' (one process per device), "
                         f"not executor={executor!r}: {where}; drop devices= or pass executor='subprocess'")
    if isinstance(executor, TrialExecutor):
        return executor
    if executor == "in_process":
        if n_parallel != 1:
            raise ValueError(f"n_parallel={n_parallel} needs executor='subprocess' (or your own TrialExecutor)")
        return InProcessExecutor()
    if executor == "subprocess":
        return SubprocessExecutor(n_parallel, devices)
    raise ValueError(f"executor={executor!r} is not 'in_process', 'subprocess' or a TrialExecutor instance")
