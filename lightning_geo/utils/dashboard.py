"""The GEO dashboard: a TensorBoard *Custom Scalars* layout with one section per GEO part.

TensorBoard's *Scalars* tab sorts GEO's flat ``geo/<part>/<name>`` tags alphabetically, one chart per tag. The
*Custom Scalars* tab shows a layout instead: here one section (category) per GEO part, whose charts put the
curves that belong together on one set of axes (the curriculum's threshold, progress and mix ratio; the predicted
and the measured gradient amax; a density per parameter).

The layout is written automatically, **once per run**: the first time :func:`~lightning_geo.utils.log_geo_scalars`,
``log_geo_histogram`` or ``log_geo_text`` writes to a TensorBoard logger's ``SummaryWriter``, a layout with a
section for every GEO part the Trainer uses (found in ``trainer.callbacks``, ``trainer.precision_plugin`` and
``trainer.strategy``) goes to that writer first, and the writer is remembered so it never gets a second one. The
tuner's study run gets the ``tuning`` section when it is created. Nothing has to be added to a training script;
to write a Custom Scalars layout of your own as well, pass it as ``extra`` to :func:`write_geo_dashboard` before
``trainer.fit`` (a run shows one layout, so two separate ones would hide each other).

Why exactly once, and complete at once: the plugin keeps one layout per run and reads the *last* layout event it
finds (``custom_scalars_plugin.layout_impl`` reads one point, and TensorBoard's downsampling always keeps the
last). A later, smaller layout would hide sections; so the first one already has a section for every part the
Trainer uses, also for parts that log nothing until much later (the strategy logs at set-up, long before the
first curriculum step). The charts' tags are regular expressions that depend only on the part, never on the run
(``geo/sparsity/.+/row_density`` covers every parameter), so the layouts of different runs in one ``--logdir``
merge into the same sections, and a resumed run that writes the same layout again changes nothing.

Example::

    from lightning_geo.utils import geo_dashboard_layout

    writer.add_custom_scalars(geo_dashboard_layout(["curriculum", "precision"]))
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lightning.fabric.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from lightning_geo.utils.geo_logging import GEO_PARTS

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.utils.tensorboard import SummaryWriter

GEO_DASHBOARD_CHARTS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "curriculum": {
        "pacing: threshold, progress and mix ratio (0-1)": (r"^geo/curriculum/(threshold|progress|mix_ratio)$",),
        "mastery of the admitted samples (0-1)": (r"^geo/curriculum/mastery$",),
        "admitted samples (count)": (r"^geo/curriculum/admitted$",),
        "sequence length (tokens)": (r"^geo/curriculum/seq_len$",),
    },
    "sparsity": {
        "row density per parameter (share of rows with a gradient)": (r"^geo/sparsity/.+/row_density$",),
        "element density per parameter (share of non-zero gradient elements)": (
            r"^geo/sparsity/.+/element_density$",
        ),
        "LR multiplier per parameter": (r"^geo/sparsity/.+/lr_multiplier$",),
    },
    "precision": {
        "loss scale: global and per block": (r"^geo/precision/scale$", r"^geo/precision/block_scale/.+$"),
        "gradient amax: predicted vs actual (unscaled)": (r"^geo/precision/(predicted|actual)_amax$",),
        "skipped steps (total)": (r"^geo/precision/skipped_steps$",),
        "fp16 underflow: share of zeros, mean and worst layer": (
            r"^geo/precision/underflow_fraction(_worst)?$",
        ),
    },
    "strategy": {
        "mesh: replicate x shard x tensor, world size": (r"^geo/strategy/(replicate|shard|tensor|world_size)$",),
        "estimated communication per step (ms)": (r"^geo/strategy/est_comm_ms$",),
        "estimated memory per device (GB)": (r"^geo/strategy/est_memory_gb$",),
        "activation checkpointing (0/1) and plans compared": (
            r"^geo/strategy/(activation_checkpointing|candidates)$",
        ),
    },
    "tuning": {
        "objective per trial and best so far": (r"^geo/tuning/value/.+$", r"^geo/tuning/best_value$"),
        "seconds per trial and per suggestion": (r"^geo/tuning/(trial|ask)_seconds$",),
        "trials: complete, pruned, failed (count)": (r"^geo/tuning/num_(complete|pruned|failed)$",),
    },
}
"""``{part: {chart title: tag regexes}}``: the charts of each GEO part's section. Every scalar tag a part logs
matches a regex of its own part (TensorBoard tests them with ``re.match``); none is a catch-all."""

_written_writers: weakref.WeakSet[Any] = weakref.WeakSet()
"""The ``SummaryWriter`` objects that already got a layout (so that none gets a second one)."""
_layout_parts: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()
_warned_parts: set[str] = set()


def _title(part: str) -> str:
    """The title of a part's section in the Custom Scalars tab: ``"GEO <part>"``, e.g. ``"GEO curriculum"``."""
    return f"GEO {part}"


