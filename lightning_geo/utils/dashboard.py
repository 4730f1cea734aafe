"""The GEO dashboard: a TensorBoard *Custom Scalars* layout with one section per GEO part.

TensorBoard's *Scalars* tab sorts GEO's flat ``geo/<part>/<name>`` tags alphabetically, one chart per tag. The
*Custom Scalars* tab shows a layout instead: here one section (category) per GEO part, whose charts put the
curves that belong together on one set of axes (the curriculum's threshold, progress and mix ratio; the predicted
and the measured gradient amax; a density per parameter).

**Each part declares its own section**, next to its code, as a class attribute ``geo_dashboard_section`` holding a
[`DashboardSection`][lightning_geo.utils.DashboardSection]. This module knows no part: it reads that attribute from
whatever the Trainer holds (every callback in ``trainer.callbacks``, ``trainer.precision_plugin`` and
``trainer.strategy``). A callback, precision plugin or strategy of your own adds a section of its own the same way:

```python
import lightning as L
from lightning_geo.utils import DashboardSection

class LossWatcher(L.Callback):
    geo_dashboard_section = DashboardSection(
        "my losses", {"train and val loss": (r"^train/loss$", r"^val/loss$")}
    )

trainer = L.Trainer(callbacks=[LossWatcher(), DynamicCurriculum()], logger=TensorBoardLogger("runs"))
# the run's layout: "GEO curriculum", then "my losses"
```

A GEO part builds its section with [`DashboardSection.for_part`][lightning_geo.utils.DashboardSection.for_part], which
titles it ``"GEO <part>"`` and makes it known by the part's name, so that
[`geo_dashboard_layout`][lightning_geo.utils.geo_dashboard_layout] and GEO's logging functions find it also for a run
that does not hold the part (``import lightning_geo`` imports the Trainer parts, so their sections are known).

The layout is written automatically, **once per run**: the first time
[`log_geo_scalars`][lightning_geo.utils.log_geo_scalars], ``log_geo_histogram`` or ``log_geo_text`` writes to a
TensorBoard logger's ``SummaryWriter``, a layout with the section of every object the Trainer holds that declares one
goes to that writer first, and the writer is remembered so it never gets a second one. The tuner's study run gets the
``tuning`` section when it is created. Nothing has to be added to a training script; to write a Custom Scalars layout of
your own as well, declare it as above or pass it as ``extra`` to
[`write_geo_dashboard`][lightning_geo.utils.write_geo_dashboard] before ``trainer.fit`` (a run shows one layout, so two
separate ones would hide each other).

Why exactly once, and complete at once: the plugin keeps one layout per run and reads the *last* layout event it
finds (``custom_scalars_plugin.layout_impl`` reads one point, and TensorBoard's downsampling always keeps the
last). A later, smaller layout would hide sections; so the first one already has a section for every part the
Trainer uses, also for parts that log nothing until much later (the strategy logs at set-up, long before the
first curriculum step). The charts' tags are regular expressions that depend only on the part, never on the run
(``geo/sparsity/.+/row_density`` covers every parameter), so the layouts of different runs in one ``--logdir``
merge into the same sections, and a resumed run that writes the same layout again changes nothing.

Example:
    ```python
    from lightning_geo.utils import geo_dashboard_layout

    writer.add_custom_scalars(geo_dashboard_layout(["curriculum", "precision"]))
    ```
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from lightning.fabric.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from lightning_geo.utils.geo_logging import GEO_PARTS

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.utils.tensorboard import SummaryWriter

SECTION_ATTRIBUTE = "geo_dashboard_section"
"""The class attribute (a [`DashboardSection`][lightning_geo.utils.DashboardSection]) by which a callback, precision
plugin or strategy declares its section of the dashboard."""


def _title(part: str) -> str:
    """The title of a part's section in the Custom Scalars tab: ``"GEO <part>"``, e.g. ``"GEO curriculum"``."""
    return f"GEO {part}"


