"""The GEO dashboard (TensorBoard's Custom Scalars layout): its charts, written once per run with a section per part
the run uses, covering every scalar tag real runs log, and served by a real ``tensorboard`` process."""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.tensorboard import SummaryWriter

from lightning_geo.callbacks import BatchSizeSchedule, DynamicCurriculum, SparsityAwareLR
from lightning_geo.demo.config import DemoConfig
from lightning_geo.demo.plot import read_scalars
from lightning_geo.demo.run import run_demo
from lightning_geo.optim import GeoMuon
from lightning_geo.precision import PredictiveScalingPrecision
from lightning_geo.strategies import GeoHybridStrategy
from lightning_geo.tuning import Categorical, Float, GeoTuner, SearchSpace
from lightning_geo.utils import (
    GEO_DASHBOARD_CHARTS,
    GEO_PARTS,
    DashboardSection,
    add_geo_dashboard,
    dashboard_sections_in,
    geo_dashboard_layout,
    geo_parts_in,
    log_geo_scalars,
    write_geo_dashboard,
)
from lightning_geo.utils import dashboard as dashboard_module
from tests.helpers import TinyModel, fit_tiny, free_port, tiny_trainer

LAYOUT_TAG = "custom_scalars__config__"  # the tag under which SummaryWriter.add_custom_scalars writes the layout


# ----------------------------------------------------------------------------------------------- reading event files


def _summary_values(run_dir: Path) -> list[Any]:
    """Every summary value (tag and payload) in a run folder's event files, in the order they were written."""
    values = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            values.extend(event.summary.value)
    return values


def _layouts(run_dir: Path) -> list[dict[str, dict[str, list[str]]]]:
    """Each layout event of the run as ``{category: {chart: [tag regex, ...]}}``."""
    layouts = []
    for value in _summary_values(run_dir):
        if value.tag == LAYOUT_TAG:
            proto = layout_pb2.Layout()
            proto.ParseFromString(value.tensor.string_val[0])
            layouts.append({c.title: {ch.title: list(ch.multiline.tag) for ch in c.chart} for c in proto.category})
    return layouts


def _event_tags(run_dir: Path) -> dict[str, list[str]]:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator.Tags()


def _part(tag: str) -> str:
    return tag.split("/")[1]


def _charts_matching(layout: dict[str, dict[str, list[str]]], part: str, tag: str) -> list[str]:
    """The charts of ``part``'s section whose regexes take ``tag`` (``re.match``, as the plugin does)."""
    charts = layout.get(f"GEO {part}", {})
    return [title for title, regexes in charts.items() if any(re.match(r, tag) for r in regexes)]


def _regexes(layout: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[str]]]:
    """``{category: {chart: ["Multiline", regexes]}}`` as ``{category: {chart: regexes}}``."""
    return {title: {chart: regexes for chart, (_, regexes) in charts.items()} for title, charts in layout.items()}


# ------------------------------------------------------------------------------------------------------ the layout


def test_layout_has_one_section_per_part_in_geo_parts_order():
    assert list(geo_dashboard_layout()) == [f"GEO {part}" for part in GEO_PARTS]
    layout = geo_dashboard_layout(["tuning", "curriculum", "tuning"])
    assert list(layout) == ["GEO curriculum", "GEO tuning"]
    assert geo_dashboard_layout([]) == {}
    assert set(GEO_DASHBOARD_CHARTS) == set(GEO_PARTS)


def test_every_chart_is_a_multiline_chart_of_valid_anchored_regexes_of_its_own_part():
    for title, charts in geo_dashboard_layout().items():
        part = title.removeprefix("GEO ")
        assert charts, f"{title} has no chart"
        for chart, (kind, regexes) in charts.items():
            assert kind == "Multiline" and regexes, chart
            for regex in regexes:
                re.compile(regex)  # raises on an invalid one
                assert regex.startswith(f"^geo/{part}/") and regex.endswith("$"), (chart, regex)


