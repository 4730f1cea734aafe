"""``RayExecutor``: ``GeoTuner``'s trials as Ray tasks, on one machine or a Ray cluster.

Each trial is one Ray task that runs [`run_trial`][lightning_geo.tuning.run_trial] with the resources
you ask for per trial (``num_gpus=1``: Ray places each trial on a free GPU and sets ``CUDA_VISIBLE_DEVICES``
for it). If the worker process dies in the middle of a trial (a killed node, the out-of-memory killer), Ray
runs the task again, up to ``max_retries`` times, from the start and with the same config and number; once
the retries are spent the trial is a ``FAILED`` record. Either way the study gets exactly one record per
trial: none is lost and none counted twice.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from lightning_geo.tuning.executors import TrainFn, TrialExecutor, run_trial
from lightning_geo.tuning.trial import Trial, TrialRecord, TrialState


def _run_on_worker(train_fn: TrainFn, trial: Trial) -> TrialRecord:
    """The task: a re-run after a dead worker starts from no reports (the dead attempt's are in the file)."""
    trial.reports_path.unlink(missing_ok=True)
    return run_trial(train_fn, trial)


class RayExecutor(TrialExecutor):
    """Run ``GeoTuner``'s trials as Ray tasks, up to ``n_parallel`` at once.

    Connects to the Ray instance of this process (``ray.init(...)`` first to pick a cluster; otherwise Ray
    starts a local one at the first trial). ``log_dir`` must be on a file system the workers share, as the
    trials write their reports and TensorBoard runs there.

    Args:
        n_parallel: Trials submitted at once. Default 1.
        num_cpus: CPUs Ray reserves per trial. Default 1.
        num_gpus: GPUs per trial (``1`` on GPU machines; a fraction shares a GPU). Default 0.
        max_retries: How many times a trial whose worker died is run again before it is a ``FAILED`` trial
            (a Python exception in ``train_fn`` is never retried: it is a failed trial at once). Default 1.
        resources: Extra custom Ray resources per trial, e.g. ``{"node:10.0.0.2": 0.01}``. Default none.

    Raises:
        ValueError: for a non-positive ``n_parallel``, negative ``num_cpus``/``num_gpus``/``max_retries``.

    Example:
        ```python
        ray.init(address="auto")
        tuner = GeoTuner(space, max_trials=40, executor=RayExecutor(n_parallel=8, num_gpus=1), log_dir="/shared/tuning")
        tuner.search(train_fn)
        ```
    """

    def __init__(
        self,
        n_parallel: int = 1,
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        max_retries: int = 1,
        resources: dict[str, float] | None = None,
    ) -> None:
        if isinstance(n_parallel, bool) or not isinstance(n_parallel, int) or n_parallel < 1:
            raise ValueError(f"n_parallel={n_parallel!r} must be a positive integer")
        for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative number")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r} must be a non-negative integer")
        self.n_parallel = n_parallel
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.max_retries = max_retries
        self.resources = dict(resources or {})
        self._task: Any = None
        self._running: dict[Any, tuple[Trial, float]] = {}  # object ref -> trial, start time

    def submit(self, train_fn: TrainFn, trial: Trial) -> None:
        """Start the trial as a Ray task (queued by Ray until a worker with its resources is free)."""
        if self._task is None:
            # no custom resources: the option left out (Ray's default, None), as its type hints want a dict
            extra: dict[str, Any] = {"resources": self.resources} if self.resources else {}
            self._task = ray.remote(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries, **extra
            )(_run_on_worker)
        self._running[self._task.remote(train_fn, trial)] = (trial, time.perf_counter())

    def wait(self) -> list[TrialRecord]:
        """Block until a trial's task ends; its record, or a ``FAILED`` one if the task could not finish."""
        if not self._running:
            return []
        done, _ = ray.wait(list(self._running), num_returns=1)
        records = []
        for ref in done:
            trial, started = self._running.pop(ref)
            try:
                records.append(ray.get(ref))
            except ray.exceptions.RayError as err:
                trial.load_reports()
                records.append(TrialRecord(
                    number=trial.number, params=dict(trial.params), state=TrialState.FAILED, values=None,
                    reports=list(trial.reports), seconds=time.perf_counter() - started,
                    error=f"the trial's Ray task failed after {self.max_retries} retries: {type(err).__name__}: {err}",
                ))
        return records

    def shutdown(self) -> None:
        """Cancel the trials still running (their workers are stopped)."""
        for ref in self._running:
            ray.cancel(ref, force=True)
        self._running.clear()
