"""GEO decisions reach every logger as flat geo/<part>/<name> tags, on rank zero only, without warning storms."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_geo.demo.plot import read_scalars
from lightning_geo.utils import geo_logging, geo_tag, log_geo_histogram, log_geo_scalars, log_geo_text
from tests.helpers import fit_tiny


class DecisionLogger(pl.Callback):
    """Logs a scalar, a histogram and a text from inside the training loop, like a GEO part would."""

    def __init__(self, throttle: bool = True) -> None:
        self.throttle = throttle

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        log_geo_scalars(
            trainer, "precision", {"loss_scale": 2.0**batch_idx, "skipped": torch.tensor(0)}, throttle=self.throttle
        )
        log_geo_histogram(trainer, "sparsity", "wte/row_hits", torch.arange(10.0), throttle=self.throttle)
        log_geo_text(trainer, "strategy", "plan", f"| mesh | step {batch_idx} |", throttle=self.throttle)


def _event_tags(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_scalars_histograms_and_text_at_lightnings_step(tmp_path):
    trainer = fit_tiny(tmp_path, callbacks=[DecisionLogger()])
    scalars = read_scalars(trainer.logger.log_dir)
    assert [v for _, v in scalars["geo/precision/loss_scale"]] == [1.0, 2.0, 4.0, 8.0]
    # Same x-axis as the model's own self.log("train/loss") of the same batch.
    assert [s for s, _ in scalars["geo/precision/loss_scale"]] == [s for s, _ in scalars["train/loss"]]
    acc = _event_tags(Path(trainer.logger.log_dir))
    assert "geo/sparsity/wte/row_hits" in acc.Tags()["histograms"]
    assert any(tag.startswith("geo/strategy/plan") for tag in acc.Tags()["tensors"])


def test_throttle_follows_log_every_n_steps_unless_disabled(tmp_path):
    trainer = fit_tiny(tmp_path / "a", callbacks=[DecisionLogger()], max_steps=6, log_every_n_steps=3)
    steps = [s for s, _ in read_scalars(trainer.logger.log_dir)["geo/precision/loss_scale"]]
    assert steps == [2, 5]
    trainer = fit_tiny(tmp_path / "b", callbacks=[DecisionLogger(throttle=False)], max_steps=6, log_every_n_steps=3)
    steps = [s for s, _ in read_scalars(trainer.logger.log_dir)["geo/precision/loss_scale"]]
    assert steps == [0, 1, 2, 3, 4, 5]


def test_non_tensorboard_logger_gets_scalars_and_one_warning_per_tag(tmp_path, monkeypatch):
    monkeypatch.setattr(geo_logging, "_warned_tags", set())
    logger = CSVLogger(tmp_path, name="csv", version=0)
    with pytest.warns(UserWarning) as record:
        fit_tiny(tmp_path, callbacks=[DecisionLogger()], logger=logger, max_steps=6)
    geo_warnings = [w for w in record if "TensorBoard only" in str(w.message)]
    assert len(geo_warnings) == 2  # one for the histogram tag, one for the text tag, not one per step
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("geo/precision/loss_scale")]
    assert [float(r["geo/precision/loss_scale"]) for r in rows] == [1, 2, 4, 8, 16, 32]


def test_no_logger_is_silent(tmp_path, monkeypatch):
    monkeypatch.setattr(geo_logging, "_warned_tags", set())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit_tiny(tmp_path, callbacks=[DecisionLogger()], logger=False)
    assert not [w for w in record if "GEO" in str(w.message)]
    log_geo_scalars(None, "precision", {"loss_scale": 1.0})  # no Trainer at all: also a no-op


@pytest.mark.parametrize(
    ("part", "name", "match"),
    [
        ("precison", "loss_scale", "part='precison' is not a GEO part"),
        ("precision", "", "name='' is not a valid"),
        ("precision", "a//b", "name='a//b' is not a valid"),
        ("precision", "loss scale", "name='loss scale' is not a valid"),
    ],
)
def test_bad_tags_are_rejected_naming_the_value(part, name, match):
    with pytest.raises(ValueError, match=match):
        geo_tag(part, name)


def test_bad_values_are_rejected_even_without_a_logger(tmp_path):
    trainer = fit_tiny(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match=r"geo/precision/scale: expected a scalar, got a tensor of shape \(2,\)"):
        log_geo_scalars(trainer, "precision", {"scale": torch.ones(2)})
    with pytest.raises(TypeError, match="expected a number"):
        log_geo_scalars(trainer, "precision", {"scale": "big"})
    with pytest.raises(ValueError, match="not a GEO part"):
        log_geo_scalars(None, "nope", {"x": 1.0})


def test_the_first_write_adds_the_geo_dashboard_once_with_sections_for_the_parts_logging_scalars(tmp_path):
    """DecisionLogger logs precision scalars, a sparsity histogram and a strategy text on every step of a Trainer
    without GEO parts: one Custom Scalars layout, with the precision section only (histograms and texts are not
    drawn there)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    trainer = fit_tiny(tmp_path, callbacks=[DecisionLogger()])
    acc = _event_tags(Path(trainer.logger.log_dir))
    events = acc.Tensors("custom_scalars__config__")
    assert len(events) == 1
    layout = layout_pb2.Layout.FromString(events[0].tensor_proto.string_val[0])
    assert [category.title for category in layout.category] == ["GEO precision"]