@pytest.mark.parametrize("part", GEO_PARTS)
def test_no_chart_is_a_catch_all_and_none_takes_another_parts_tags(part):
    layout = _regexes(geo_dashboard_layout())
    assert not _charts_matching(layout, part, f"geo/{part}/not_a_geo_metric")
    other = next(p for p in GEO_PARTS if p != part)
    for regexes in layout[f"GEO {other}"].values():
        assert not any(re.match(r, f"geo/{part}/threshold") for r in regexes)


@pytest.mark.parametrize(
    ("tag", "chart"),
    [
        ("geo/curriculum/mix_ratio", "pacing: threshold, progress and mix ratio (0-1)"),
        ("geo/curriculum/threshold", "pacing: threshold, progress and mix ratio (0-1)"),
        ("geo/curriculum/admitted", "admitted samples (count)"),
        ("geo/sparsity/model.wte.weight/row_density", "row density per parameter (share of rows with a gradient)"),
        ("geo/sparsity/emb/lr_multiplier", "LR multiplier per parameter"),
        ("geo/precision/block_scale/model.blocks.0", "loss scale: global and per block"),
        ("geo/precision/predicted_amax", "gradient amax: predicted vs actual (unscaled)"),
        ("geo/strategy/shard", "mesh: replicate x shard x tensor, world size"),
        ("geo/tuning/value/val_loss", "objective per trial and best so far"),
    ],
)
def test_tags_that_belong_together_share_one_chart(tag, chart):
    assert _charts_matching(_regexes(geo_dashboard_layout()), _part(tag), tag) == [chart]


def test_bad_parts_are_rejected_naming_the_value(tmp_path):
    with pytest.raises(ValueError, match=r"unknown GEO part\(s\) \['precison'\]; expected some of \['curriculum'"):
        geo_dashboard_layout(["curriculum", "precison"])
    with pytest.raises(TypeError, match="not the string 'precision'; try \\['precision'\\]"):
        geo_dashboard_layout("precision")
    with SummaryWriter(tmp_path) as writer, pytest.raises(ValueError, match="unknown GEO part"):
        add_geo_dashboard(writer, ["geo"])
    with pytest.raises(ValueError, match="unknown GEO part"):
        write_geo_dashboard(None, parts=["loss"])
    with pytest.raises(ValueError, match=r"categories \['GEO strategy'\] have the titles of GEO sections"):
        write_geo_dashboard(None, extra={"GEO strategy": {}, "mine": {}})


# ------------------------------------------------------------------------------- sections declared by the parts


@pytest.mark.parametrize(
    ("part", "owner"),
    [("curriculum", DynamicCurriculum), ("sparsity", SparsityAwareLR), ("precision", PredictiveScalingPrecision),
     ("strategy", GeoHybridStrategy)],
)
def test_each_trainer_part_declares_its_own_section(part, owner):
    section = owner.geo_dashboard_section
    assert section.title == f"GEO {part}"
    assert section.charts == GEO_DASHBOARD_CHARTS[part]
    assert geo_dashboard_layout([part]) == {section.title: section.layout()}


class LossCharts(pl.Callback):
    """A user's callback adding a section of its own to the GEO dashboard."""

    geo_dashboard_section = DashboardSection("my losses", {"train and val": (r"^train/loss$", r"^val/loss$")})


def test_a_callback_of_yours_adds_its_section_after_the_geo_ones(tmp_path):
    trainer = fit_tiny(tmp_path, strategy=GeoHybridStrategy(), callbacks=[LossCharts(), LossCharts()])
    assert geo_parts_in(trainer) == ("strategy",)
    assert [s.title for s in dashboard_sections_in(trainer)] == ["GEO strategy", "my losses"]
    layouts = _layouts(Path(trainer.logger.log_dir))
    assert [list(layout) for layout in layouts] == [["GEO strategy", "my losses"]]
    assert layouts[0]["my losses"] == {"train and val": ["^train/loss$", "^val/loss$"]}