@dataclass(frozen=True)
class DashboardSection:
    """One section (category) of the Custom Scalars tab: its title and its charts.

    Args:
        title: The section's title, e.g. ``"my losses"``. ``"GEO <part>"`` titles belong to GEO's parts (see
            [`for_part`][lightning_geo.utils.DashboardSection.for_part]).
        charts: ``{chart title: (tag regex, ...)}``; TensorBoard draws on a chart every scalar tag one of its
            regexes takes (``re.match``), all on one set of axes.

    Raises:
        TypeError: if ``charts`` is not a mapping or a chart's regexes are a single string.
        ValueError: if the title or ``charts`` is empty, a chart has no regex or a regex does not compile.

    Example:
        ```python
        DashboardSection("my losses", {"train and val loss": (r"^train/loss$", r"^val/loss$")})
        ```
    """

    title: str
    charts: Mapping[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        if not isinstance(self.title, str) or not self.title:
            raise ValueError(f"DashboardSection: title must be a non-empty string, got {self.title!r}")
        if not isinstance(self.charts, Mapping):
            raise TypeError(f"DashboardSection: charts must be a mapping {{chart title: (tag regex, ...)}}, got "
                            f"{type(self.charts).__name__}")
        if not self.charts:
            raise ValueError(f"DashboardSection {self.title!r}: charts is empty; give it at least one chart")
        charts: dict[str, tuple[str, ...]] = {}
        for chart, regexes in self.charts.items():
            if isinstance(regexes, str):
                raise TypeError(f"DashboardSection {self.title!r}: chart {chart!r} takes a sequence of tag regexes, "
                                f"not the string {regexes!r}; try ({regexes!r},)")
            if not regexes:
                raise ValueError(f"DashboardSection {self.title!r}: chart {chart!r} has no tag regex")
            for regex in regexes:
                try:
                    re.compile(regex)
                except (re.error, TypeError) as err:
                    raise ValueError(f"DashboardSection {self.title!r}: chart {chart!r} has the invalid tag regex "
                                     f"{regex!r} ({err})") from None
            charts[chart] = tuple(regexes)
        object.__setattr__(self, "charts", MappingProxyType(charts))

    @classmethod
    def for_part(cls, part: str, charts: Mapping[str, Sequence[str]]) -> DashboardSection:
        """The section of the GEO part ``part``, titled ``"GEO <part>"`` and known by the part's name from now on.

        Args:
            part: One of [`GEO_PARTS`][lightning_geo.utils.GEO_PARTS].
            charts: As for [`DashboardSection`][lightning_geo.utils.DashboardSection]; every regex should start with
                ``^geo/<part>/``.

        Raises:
            ValueError: if ``part`` is not a GEO part (and as for
                [`DashboardSection`][lightning_geo.utils.DashboardSection]).
        """
        if part not in GEO_PARTS:
            raise ValueError(f"part={part!r} is not a GEO part; expected one of {list(GEO_PARTS)}")
        section = cls(_title(part), {chart: tuple(regexes) for chart, regexes in charts.items()})
        _part_sections[part] = section  # a re-import (notebooks) declares it again: the last one counts
        return section

    def __reduce__(self) -> tuple[type[DashboardSection], tuple[str, dict[str, tuple[str, ...]]]]:
        # the charts are a read-only mapping proxy, which pickle cannot take (a section set on an instance
        # travels with it to ddp_spawn's processes)
        return type(self), (self.title, dict(self.charts))

    def layout(self) -> dict[str, list[Any]]:
        """The section's charts as ``SummaryWriter.add_custom_scalars`` takes them:
        ``{chart title: ["Multiline", [tag regex, ...]]}``."""
        return {chart: ["Multiline", list(regexes)] for chart, regexes in self.charts.items()}


_part_sections: dict[str, DashboardSection] = {}
"""``{part: section}`` for every GEO part whose section was declared
([`DashboardSection.for_part`][lightning_geo.utils.DashboardSection.for_part])."""

_TUNING_SECTION = DashboardSection.for_part(
    "tuning",
    {
        "objective per trial and best so far": (r"^geo/tuning/value/.+$", r"^geo/tuning/best_value$"),
        "seconds per trial and per suggestion": (r"^geo/tuning/(trial|ask)_seconds$",),
        "trials: complete, pruned, failed (count)": (r"^geo/tuning/num_(complete|pruned|failed)$",),
    },
)
"""The tuner's section. Declared here, not next to the tuner, for now: ``lightning_geo.tuning`` imports BoTorch, so
``import lightning_geo`` does not import it, and the section must be known without it (the tuner writes it to its
study run as ``add_geo_dashboard(writer, ["tuning"])``)."""


class _DeclaredCharts(Mapping[str, Mapping[str, tuple[str, ...]]]):
    """A read-only, live view ``{part: {chart title: tag regexes}}`` of the declared GEO sections."""

    def __getitem__(self, part: str) -> Mapping[str, tuple[str, ...]]:
        return _part_sections[part].charts

    def __iter__(self) -> Iterator[str]:
        return (part for part in GEO_PARTS if part in _part_sections)

    def __len__(self) -> int:
        return len(_part_sections)

    def __repr__(self) -> str:
        return repr(dict(self))


GEO_DASHBOARD_CHARTS: Mapping[str, Mapping[str, tuple[str, ...]]] = _DeclaredCharts()
"""``{part: {chart title: tag regexes}}``: the charts of each GEO part's section, as the parts declare them (a live,
read-only view). Every scalar tag a part logs matches a regex of its own part (TensorBoard tests them with
``re.match``); none is a catch-all."""

_written_writers: weakref.WeakSet[Any] = weakref.WeakSet()
"""The ``SummaryWriter`` objects that already got a layout (so that none gets a second one)."""
_layout_titles: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()
_warned_parts: set[str] = set()


def _check_parts(parts: Iterable[str]) -> tuple[str, ...]:
    """``parts`` validated, without repeats, in [`GEO_PARTS`][lightning_geo.utils.GEO_PARTS] order."""
    if isinstance(parts, str):
        raise TypeError(f"parts must be a collection of part names, not the string {parts!r}; try [{parts!r}]")
    parts = list(parts)
    unknown = [p for p in parts if p not in GEO_PARTS]
    if unknown:
        raise ValueError(f"unknown GEO part(s) {unknown}; expected some of {list(GEO_PARTS)}")
    undeclared = [p for p in parts if p not in _part_sections]
    if undeclared:
        raise ValueError(f"no dashboard section is declared for the GEO part(s) {undeclared}: import the part "
                         "(`import lightning_geo` imports every part a Trainer takes)")
    return tuple(p for p in GEO_PARTS if p in parts)


def _part_layout(parts: Iterable[str]) -> dict[str, dict[str, list[Any]]]:
    return {_title(part): _part_sections[part].layout() for part in parts}


def geo_dashboard_layout(parts: Iterable[str] | None = None) -> dict[str, dict[str, list[Any]]]:
    """The Custom Scalars layout for ``parts``, as ``SummaryWriter.add_custom_scalars`` takes it.

    Args:
        parts: GEO part names (see [`GEO_PARTS`][lightning_geo.utils.GEO_PARTS]); default ``None``: every part whose
            section is declared (after ``import lightning_geo``: all of them). Order and repeats do not matter:
            sections follow the order of ``GEO_PARTS``. Empty: an empty layout.

    Returns:
        ``{"GEO <part>": {chart title: ["Multiline", [tag regex, ...]]}}``, one category per part.

    Raises:
        ValueError: if a name is not a GEO part.
        TypeError: if ``parts`` is a single string.

    Example:
        ```python
        layout = geo_dashboard_layout(["precision"])
        # {"GEO precision": {"loss scale: global and per block": ["Multiline", ["^geo/precision/scale$", ...]], ...}}
        ```
    """
    return _part_layout(_check_parts(GEO_DASHBOARD_CHARTS if parts is None else parts))


def _optimizers(trainer: pl.Trainer) -> list[Any]:
    """The Trainer's optimizers, where its strategy has made them (none before set-up)."""
    try:
        return list(getattr(trainer, "optimizers", []))
    except (AttributeError, RuntimeError):
        return []


def dashboard_sections_in(trainer: pl.Trainer) -> tuple[DashboardSection, ...]:
    """The sections declared (``geo_dashboard_section``) by the callbacks, the precision plugin, the strategy and the
    optimizers of ``trainer``: GEO's in [`GEO_PARTS`][lightning_geo.utils.GEO_PARTS] order, then your own in the
    order the Trainer holds them.

    Raises:
        ValueError: if two objects declare different sections with one title.
    """
    holders = [*getattr(trainer, "callbacks", []), getattr(trainer, "precision_plugin", None),
               getattr(trainer, "strategy", None), *_optimizers(trainer)]
    found: dict[str, tuple[DashboardSection, Any]] = {}
    for holder in holders:
        section = getattr(holder, SECTION_ATTRIBUTE, None)
        if not isinstance(section, DashboardSection):
            continue
        if section.title in found and found[section.title][0] != section:
            other = type(found[section.title][1]).__name__
            raise ValueError(f"{other} and {type(holder).__name__} declare different dashboard sections titled "
                             f"{section.title!r}; rename one")
        found.setdefault(section.title, (section, holder))
    geo_titles = [_title(part) for part in GEO_PARTS]
    ordered = [title for title in geo_titles if title in found] + [t for t in found if t not in geo_titles]
    return tuple(found[title][0] for title in ordered)


def geo_parts_in(trainer: pl.Trainer) -> tuple[str, ...]:
    """The GEO parts a Trainer uses, in [`GEO_PARTS`][lightning_geo.utils.GEO_PARTS] order: those whose section one of
    its callbacks, its precision plugin or its strategy declares (``"curriculum"`` for a
    [`DynamicCurriculum`][lightning_geo.callbacks.DynamicCurriculum] callback, ``"precision"`` for a
    [`PredictiveScalingPrecision`][lightning_geo.precision.PredictiveScalingPrecision] plugin, ...; ``"tuning"`` is
    never in a Trainer: the tuner writes its own study run).
    """
    titles = {section.title for section in dashboard_sections_in(trainer)}
    return tuple(part for part in GEO_PARTS if _title(part) in titles)


def _layout(sections: Iterable[DashboardSection], extra: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    layout: dict[str, Any] = {section.title: section.layout() for section in sections}
    if extra is None:
        return layout
    clash = sorted(title for title in extra if title in {_title(part) for part in GEO_PARTS})
    if clash:
        raise ValueError(f"extra layout categories {clash} have the titles of GEO sections; rename them")
    clash = sorted(title for title in extra if title in layout)
    if clash:
        raise ValueError(f"extra layout categories {clash} have the titles of declared dashboard sections; rename them")
    return {**layout, **extra}


def _add_layout(writer: SummaryWriter, layout: dict[str, Any]) -> bool:
    if writer in _written_writers or not layout:
        return False
    writer.add_custom_scalars(layout)
    _written_writers.add(writer)
    _layout_titles[writer] = tuple(layout)
    return True


def add_geo_dashboard(
    writer: SummaryWriter, parts: Iterable[str], *, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> bool:
    """Write the layout for ``parts`` (and ``extra``) to ``writer``, unless this writer already got one.

    For a ``SummaryWriter`` of your own (the tuner's study run uses it); Trainer runs get theirs from
    [`write_geo_dashboard`][lightning_geo.utils.write_geo_dashboard], automatically.

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
    sections = [_part_sections[part] for part in _check_parts(parts)]
    return _add_layout(writer, _layout(sections, extra))


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
        parts: The GEO sections to write; default ``None``: the parts the Trainer uses
            ([`geo_parts_in`][lightning_geo.utils.geo_parts_in]). The sections your own callbacks, plugin or strategy
            declare are written either way.
        extra: Categories of your own written in the same layout (see
            [`add_geo_dashboard`][lightning_geo.utils.add_geo_dashboard]); default none.

    Returns:
        How many writers got the layout now (0 when all had one already).

    Raises:
        ValueError: if a name in ``parts`` is not a GEO part, or a title in ``extra`` is one of the GEO sections'.

    Example:
        ```python
        trainer = L.Trainer(callbacks=[DynamicCurriculum()], logger=TensorBoardLogger("runs"))
        write_geo_dashboard(trainer, extra={"mine": {"losses": ["Multiline", ["^train/loss$", "^val/loss$"]]}})
        trainer.fit(model)
        ```
    """
    if parts is not None:
        parts = _check_parts(parts)
    _layout((), extra)  # checked also when there is nothing to write
    if trainer is None:
        return 0
    writers = _pending_writers(trainer)
    if not writers:
        return 0
    return sum(_add_layout(writer, _trainer_layout(trainer, parts, extra)) for writer in writers)


def _trainer_layout(
    trainer: pl.Trainer, parts: Iterable[str] | None, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The sections ``trainer``'s objects declare, with the GEO ones replaced by ``parts`` if given."""
    declared = dashboard_sections_in(trainer)
    geo_titles = {_title(part) for part in GEO_PARTS}
    if parts is not None:
        own = [section for section in declared if section.title not in geo_titles]
        declared = (*(_part_sections[part] for part in _check_parts(parts)), *own)
    return _layout(declared, extra)


def _pending_writers(trainer: pl.Trainer | None) -> list[Any]:
    if trainer is None or not getattr(trainer, "is_global_zero", False):
        return []
    writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    return [writer for writer in writers if writer not in _written_writers]


def _ensure_geo_dashboard(trainer: pl.Trainer | None, part: str | None = None) -> None:
    """Called by GEO's logging functions before they write. On a writer's first use: the layout for the Trainer's
    sections and ``part`` (the part logging scalars now; a callback of the user's may log one that is not detected).
    Later: one warning if ``part`` logs scalars into a run whose layout has no section for it.
    """
    if trainer is None:
        return
    writers = _pending_writers(trainer)
    if writers:
        logging_now = () if part is None or part not in _part_sections else (part,)
        parts = (*geo_parts_in(trainer), *logging_now)
        for writer in writers:
            _add_layout(writer, _trainer_layout(trainer, parts))
    if part is None or part in _warned_parts:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and _title(part) not in _layout_titles.get(
            logger.experiment, (_title(part),)
        ):
            _warned_parts.add(part)
            rank_zero_warn(
                f"GEO logs geo/{part}/* scalars, but this run's GEO dashboard (TensorBoard's Custom Scalars tab) was "
                f"written without a {_title(part)!r} section (GEO writes one layout per run); the curves "
                "are in the Scalars tab. To get the section, call lightning_geo.utils.write_geo_dashboard(trainer, "
                "parts=[...]) before the first GEO log (this warning is shown once per part)."
            )
            return
