"""SparsityAwareLR in a real Trainer: multipliers, scheduler composition, decay policy, logging, resume, DDP."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_geo.callbacks import SparsityAwareLR
from lightning_geo.callbacks.sparsity_lr import density_multiplier
from lightning_geo.demo.plot import read_scalars
from lightning_geo.optim import GeoAdamW
from tests.helpers import DDP_CPU, TinyTextModel, tiny_trainer


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that records each group's learning rate at the moment it updates the parameters."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[list[float]] = []

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.seen.append([float(g["lr"]) for g in self.param_groups])
        super().step()
        return loss


class Recorder(pl.Callback):
    """Records the multipliers the sparsity callback chose, and every group's LR after each batch."""

    def __init__(self, sparsity: SparsityAwareLR | None = None):
        self.sparsity = sparsity
        self.multipliers: list[float] = []
        self.lrs_after: list[list[float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.sparsity is not None:
            self.multipliers.append(self.sparsity.multipliers["emb.weight"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lrs_after.append([float(g["lr"]) for g in trainer.optimizers[0].param_groups])


def _fit(tmp_path, callbacks, model=None, **overrides):
    pl.seed_everything(0, verbose=False)
    model = model or TinyTextModel(optimizer=RecordingAdamW, schedule="exponential")
    trainer = tiny_trainer(tmp_path, callbacks=callbacks, **{"max_steps": 6, **overrides})
    trainer.fit(model)
    return trainer, model


@pytest.mark.parametrize("schedule", ["lambda", "exponential"])
def test_multiplier_applies_during_the_step_and_composes_with_the_scheduler(tmp_path, schedule):
    baseline = Recorder()
    _fit(tmp_path / "plain", [baseline], TinyTextModel(optimizer=RecordingAdamW, schedule=schedule))
    sparsity = SparsityAwareLR()
    recorder = Recorder(sparsity)
    trainer, model = _fit(
        tmp_path / "geo", [sparsity, recorder], TinyTextModel(optimizer=RecordingAdamW, schedule=schedule)
    )

    optimizer = trainer.optimizers[0]
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[1]["params"] == [model.emb.weight]
    # The schedule is the one the plain run had, in every group: the multiplier never leaks into it.
    assert [lrs[0] for lrs in recorder.lrs_after] == pytest.approx([lrs[0] for lrs in baseline.lrs_after])
    assert [lrs[1] for lrs in recorder.lrs_after] == pytest.approx([lrs[0] for lrs in baseline.lrs_after])
    # Inside the step the embedding group's LR is the scheduled LR times the multiplier; the rest is untouched.
    scheduled = [lrs[0] for lrs in optimizer.seen]
    assert [lrs[1] for lrs in optimizer.seen] == pytest.approx(
        [s * m for s, m in zip(scheduled, recorder.multipliers, strict=True)]
    )
    assert all(m > 1.5 for m in recorder.multipliers)  # the embedding is sparse: well under half its rows per step
    density = sparsity.tracker.row_density["emb.weight"]
    assert 0.0 < density < 0.5
    assert recorder.multipliers[-1] == pytest.approx(density_multiplier(density, 0.5, 10.0))


def test_density_multiplier_rule():
    assert density_multiplier(1.0, 0.5, 10.0) == 1.0
    assert density_multiplier(0.04, 0.5, 10.0) == pytest.approx(5.0)
    assert density_multiplier(0.0001, 0.5, 10.0) == 10.0
    assert density_multiplier(0.0, 0.5, 3.0) == 3.0
    assert density_multiplier(0.25, 0.0, 10.0) == 1.0


def test_scale_lr_false_only_measures(tmp_path):
    plain, _ = _fit(tmp_path / "plain", [])
    sparsity = SparsityAwareLR(scale_lr=False)
    trainer, _ = _fit(tmp_path / "geo", [sparsity])
    optimizer = trainer.optimizers[0]
    assert len(optimizer.param_groups) == 1  # nothing to scale, so nothing is split
    assert optimizer.seen == plain.optimizers[0].seen
    assert sparsity.tracker.row_density["emb.weight"] < 0.5


@pytest.mark.parametrize("decay_rows", ["touched", "all"])
def test_untouched_rows_escape_weight_decay_only_with_the_touched_policy(tmp_path, decay_rows):
    pl.seed_everything(0, verbose=False)
    model = TinyTextModel(optimizer=torch.optim.SGD, lr=0.1, weight_decay=0.5)
    never_seen = sorted(set(range(model.vocab)) - set(model.train_dataloader().dataset.tensors[0].flatten().tolist()))
    assert len(never_seen) > 20
    before = model.emb.weight.detach().clone()
    trainer = tiny_trainer(tmp_path, callbacks=[SparsityAwareLR(decay_rows=decay_rows, scale_lr=False)], max_steps=5)
    trainer.fit(model)
    after = model.emb.weight.detach()
    if decay_rows == "touched":
        assert torch.equal(after[never_seen], before[never_seen])
        assert trainer.optimizers[0].param_groups[1]["weight_decay"] == 0.5  # restored after every step
    else:
        torch.testing.assert_close(after[never_seen], before[never_seen] * (1 - 0.1 * 0.5) ** 5)


def test_logs_only_what_it_acts_on_unless_asked(tmp_path):
    trainer, _ = _fit(tmp_path / "default", [SparsityAwareLR()])
    tags = {tag for tag in read_scalars(trainer.logger.log_dir) if tag.startswith("geo/sparsity/")}
    assert tags == {"geo/sparsity/emb.weight/row_density", "geo/sparsity/emb.weight/lr_multiplier"}


def test_logs_densities_multipliers_and_hit_histogram(tmp_path):
    trainer, _ = _fit(tmp_path, [SparsityAwareLR(log_untracked=True)])
    scalars = read_scalars(trainer.logger.log_dir)
    for tag in (
        "geo/sparsity/emb.weight/row_density",
        "geo/sparsity/emb.weight/element_density",
        "geo/sparsity/emb.weight/lr_multiplier",
        "geo/sparsity/out.weight/row_density",
        "geo/sparsity/out.bias/row_density",
    ):
        assert len(scalars[tag]) == 6, tag
    assert all(v == 1.0 for _, v in scalars["geo/sparsity/out.weight/row_density"])
    # Same x-axis as the model's own train/loss.
    assert [s for s, _ in scalars["geo/sparsity/emb.weight/lr_multiplier"]] == [s for s, _ in scalars["train/loss"]]
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"histograms": 0})
    events.Reload()
    assert "geo/sparsity/emb.weight/row_hits" in events.Tags()["histograms"]


def test_with_geo_adamw_it_measures_but_does_not_scale(tmp_path, caplog):
    sparsity = SparsityAwareLR()
    model = TinyTextModel(optimizer=GeoAdamW, schedule="lambda")
    with caplog.at_level("INFO"):
        trainer, _ = _fit(tmp_path, [sparsity], model)
    assert "GeoAdamW, which scales steps by row frequency and parameter density already" in caplog.text
    assert len(trainer.optimizers[0].param_groups) == 1
    scalars = read_scalars(trainer.logger.log_dir)
    assert {v for _, v in scalars["geo/sparsity/emb.weight/lr_multiplier"]} == {1.0}
    assert sparsity.tracker.hit_counts["emb.weight"].sum() > 0


@pytest.mark.parametrize("optimizer", [torch.optim.AdamW, GeoAdamW])
def test_resume_continues_exactly(tmp_path, optimizer):
    def model():
        pl.seed_everything(0, verbose=False)
        return TinyTextModel(schedule="exponential", weight_decay=0.1, optimizer=optimizer)

    straight = SparsityAwareLR(decay_rows="touched")
    full = model()
    tiny_trainer(tmp_path / "full", callbacks=[straight], max_epochs=2, max_steps=-1).fit(full)

    first = model()
    trainer = tiny_trainer(
        tmp_path / "a", callbacks=[SparsityAwareLR(decay_rows="touched")], max_epochs=1, max_steps=-1
    )
    trainer.fit(first)
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed_cb = SparsityAwareLR(decay_rows="touched")
    resumed = model()
    resumed_trainer = tiny_trainer(tmp_path / "b", callbacks=[resumed_cb], max_epochs=2, max_steps=-1)
    resumed_trainer.fit(resumed, ckpt_path=ckpt)

    assert resumed_trainer.global_step == 16
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0)
    assert resumed_cb.tracker.row_density == pytest.approx(straight.tracker.row_density)
    assert torch.equal(resumed_cb.tracker.hit_counts["emb.weight"], straight.tracker.hit_counts["emb.weight"])
    assert resumed_cb.tracker.measurements == straight.tracker.measurements == 2  # reads at steps 0 and 10
    assert resumed_cb.tracker.pending_steps == straight.tracker.pending_steps == 5  # steps 11-15, not read yet


def test_no_matching_parameter_warns_and_measures_only_when_asked(tmp_path):
    sparsity = SparsityAwareLR(params=["decoder.*"])
    with pytest.warns(UserWarning, match=r"no parameter matches params=\('decoder.\*',\)"):
        _fit(tmp_path / "quiet", [sparsity])
    assert sparsity.tracker.row_density == {} and sparsity.tracked == ()
    diagnostic = SparsityAwareLR(params=["decoder.*"], log_untracked=True)
    with pytest.warns(UserWarning, match="no parameter matches"):
        _fit(tmp_path / "diagnostic", [diagnostic])
    assert "emb.weight" in diagnostic.tracker.row_density


def test_parameter_selection():
    model = TinyTextModel()
    assert SparsityAwareLR().select_parameters(model) == ["emb.weight"]
    assert SparsityAwareLR(params="all").select_parameters(model) == ["emb.weight", "out.weight"]
    assert SparsityAwareLR(params=["out.*"]).select_parameters(model) == ["out.weight", "out.bias"]


def test_multipliers_of_a_step_that_never_ran_are_removed(tmp_path):
    trainer, _ = _fit(tmp_path, [sparsity := SparsityAwareLR()], max_steps=2)
    optimizer = trainer.optimizers[0]
    scheduled = optimizer.param_groups[1]["lr"]
    sparsity._apply(optimizer, {})  # as if a step were about to run ...
    assert optimizer.param_groups[1]["lr"] > scheduled
    sparsity.on_train_batch_end(trainer, None, None, None, 0)  # ... and it was skipped
    assert optimizer.param_groups[1]["lr"] == scheduled


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"params": "rows"}, ValueError, r"`params` must be one of \('embeddings', 'all'\)"),
        ({"params": []}, TypeError, "`params` must be a non-empty list"),
        ({"power": -1}, ValueError, "`power` must be finite and >= 0"),
        ({"max_multiplier": 0.5}, ValueError, "`max_multiplier` must be finite and >= 1"),
        ({"ema": 1.5}, ValueError, r"`ema` must be a number in \[0, 1\)"),
        ({"every_n_steps": 0}, ValueError, "`every_n_steps` must be an int >= 1"),
        ({"decay_rows": "none"}, ValueError, r"`decay_rows` must be one of \('all', 'touched'\)"),
        ({"scale_lr": "yes"}, TypeError, "`scale_lr` must be a bool"),
        ({"power": "big"}, TypeError, "`power` must be a number"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        SparsityAwareLR(**kwargs)


class StatsDump(pl.Callback):
    """Writes every rank's sparsity statistics at the end of fit."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        sparsity = next(c for c in trainer.callbacks if isinstance(c, SparsityAwareLR))
        record = {
            "row_density": sparsity.tracker.row_density,
            "multipliers": sparsity.multipliers,
            "hits": sparsity.tracker.hit_counts["emb.weight"].tolist(),
            "lrs": [float(g["lr"]) for g in trainer.optimizers[0].param_groups],
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class CountingFirstBatchOnRankZero(TinyTextModel):
    """Rank 0's first batch counts up by one along each bag (what a position table's lookup looks like); rank 1's
    is text: the ranks must agree that the embedding holds tokens, or rank 0 alone leaves it and the others wait."""

    def training_step(self, batch, batch_idx):
        tokens, labels = batch
        if batch_idx == 0 and self.global_rank == 0:
            tokens = (torch.arange(tokens.shape[-1]) + torch.arange(tokens.shape[0])[:, None]) % self.vocab
        return super().training_step((tokens, labels), batch_idx)


@pytest.mark.ddp
def test_two_ranks_agree_on_statistics_and_multipliers(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = CountingFirstBatchOnRankZero(schedule="exponential")
    trainer = tiny_trainer(tmp_path, callbacks=[SparsityAwareLR(), StatsDump(tmp_path)], max_steps=3, **DDP_CPU)
    trainer.fit(model)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    assert 0.0 < rank0["row_density"]["emb.weight"] < 0.5 and rank0["multipliers"]["emb.weight"] > 1.0
    assert sum(rank0["hits"]) > 0 and len(rank0["lrs"]) == 2


def test_untracked_parameters_are_measured_on_logging_steps_only(tmp_path):
    sparsity = SparsityAwareLR(log_untracked=True)
    trainer, model = _fit(tmp_path, [sparsity], log_every_n_steps=3)
    scalars = read_scalars(trainer.logger.log_dir)
    assert len(scalars["geo/sparsity/out.weight/row_density"]) == 2  # steps 3 and 6
    assert len(scalars["geo/sparsity/emb.weight/lr_multiplier"]) == 2
    # The tracked embedding is measured every step: its hit counts cover all 6 batches.
    tokens = model.train_dataloader().dataset.tensors[0]
    expected = torch.zeros(model.vocab, dtype=torch.int64)
    for batch in tokens[:48].split(8):
        expected[batch.unique()] += 1
    assert torch.equal(sparsity.tracker.hit_counts["emb.weight"], expected)


def test_looked_up_rows_give_the_same_statistics_as_the_gradient(tmp_path, monkeypatch):
    from lightning_geo.callbacks import sparsity_lr

    class WatchesLookups(pl.Callback):
        def __init__(self, sparsity):
            self.sparsity, self.seen = sparsity, []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen.append(self.sparsity._lookups is not None)

    from_lookups = SparsityAwareLR()
    watch = WatchesLookups(from_lookups)
    _fit(tmp_path / "lookups", [from_lookups, watch], log_every_n_steps=2)
    assert watch.seen == [True] * 6 and from_lookups._lookups is None  # hooks removed at the end of fit
    monkeypatch.setattr(sparsity_lr, "lookup_trackable", lambda module, root: False)
    from_gradient = SparsityAwareLR()
    _fit(tmp_path / "gradient", [from_gradient], log_every_n_steps=2)
    assert from_lookups.tracker.row_density == pytest.approx(from_gradient.tracker.row_density)
    assert from_lookups.tracker.element_density == pytest.approx(from_gradient.tracker.element_density)
    assert torch.equal(from_lookups.tracker.hit_counts["emb.weight"], from_gradient.tracker.hit_counts["emb.weight"])


class SkipsOddBatches(TinyTextModel):
    """Returns None from training_step on odd batches: Lightning then takes no optimizer step for them."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return None if batch_idx % 2 else loss


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")
def test_lookups_of_a_skipped_step_do_not_leak_into_the_next(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = SkipsOddBatches()
    sparsity = SparsityAwareLR()
    tiny_trainer(tmp_path, callbacks=[sparsity], max_epochs=1, max_steps=-1).fit(model)
    tokens = model.train_dataloader().dataset.tensors[0]
    expected = torch.zeros(model.vocab, dtype=torch.int64)
    for batch in tokens.split(8)[::2]:  # only the even batches stepped
        expected[batch.unique()] += 1
    assert torch.equal(sparsity.tracker.hit_counts["emb.weight"], expected)


def test_every_step_counts_and_every_n_steps_reads_once(tmp_path):
    """Rows are counted on the device every step; the host reads them (one sync) at the first step and then
    every ``every_n_steps``, averaging the steps in between."""
    every_step = SparsityAwareLR(every_n_steps=1)
    _fit(tmp_path / "every", [every_step], logger=False)
    sparsity = SparsityAwareLR(every_n_steps=2)
    _, model = _fit(tmp_path / "two", [sparsity], logger=False)
    tokens = model.train_dataloader().dataset.tensors[0]
    expected = torch.zeros(model.vocab, dtype=torch.int64)
    for batch in tokens[:48].split(8):  # all six steps
        expected[batch.unique()] += 1
    assert torch.equal(sparsity.tracker.hit_counts["emb.weight"], expected)
    assert sparsity.tracker.measurements == 3 and sparsity.tracker.pending_steps == 1  # reads at steps 0, 2, 4
    assert every_step.tracker.measurements == 6
    # The same time constant in steps: reading every 2 steps ends near reading every step.
    assert sparsity.tracker.row_density["emb.weight"] == pytest.approx(
        every_step.tracker.row_density["emb.weight"], rel=0.05)


class AliasedEmbeddingModel(TinyTextModel):
    """The embedding module registered under a second name (``self.token_embedding = self.emb``), as models often
    do for a handle: one module, two names, no tie."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = self.emb


def test_an_embedding_registered_under_two_names_is_not_taken_for_a_tied_one(tmp_path):
    sparsity = SparsityAwareLR()
    _fit(tmp_path, [sparsity], AliasedEmbeddingModel(optimizer=RecordingAdamW))
    assert sparsity.not_acting_on == {}
    assert sparsity.multipliers["emb.weight"] > 1.5