def test_a_section_is_checked_when_it_is_declared_and_travels_with_pickle():
    section = LossCharts.geo_dashboard_section
    assert pickle.loads(pickle.dumps(section)) == section  # set on an instance, it goes to ddp_spawn's processes
    with pytest.raises(TypeError, match=r"chart 'loss' takes a sequence of tag regexes, not the string '\^loss\$'"):
        DashboardSection("mine", {"loss": "^loss$"})
    with pytest.raises(ValueError, match=r"chart 'loss' has the invalid tag regex '\(loss'"):
        DashboardSection("mine", {"loss": ("(loss",)})
    with pytest.raises(ValueError, match="charts is empty"):
        DashboardSection("mine", {})
    with pytest.raises(ValueError, match=r"part='loss' is not a GEO part"):
        DashboardSection.for_part("loss", {"loss": ("^geo/loss/x$",)})

    class Clash(pl.Callback):
        geo_dashboard_section = DashboardSection("my losses", {"other": ("^other$",)})

    trainer = pl.Trainer(callbacks=[LossCharts(), Clash()], logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="LossCharts and Clash declare different dashboard sections titled 'my lo"):
        dashboard_sections_in(trainer)


# ------------------------------------------------------------------------------------------- written once per run


def test_a_writer_gets_one_layout_and_an_empty_one_is_not_written(tmp_path):
    with SummaryWriter(tmp_path) as writer:
        assert not add_geo_dashboard(writer, [])  # nothing written, so a later call still may
        assert add_geo_dashboard(writer, ["tuning"])
        assert not add_geo_dashboard(writer, ["curriculum", "tuning"])
    assert [list(layout) for layout in _layouts(tmp_path)] == [["GEO tuning"]]


def test_the_first_geo_write_has_a_section_for_every_part_the_trainer_uses(tmp_path):
    """The strategy logs at set-up, long before the precision plugin's first step: the layout, written by that
    first write, already has the precision section; the CSV logger next to TensorBoard gets nothing extra."""
    loggers = [TensorBoardLogger(tmp_path, name="tb", version=0), CSVLogger(tmp_path, name="csv", version=0)]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = fit_tiny(tmp_path, strategy=GeoHybridStrategy(), plugins=[PredictiveScalingPrecision("16-mixed")],
                           logger=loggers)
    assert not [w for w in record if "GEO dashboard" in str(w.message)]
    assert geo_parts_in(trainer) == ("precision", "strategy")
    run_dir = Path(loggers[0].log_dir)
    assert [list(layout) for layout in _layouts(run_dir)] == [["GEO precision", "GEO strategy"]]
    tags = [value.tag for value in _summary_values(run_dir)]
    assert tags.index(LAYOUT_TAG) < min(i for i, tag in enumerate(tags) if tag.startswith("geo/"))
    assert write_geo_dashboard(trainer) == 0  # this run has its layout


class ScalarLogger(pl.Callback):
    """Logs ``geo/<part>/<name>`` scalars itself, as a user's callback may, without being a detectable GEO part."""

    def __init__(self, part: str, name: str) -> None:
        self.part, self.name = part, name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        log_geo_scalars(trainer, self.part, {self.name: float(batch_idx)})


def test_a_part_logging_first_gets_its_section_and_one_logging_after_the_layout_warns_once(tmp_path, monkeypatch):
    monkeypatch.setattr(dashboard_module, "_warned_parts", set())
    trainer = fit_tiny(tmp_path / "first", callbacks=[ScalarLogger("precision", "scale")])
    assert geo_parts_in(trainer) == ()
    assert [list(layout) for layout in _layouts(Path(trainer.logger.log_dir))] == [["GEO precision"]]

    with pytest.warns(UserWarning, match="without a 'GEO precision' section") as record:
        trainer = fit_tiny(tmp_path / "later", strategy=GeoHybridStrategy(),
                           callbacks=[ScalarLogger("precision", "scale")])
    assert len([w for w in record if "GEO dashboard" in str(w.message)]) == 1  # 4 steps, one warning
    assert [list(layout) for layout in _layouts(Path(trainer.logger.log_dir))] == [["GEO strategy"]]


