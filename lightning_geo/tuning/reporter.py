"""``TrialReporter``: the callback that reports a trial's validation metric and stops it when it is pruned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override


class ReportingTrial(Protocol):
    """What [`TrialReporter`][lightning_geo.tuning.TrialReporter] needs of a trial
    ([`Trial`][lightning_geo.tuning.Trial] is one): it depends on this, not on the trial module, so the two do not
    import each other."""

    number: int
    pruned: bool

    @property
    def monitor(self) -> Sequence[str]:
        """The monitored metric names, the reported one first (read-only here: a tuple satisfies it)."""

    def report(self, value: float, step: int) -> None:
        """Record the monitored metric's ``value`` at optimizer ``step``."""

    def should_prune(self) -> bool:
        """Whether the study's pruner stops this trial now."""


MONITOR_MISSING = "MonitorNotLoggedError"


class MonitorNotLoggedError(KeyError):
    """The monitored metric is not among the Trainer's ``callback_metrics``: a set-up mistake, which stops the
    study at once instead of failing every trial."""


def _is_last_validation(trainer: pl.Trainer) -> bool:
    """Whether training ends right after this validation (``max_steps`` reached or the last epoch's end)."""
    if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
    last_epoch = 0 < max_epochs <= trainer.current_epoch + 1
    return last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


class TrialReporter(Callback):
    """Report the monitored metric after every validation and stop the Trainer when the trial is pruned.

    Works under DDP: only global rank 0 reports and asks the pruner; its decision is broadcast, so every rank
    stops at the same validation (a rank-dependent stop would hang the others). Pruning sets
    ``trainer.should_stop``: the fit ends cleanly after the current step, checkpoints and loggers close as
    usual, and the tuner records the trial as ``PRUNED`` with its last reported value.

    Args:
        trial: The trial given to ``train_fn``; ``trial.reporter()`` builds this callback.

    Raises:
        MonitorNotLoggedError: (a ``KeyError``) at the first validation, if the monitored metric was not logged
            (the available ones are listed); ``GeoTuner`` then stops the study instead of tuning on nothing.

    Example:
        ```python
        def train_fn(config, trial):
            trainer = L.Trainer(max_epochs=5, callbacks=[trial.reporter()], logger=trial.logger())
            trainer.fit(MyModule(lr=config["lr"]), datamodule)
        ```
    """

    def __init__(self, trial: ReportingTrial) -> None:
        self.trial = trial

    @property
    def monitor(self) -> str:
        """The metric reported and pruned on (the study's first monitored metric)."""
        return self.trial.monitor[0]

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise MonitorNotLoggedError(
                f"TrialReporter: the monitored metric {self.monitor!r} was not logged; logged metrics are "
                f"{sorted(metrics)}. Log it with self.log({self.monitor!r}, ...) in validation, or set "
                "GeoTuner(monitor=...) to one of these."
            )
        prune = False
        if trainer.is_global_zero:
            self.trial.report(float(metrics[self.monitor]), step=trainer.global_step)
            # at the last validation pruning saves nothing and would only hide a finished result
            prune = not _is_last_validation(trainer) and self.trial.should_prune()
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.trial.pruned = True
            trainer.should_stop = True
            rank_zero_info(
                f"GeoTuner: trial {self.trial.number} pruned at step {trainer.global_step} "
                f"({self.monitor}={float(metrics[self.monitor]):.6g})"
            )