def _check_parts(parts: Iterable[str]) -> tuple[str, ...]:
    """``parts`` validated, without repeats, in :data:`GEO_PARTS` order."""
    if isinstance(parts, str):
        raise TypeError(f"parts must be a collection of part names, not the string {parts!r}; try [{parts!r}]")
    parts = list(parts)
    unknown = [p for p in parts if p not in GEO_PARTS]
    if unknown:
        raise ValueError(f"unknown GEO part(s) {unknown}; expected some of {list(GEO_PARTS)}")
    return tuple(p for p in GEO_PARTS if p in parts)


def geo_dashboard_layout(parts: Iterable[str] = GEO_PARTS) -> dict[str, dict[str, list[Any]]]:
    """The Custom Scalars layout for ``parts``, as ``SummaryWriter.add_custom_scalars`` takes it.

    Args:
        parts: GEO part names (see :data:`~lightning_geo.utils.GEO_PARTS`); default all of them. Order and
            repeats do not matter: sections follow the order of ``GEO_PARTS``. Empty: an empty layout.

    Returns:
        ``{"GEO <part>": {chart title: ["Multiline", [tag regex, ...]]}}``, one category per part.

    Raises:
        ValueError: if a name is not a GEO part.
        TypeError: if ``parts`` is a single string.

    Example::

        layout = geo_dashboard_layout(["precision"])
        # {"GEO precision": {"loss scale: global and per block": ["Multiline", ["^geo/precision/scale$", ...]], ...}}
    """
    return {
        _title(part): {title: ["Multiline", list(tags)] for title, tags in GEO_DASHBOARD_CHARTS[part].items()}
        for part in _check_parts(parts)
    }


def geo_parts_in(trainer: pl.Trainer) -> tuple[str, ...]:
    """The GEO parts a Trainer uses, in :data:`GEO_PARTS` order: ``"curriculum"`` for a
    :class:`~lightning_geo.callbacks.DynamicCurriculum` callback, ``"sparsity"`` for
    :class:`~lightning_geo.callbacks.SparsityAwareLR`, ``"precision"`` for a
    :class:`~lightning_geo.precision.PredictiveScalingPrecision` plugin and ``"strategy"`` for
    :class:`~lightning_geo.strategies.GeoHybridStrategy` (``"tuning"`` is never in a Trainer: the tuner
    writes its own study run).
    """
    # imported here: these modules import lightning_geo.utils themselves
    from lightning_geo.callbacks import DynamicCurriculum, SparsityAwareLR
    from lightning_geo.precision import PredictiveScalingPrecision
    from lightning_geo.strategies import GeoHybridStrategy

    callbacks = getattr(trainer, "callbacks", [])
    found = {
        "curriculum": any(isinstance(c, DynamicCurriculum) for c in callbacks),
        "sparsity": any(isinstance(c, SparsityAwareLR) for c in callbacks),
        "precision": isinstance(getattr(trainer, "precision_plugin", None), PredictiveScalingPrecision),
        "strategy": isinstance(getattr(trainer, "strategy", None), GeoHybridStrategy),
    }
    return tuple(part for part in GEO_PARTS if found.get(part, False))