def test_write_geo_dashboard_before_fitting_chooses_the_sections_adds_yours_and_nothing_is_written_twice(tmp_path):
    trainer = tiny_trainer(tmp_path, strategy=GeoHybridStrategy())
    mine = {"my losses": {"train and val": ["Multiline", ["^train/loss$", "^val/loss$"]]}}
    assert write_geo_dashboard(trainer, parts=["strategy", "tuning"], extra=mine) == 1
    trainer.fit(TinyModel())
    layouts = _layouts(Path(trainer.logger.log_dir))
    assert [list(layout) for layout in layouts] == [["GEO strategy", "GEO tuning", "my losses"]]
    assert layouts[0]["my losses"] == {"train and val": ["^train/loss$", "^val/loss$"]}
    assert write_geo_dashboard(tiny_trainer(tmp_path / "no_tb", logger=False)) == 0


# ------------------------------------------------------------------------------------- real runs of every GEO part


def _report_and_return(config: dict[str, Any], trial: Any) -> float:
    value = (math.log10(config["lr"]) + 1.5) ** 2 + (0.1 if config["width"] == 4 else 0.0)
    trial.report(value + 1.0, step=1)
    return value


class _MuonTinyModel(TinyModel):
    """TinyModel on GeoMuon (its hidden matrices on Muon), for the optimizer's dashboard section."""

    def configure_optimizers(self) -> GeoMuon:
        return GeoMuon(self, lr=0.01)


