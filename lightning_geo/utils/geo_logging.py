"""Log what GEO decides to every logger of a Trainer, as flat ``geo/<part>/<name>`` tags.

Every GEO part reports its decisions (thresholds, loss scales, plans, LR multipliers) through the
three functions here, so that a user finds them in one place in TensorBoard:

- [`log_geo_scalars`][lightning_geo.utils.log_geo_scalars] writes numbers to *all* of ``trainer.loggers`` (TensorBoard,
  CSV, W&B, ...).
- [`log_geo_histogram`][lightning_geo.utils.log_geo_histogram] and [`log_geo_text`][lightning_geo.utils.log_geo_text]
  write to TensorBoard loggers only; with other loggers they warn once per tag and do nothing.

During training all three follow the Trainer's ``log_every_n_steps`` cadence, as ``self.log`` does
(``throttle=False`` writes at once). All three act on global rank zero only and never communicate, so
calling them from any rank and any hook is safe under DDP. A Trainer without loggers (``logger=False``)
makes them silent no-ops. Their first write to a TensorBoard logger also writes the run's GEO dashboard, a
Custom Scalars layout with a section per GEO part the Trainer uses (see ``lightning_geo.utils.dashboard``).

Example:
    ```python
    from lightning_geo.utils import log_geo_scalars

    class MyCallback(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            log_geo_scalars(trainer, "curriculum", {"threshold": self.threshold})
    ```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from numbers import Real
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

if TYPE_CHECKING:
    import lightning.pytorch as pl

GEO_PARTS: tuple[str, ...] = ("curriculum", "sparsity", "precision", "strategy", "tuning", "batch", "optim")
"""The parts that may log under ``geo/``; each owns the tags below ``geo/<part>/``."""

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")
_warned_tags: set[str] = set()


def geo_tag(part: str, name: str) -> str:
    """Build the flat tag ``geo/<part>/<name>`` after checking both pieces.

    Args:
        part: One of [`GEO_PARTS`][lightning_geo.utils.GEO_PARTS].
        name: A metric name; may itself contain ``/`` (``"wte/row_density"``) but no empty piece,
            spaces or other characters TensorBoard would mangle.

    Raises:
        ValueError: if ``part`` is not one of [`GEO_PARTS`][lightning_geo.utils.GEO_PARTS] or ``name`` is malformed.
    """
    if part not in GEO_PARTS:
        raise ValueError(f"part={part!r} is not a GEO part; expected one of {list(GEO_PARTS)}")
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            f"name={name!r} is not a valid GEO metric name: use letters, digits, '_', '.', '-' and '/' "
            "between non-empty pieces"
        )
    return f"geo/{part}/{name}"


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning's own ``self.log`` uses for the logger x-axis (optimizer steps taken so far).

    GEO logs at the same step so that its curves line up with ``train/loss`` in TensorBoard, also with
    gradient accumulation, where ``trainer.global_step`` and the logged step can differ.
    """
    epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(epoch_loop, "_batches_that_stepped", None)
    return int(step) if step is not None else int(trainer.global_step)


def is_log_step(trainer: pl.Trainer) -> bool:
    """Whether this is a step on which Lightning itself writes training metrics (``log_every_n_steps``).

    Outside the training loop (setup, validation, fit start and end) every call counts as a logging step.
    """
    if not trainer.training:
        return True
    every = trainer.log_every_n_steps  # type: ignore[attr-defined]  # set on the Trainer by Lightning's logger connector
    if every == 0:
        return False
    return (logging_step(trainer) + 1) % every == 0 or trainer.should_stop


def _to_float(tag: str, value: object) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{tag}: expected a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().item())
    if isinstance(value, Real):
        return float(value)
    raise TypeError(f"{tag}: expected a number or a one-element tensor, got {type(value).__name__}")


def _should_write(trainer: pl.Trainer | None, throttle: bool) -> bool:
    if trainer is None or not trainer.loggers or not trainer.is_global_zero:
        return False
    return is_log_step(trainer) if throttle else True


def _dashboard_first(trainer: pl.Trainer, part: str | None) -> None:
    """Before the first write to a TensorBoard logger: the run's GEO dashboard (see ``dashboard``)."""
    from lightning_geo.utils.dashboard import _ensure_geo_dashboard  # dashboard imports this module

    _ensure_geo_dashboard(trainer, part)