def add_geo_dashboard(
    writer: SummaryWriter, parts: Iterable[str], *, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> bool:
    """Write the layout for ``parts`` (and ``extra``) to ``writer``, unless this writer already got one.

    For a ``SummaryWriter`` of your own (the tuner's study run uses it); Trainer runs get theirs from
    :func:`write_geo_dashboard`, automatically.

    Args:
        writer: A ``torch.utils.tensorboard.SummaryWriter`` (one run folder).
        parts: GEO part names; with no parts and no ``extra`` nothing is written (and a later call still may).
        extra: Categories of your own, ``{title: {chart title: ["Multiline", [tag regex, ...]]}}``, written in the
            same layout event: TensorBoard shows one layout per run (the last written), so a layout you wrote
            yourself before or after GEO's would hide one of the two. Default ``None``: none.

    Returns:
        ``True`` if the layout was written now, ``False`` if ``writer`` had one already or there was nothing to write.

    Raises:
        ValueError: if a name is not a GEO part, or a title in ``extra`` is one of the GEO sections'.
    """
    parts = _check_parts(parts)
    layout = _merge_extra(geo_dashboard_layout(parts), extra)
    if writer in _written_writers or not layout:
        return False
    writer.add_custom_scalars(layout)
    _written_writers.add(writer)
    _layout_parts[writer] = parts
    return True


def _merge_extra(
    layout: dict[str, dict[str, list[Any]]], extra: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, Any]:
    if extra is None:
        return layout
    clash = sorted(title for title in extra if title in {_title(part) for part in GEO_PARTS})
    if clash:
        raise ValueError(f"extra layout categories {clash} have the titles of GEO sections; rename them")
    return {**layout, **extra}


def write_geo_dashboard(
    trainer: pl.Trainer | None,
    *,
    parts: Iterable[str] | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> int:
    """Write the GEO layout to each TensorBoard logger of ``trainer`` that has none yet (global rank zero only).

    GEO's logging functions call this before their first write, so a run gets its layout without any code
    of yours. Call it yourself, before the first GEO log (``trainer.fit``), only to choose the sections or to
    add categories of your own.

    Args:
        trainer: The Trainer (``None``, no TensorBoard logger or a rank other than zero: nothing happens).
        parts: The sections to write; default ``None``: the parts the Trainer uses (:func:`geo_parts_in`).
        extra: Categories of your own written in the same layout (see :func:`add_geo_dashboard`); default none.

    Returns:
        How many writers got the layout now (0 when all had one already).

    Raises:
        ValueError: if a name in ``parts`` is not a GEO part, or a title in ``extra`` is one of the GEO sections'.

    Example::

        trainer = L.Trainer(callbacks=[DynamicCurriculum()], logger=TensorBoardLogger("runs"))
        write_geo_dashboard(trainer, extra={"mine": {"losses": ["Multiline", ["^train/loss$", "^val/loss$"]]}})
        trainer.fit(model)
    """
    if parts is not None:
        parts = _check_parts(parts)
    _merge_extra({}, extra)  # checked also when there is nothing to write
    writers = _pending_writers(trainer)
    if not writers:
        return 0
    parts = geo_parts_in(trainer) if parts is None else parts
    return sum(add_geo_dashboard(writer, parts, extra=extra) for writer in writers)


def _pending_writers(trainer: pl.Trainer | None) -> list[Any]:
    if trainer is None or not getattr(trainer, "is_global_zero", False):
        return []
    writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    return [writer for writer in writers if writer not in _written_writers]


def _ensure_geo_dashboard(trainer: pl.Trainer | None, part: str | None = None) -> None:
    """Called by GEO's logging functions before they write. On a writer's first use: the layout for the Trainer's
    parts and ``part`` (the part logging scalars now; a callback of the user's may log one that is not detected).
    Later: one warning if ``part`` logs scalars into a run whose layout has no section for it.
    """
    if _pending_writers(trainer):
        logging_now = () if part is None else (part,)
        write_geo_dashboard(trainer, parts=(*geo_parts_in(trainer), *logging_now))
    if part is None or part in _warned_parts or trainer is None:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and part not in _layout_parts.get(logger.experiment, (part,)):
            _warned_parts.add(part)
            rank_zero_warn(
                f"GEO logs geo/{part}/* scalars, but this run's GEO dashboard (TensorBoard's Custom Scalars tab) was "
                f"written without a {_title(part)!r} section (GEO writes one layout per run); the curves "
                "are in the Scalars tab. To get the section, call lightning_geo.utils.write_geo_dashboard(trainer, "
                "parts=[...]) before the first GEO log (this warning is shown once per part)."
            )
            return