@pytest.fixture(scope="module")
def geo_runs(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """One log root with a run of every GEO part: the ``--geo`` demo under 16-mixed (curriculum, sparsity,
    precision, and the strategy where the demo trains with ``geo_hybrid``), a ``geo_hybrid`` fit, a fit with
    ``GeoMuon`` and ``BatchSizeSchedule`` and a tuner study.

    Returns:
        The log root and ``{name: run folder}``.
    """
    root = tmp_path_factory.mktemp("geo_runs")
    demo = run_demo(DemoConfig(geo=True, precision="16-mixed", steps=30, val_every=15, batch_size=8, seq_len=32,
                               n_layer=2, n_embd=32, n_head=2, val_samples=16, out=str(root), progress_bar=False,
                               sample_chars=0, max_minutes=5))
    strategy = fit_tiny(root / "strategy", strategy=GeoHybridStrategy())
    long_run = fit_tiny(root / "with_muon_and_batch", model=_MuonTinyModel(), max_steps=6,
                        callbacks=[BatchSizeSchedule(estimate_every=1, ema=0.5)])
    space = SearchSpace({"lr": Float(1e-3, 1.0, log=True), "width": Categorical([4, 16])})
    GeoTuner(space, max_trials=2, log_dir=root / "tuning", study_name="quadratic", pruner=None,
             verbose=False).search(_report_and_return)
    return root, {"demo": demo.log_dir, "strategy": Path(strategy.logger.log_dir),
                  "long_run": Path(long_run.logger.log_dir),
                  "tuning": root / "tuning" / "quadratic" / "study"}


def test_every_geo_scalar_of_real_runs_is_on_a_chart_of_its_parts_section(geo_runs):
    _, runs = geo_runs
    parts_seen = set()
    for name, run_dir in runs.items():
        layouts = _layouts(run_dir)
        assert len(layouts) == 1, f"{name}: {len(layouts)} layouts; one per run expected"
        layout = layouts[0]
        geo_tags = [tag for tag in _event_tags(run_dir)["scalars"] if tag.startswith("geo/")]
        parts = {_part(tag) for tag in geo_tags}
        assert set(layout) == {f"GEO {part}" for part in parts}, name  # a section for each part, no other
        unmatched = [tag for tag in geo_tags if not _charts_matching(layout, _part(tag), tag)]
        assert not unmatched, f"{name}: scalar tags on no chart of their part's section: {unmatched}"
        tags = [value.tag for value in _summary_values(run_dir)]
        assert tags.index(LAYOUT_TAG) < min(i for i, tag in enumerate(tags) if tag.startswith("geo/")), name
        parts_seen |= parts
    assert parts_seen == set(GEO_PARTS)
    demo_tags = set(read_scalars(runs["demo"]))
    # the demo logs its first scalars at the first step; its layout (checked above) came before them
    assert {"geo/curriculum/seq_len", "geo/sparsity/model.wte.weight/row_density", "geo/precision/scale"} <= demo_tags


# ------------------------------------------------------------------------------------------ a real tensorboard


def _get(base: str, route: str, **query: str) -> Any:
    url = f"{base}{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def tensorboard(geo_runs, tmp_path):
    """A ``tensorboard`` process serving the log root of ``geo_runs``; yields its base URL and its stderr file."""
    root, _ = geo_runs
    port = free_port()
    stderr = tmp_path / "tensorboard.stderr"
    with open(stderr, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", "127.0.0.1",
             "--port", str(port), "--load_fast=false", "--reload_interval", "1"],
            stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        yield f"http://127.0.0.1:{port}", process, stderr
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _served_scalar_tags(base: str) -> dict[str, list[str]]:
    return {run: list(tags) for run, tags in _get(base, "/data/plugin/scalars/tags").items()}


def test_tensorboard_serves_every_geo_tag_and_the_dashboard(geo_runs, tensorboard):
    root, runs = geo_runs
    base, process, stderr = tensorboard
    expected = {}  # {run name as TensorBoard names it: its event-file tags}
    for run_dir in runs.values():
        tags = _event_tags(run_dir)
        expected[run_dir.relative_to(root).as_posix()] = {
            kind: sorted(t for t in tags[kind] if t.startswith("geo/")) for kind in ("scalars", "histograms", "tensors")
        }

    def missing_scalars() -> list[str]:
        served = _served_scalar_tags(base)
        return [f"{run}:{tag}" for run, tags in expected.items() for tag in tags["scalars"]
                if tag not in served.get(run, [])]

    deadline, missing = time.monotonic() + 60, ["(no answer yet)"]
    while missing and time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(urllib.error.URLError, ConnectionError):  # not listening yet
            missing = missing_scalars()
        time.sleep(0.5)
    assert not missing, f"tensorboard did not serve {missing[:5]} within 60 s; stderr:\n{stderr.read_text()[-3000:]}"

    histograms = _get(base, "/data/plugin/histograms/tags")
    texts = _get(base, "/data/plugin/text/tags")
    for run, tags in expected.items():
        assert set(tags["histograms"]) <= set(histograms.get(run, {})), run
        text_tags = [t for t in tags["tensors"] if t.endswith("/text_summary")]
        assert set(text_tags) <= set(texts.get(run, [])), run
    assert any(tags["histograms"] for tags in expected.values())
    assert any(t.endswith("/text_summary") for tags in expected.values() for t in tags["tensors"])

    # the merged layout of all runs: one section per GEO part, each once, with the charts written
    layout = _get(base, "/data/plugin/custom_scalars/layout")
    assert [c["title"] for c in layout["category"]] == [f"GEO {part}" for part in GEO_PARTS]
    served = {c["title"]: {ch["title"]: ch["multiline"]["tag"] for ch in c["chart"]} for c in layout["category"]}
    assert served == _regexes(geo_dashboard_layout())

    # what the Custom Scalars tab draws: each chart's regex query; together they show every GEO scalar of a run
    for run, tags in expected.items():
        drawn = set()
        for title in {f"GEO {_part(tag)}" for tag in tags["scalars"]}:
            for regexes in served[title].values():
                for regex in regexes:
                    answer = _get(base, "/data/plugin/custom_scalars/scalars", run=run, tag=regex)
                    assert answer["regex_valid"], regex
                    drawn |= set(answer["tag_to_events"])
        assert drawn == set(tags["scalars"]), run

    run, tag = runs["demo"].relative_to(root).as_posix(), "geo/curriculum/threshold"
    series = _get(base, "/data/plugin/scalars/scalars", run=run, tag=tag)
    assert [(step, value) for _, step, value in series] == read_scalars(runs["demo"], [tag])[tag]