def log_geo_scalars(
    trainer: pl.Trainer | None,
    part: str,
    values: Mapping[str, float | int | bool | torch.Tensor],
    *,
    step: int | None = None,
    throttle: bool = True,
) -> None:
    """Log GEO decisions as scalars ``geo/<part>/<name>`` to every logger of ``trainer``.

    Args:
        trainer: The running Trainer (``None`` or a Trainer without loggers: nothing happens).
        part: One of [`GEO_PARTS`][lightning_geo.utils.GEO_PARTS], e.g. ``"precision"``.
        values: ``{name: value}``; values are numbers, bools or one-element tensors (moved to the CPU).
        step: The x-axis step; default [`logging_step`][lightning_geo.utils.logging_step] (the step of Lightning's own
            logging).
        throttle: If ``True`` (default), calls inside the training loop write only on the Trainer's
            ``log_every_n_steps`` cadence (see [`is_log_step`][lightning_geo.utils.is_log_step]), like ``self.log``;
            pass ``False`` for a one-off decision that must not be dropped.

    Raises:
        ValueError: for an unknown ``part``, a malformed name or a tensor with more than one element.
        TypeError: for a value that is not a number.
    """
    tags = {geo_tag(part, name): value for name, value in values.items()}
    if trainer is None or not _should_write(trainer, throttle) or not tags:
        return
    metrics = {tag: _to_float(tag, value) for tag, value in tags.items()}
    _dashboard_first(trainer, part)
    step = logging_step(trainer) if step is None else step
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def _tensorboard_writers(trainer: pl.Trainer | None, tag: str, what: str, throttle: bool) -> list[Any]:
    """The ``SummaryWriter`` of each TensorBoard logger that should get ``tag`` now (empty: write nothing)."""
    if trainer is None or not _should_write(trainer, throttle):
        return []
    _dashboard_first(trainer, None)
    loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    if not loggers and tag not in _warned_tags:
        _warned_tags.add(tag)
        rank_zero_warn(
            f"GEO logs {what} {tag!r} to TensorBoard only, and this Trainer has no TensorBoardLogger; "
            "skipping it (this warning is shown once per tag)."
        )
    return [logger.experiment for logger in loggers]


def log_geo_histogram(
    trainer: pl.Trainer | None,
    part: str,
    name: str,
    values: torch.Tensor,
    *,
    step: int | None = None,
    throttle: bool = True,
) -> None:
    """Log a histogram ``geo/<part>/<name>`` of ``values`` to the Trainer's TensorBoard loggers.

    Args:
        trainer: The running Trainer (``None`` or no loggers: nothing happens).
        part: One of [`GEO_PARTS`][lightning_geo.utils.GEO_PARTS].
        name: The metric name (see [`geo_tag`][lightning_geo.utils.geo_tag]).
        values: Any tensor; it is flattened, detached and copied to the CPU as float32.
        step: The x-axis step; default [`logging_step`][lightning_geo.utils.logging_step].
        throttle: Write only on the ``log_every_n_steps`` cadence during training (default ``True``).
    """
    tag = geo_tag(part, name)
    writers = _tensorboard_writers(trainer, tag, "the histogram", throttle)
    if trainer is None or not writers:
        return
    data = values.detach().reshape(-1).float().cpu()
    step = logging_step(trainer) if step is None else step
    for writer in writers:
        writer.add_histogram(tag, data, global_step=step)


def log_geo_text(
    trainer: pl.Trainer | None,
    part: str,
    name: str,
    text: str,
    *,
    step: int | None = None,
    throttle: bool = True,
) -> None:
    """Log a text ``geo/<part>/<name>`` (Markdown, e.g. a plan table) to the Trainer's TensorBoard loggers.

    Args:
        trainer: The running Trainer (``None`` or no loggers: nothing happens).
        part: One of [`GEO_PARTS`][lightning_geo.utils.GEO_PARTS].
        name: The metric name (see [`geo_tag`][lightning_geo.utils.geo_tag]).
        text: Markdown text; TensorBoard renders tables and code blocks.
        step: The x-axis step; default [`logging_step`][lightning_geo.utils.logging_step].
        throttle: Write only on the ``log_every_n_steps`` cadence during training (default ``True``).
    """
    tag = geo_tag(part, name)
    writers = _tensorboard_writers(trainer, tag, "the text", throttle)
    if trainer is None or not writers:
        return
    step = logging_step(trainer) if step is None else step
    for writer in writers:
        writer.add_text(tag, text, global_step=step)
