"""Keep step-interval LR schedulers still on an optimizer step that was skipped.

Lightning steps the ``interval="step"`` schedulers after every training batch, whether the optimizer
stepped or not. After a skipped step that advances the schedule past the optimizer (and, on the first
step, makes torch warn "lr_scheduler.step() before optimizer.step()"; pytorch #44511, Lightning #5558).

``hold_step_schedulers`` swaps each such scheduler in ``trainer.lr_scheduler_configs`` for a
stand-in whose ``step()`` does nothing but put the real scheduler back. Everything else (``state_dict``,
``get_last_lr``, ``optimizer``, ...) is forwarded, so callbacks and checkpoints that run in between see
the real scheduler's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.types import LRSchedulerConfig


class _HeldScheduler:
    """Stands in for a scheduler for one skipped step: ``step()`` restores it without stepping."""

    def __init__(self, scheduler: Any, config: LRSchedulerConfig) -> None:
        self.__dict__["_held"] = scheduler
        self.__dict__["_config"] = config

    def step(self, *args: Any, **kwargs: Any) -> None:
        self._config.scheduler = self._held

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_held"], name)


def hold_step_schedulers(trainer: pl.Trainer) -> None:
    """Make the next ``step()`` of every non-plateau, step-interval scheduler of ``trainer`` a no-op."""
    for config in trainer.lr_scheduler_configs:
        held = isinstance(config.scheduler, _HeldScheduler)
        if config.interval == "step" and not config.reduce_on_plateau and not held:
            config.scheduler = _HeldScheduler(config.scheduler, config)  # type: ignore[assignment]  # a stand-in


def release_schedulers(trainer: pl.Trainer) -> None:
    """Put back every scheduler still held (one whose ``step()`` Lightning did not call this batch)."""
    for config in trainer.lr_scheduler_configs:
        if isinstance(config.scheduler, _HeldScheduler):
            config.scheduler = config.scheduler._held
