"""DynamicCurriculum: scorers, pacing, the sampler (determinism, shards, exact resume) and the callback in a real
Trainer (thresholds reach 1 by the deadline, validation untouched, sequence-length mode, logging, bad arguments)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from lightning_geo.callbacks import CurriculumSampler, DynamicCurriculum
from lightning_geo.callbacks.curriculum_pacing import Deadline, MasteryEstimator, fixed_pace, next_threshold
from lightning_geo.callbacks.curriculum_scores import UNSEEN, compute_scores
from lightning_geo.callbacks.curriculum_seq_len import shorten_batch_
from tests.helpers import DDP_CPU, tiny_trainer

NUM_SAMPLES = 96
SEQ = 16


class TokenSamples(Dataset):
    """Sample i: ``{"input_ids": (SEQ,) ids padded with 0, "target": float, "index": i}``; length ``i % 13 + 1``."""

    def __init__(self, num_samples: int = NUM_SAMPLES, offset: int = 0) -> None:
        self.num_samples, self.offset = num_samples, offset
        self.lengths = [(i % 13) + 1 for i in range(num_samples)]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = torch.zeros(SEQ, dtype=torch.long)
        ids[: self.lengths[i]] = torch.arange(1, self.lengths[i] + 1)
        return {"input_ids": ids, "target": torch.tensor(float(self.lengths[i]) / 13), "index": i + self.offset}


class Regressor(pl.LightningModule):
    """Predicts a sample's target from its ids; returns per-sample losses for the ``loss`` scorer."""

    def __init__(self, batch_size: int = 8, sampler: str = "shuffle", lr: float = 0.05) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.EmbeddingBag(SEQ + 1, 4)
        self.out = nn.Linear(4, 1)
        self.batch_size, self.sampler_kind, self.lr = batch_size, sampler, lr
        self.val_indices: list[int] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        pred = self.out(self.emb(batch["input_ids"])).squeeze(-1)
        sample_loss = (pred - batch["target"]) ** 2
        return {"loss": sample_loss.mean(), "sample_loss": sample_loss}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_indices.extend(batch["index"].tolist())
        self.log("val/seq", float(batch["input_ids"].shape[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        data = TokenSamples()
        if self.sampler_kind == "curriculum":
            return DataLoader(data, batch_size=self.batch_size, sampler=CurriculumSampler(data, seed=3))
        if self.sampler_kind == "fixed_length":
            data.lengths = [5] * len(data)
        if self.sampler_kind == "weighted":
            return DataLoader(data, batch_size=self.batch_size, sampler=WeightedRandomSampler([1.0] * len(data), 8))
        return DataLoader(data, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TokenSamples(40, offset=1000), batch_size=8)


class Recorder(Callback):
    """Records each training batch's sample indices and sequence length, and the curriculum's threshold."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.batches: list[list[int]] = []
        self.lengths: list[int] = []
        self.thresholds: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches.append(batch["index"].tolist())
        self.lengths.append(int(batch["input_ids"].shape[1]))
        curriculum = next(c for c in trainer.callbacks if isinstance(c, DynamicCurriculum))
        self.thresholds.append(curriculum.threshold)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.path is not None:
            record = {"batches": self.batches, "thresholds": self.thresholds}
            (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class Crash(RuntimeError):
    pass


class CrashAt(Callback):
    """Raises :class:`Crash` before training batch number ``step`` (0-based), as a killed run would stop."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise Crash


def _fit(tmp_path: Path, curriculum: DynamicCurriculum, model: Regressor | None = None, **overrides: Any) -> Recorder:
    recorder = overrides.pop("recorder", None) or Recorder()
    callbacks = [curriculum, recorder, *overrides.pop("callbacks", [])]
    ckpt_path = overrides.pop("ckpt_path", None)
    trainer = tiny_trainer(tmp_path, callbacks=callbacks, **{"max_steps": 24, "limit_val_batches": 0, **overrides})
    trainer.fit(model or Regressor(), ckpt_path=ckpt_path)
    return recorder


# -- pacing -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "amount", "unit"),
    [
        (0.5, 0.5, "fraction"),
        ("1", 1.0, "fraction"),
        ("200 steps", 200, "steps"),
        ("3 epochs", 3, "epochs"),
        ("2M tokens", 2e6, "tokens"),
        ("50k samples", 5e4, "samples"),
        ("1 step", 1, "steps"),
    ],
)
def test_deadline_parses_shares_and_counts(text: Any, amount: float, unit: str) -> None:
    assert Deadline.parse(text) == Deadline(amount, unit)


@pytest.mark.parametrize("bad", [0, 1.5, "-1 steps", "ten steps", "3 fortnights", "0 steps", True, None, "2M"])
def test_deadline_rejects_malformed_values(bad: Any) -> None:
    with pytest.raises(ValueError, match="deadline"):
        Deadline.parse(bad)


@pytest.mark.parametrize("kind", ["linear", "root", "step"])
def test_fixed_pacings_start_at_start_grow_and_reach_one_at_the_deadline(kind: str) -> None:
    values = [fixed_pace(kind, p / 100, 0.2) for p in range(0, 121)]
    assert values[0] == pytest.approx(0.2)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[100] == pytest.approx(1.0) and values[120] == pytest.approx(1.0)
    assert values[50] < 1.0


def test_mastery_is_low_while_the_loss_falls_or_rises_and_high_once_it_settles() -> None:
    falling, rising, settled, stuck = (MasteryEstimator(10, 0.02) for _ in range(4))
    for step in range(60):
        falling.update(2.0 * 0.97**step)
        rising.update(1.0 + 0.02 * step)
        settled.update(max(1.0, 2.0 - 0.1 * step) + 0.001 * (-1) ** step)  # learned, then a plateau
        stuck.update(2.3 + 0.001 * (-1) ** step)  # flat from the start: a model stuck at chance
    assert falling.mastery == 0.0 and rising.mastery == 0.0 and stuck.mastery == 0.0
    assert settled.mastery > 0.9
    assert MasteryEstimator(10).update(float("nan")) == 0.0


def test_mastery_estimator_state_round_trips() -> None:
    a = MasteryEstimator(8)
    for step in range(12):
        a.update(1.0 / (step + 1))
    b = MasteryEstimator(8)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [a.update(0.1) for _ in range(5)] == [b.update(0.1) for _ in range(5)]


def test_mastery_pacing_is_never_slower_than_linear_and_faster_at_full_mastery() -> None:
    args = {"start": 0.2, "progress": 0.3, "progress_step": 0.01, "max_speedup": 4.0}
    linear = fixed_pace("linear", 0.3, 0.2)
    assert next_threshold("mastery", threshold=0.2, mastery=0.0, **args) == pytest.approx(linear)
    assert next_threshold("mastery", threshold=0.5, mastery=1.0, **args) == pytest.approx(0.5 + 4 * 0.8 * 0.01)
    assert next_threshold("linear", threshold=0.9, mastery=1.0, **args) == 0.9  # never decreases


# -- scorers ------------------------------------------------------------------------------------------------
def test_length_scores_read_lengths_masks_or_non_pad_tokens() -> None:
    data = TokenSamples(20)
    assert compute_scores("length", data).tolist() == [float(n) for n in data.lengths]
    samples = [{"input_ids": torch.ones(5), "attention_mask": torch.tensor([1, 1, 1, 0, 0])}]
    assert compute_scores(
        "length", [*samples, {"input_ids": torch.ones(5), "attention_mask": torch.ones(5)}]
    ).tolist() == [3, 5]
    padded = [torch.tensor([4, 5, 0, 0]), torch.tensor([4, 0, 0, 0])]
    assert compute_scores("length", padded, pad_id=0).tolist() == [2, 1]


def test_length_scorer_refuses_datasets_it_cannot_order() -> None:
    with pytest.raises(ValueError, match="every training sample has length 4"):
        compute_scores("length", [torch.arange(4), torch.arange(4)])
    with pytest.raises(ValueError, match="sample 0 holds no integer tensor"):
        compute_scores("length", [torch.randn(3), torch.randn(5)])


def test_rarity_scores_rank_samples_of_rare_tokens_as_harder() -> None:
    common, rare = torch.tensor([1, 1, 1, 1]), torch.tensor([1, 9, 9, 7])
    scores = compute_scores("rarity", [common] * 8 + [rare])
    assert scores[-1] > scores[0] > 0
    assert scores[0] == pytest.approx(-math.log(33 / 36))
    padded = [torch.tensor([1, 1, 0, 0, 0, 0])] * 8 + [torch.tensor([1, 9, 9, 7, 0, 0])]
    unpadded = compute_scores("rarity", [torch.tensor([1, 1])] * 8 + [torch.tensor([1, 9, 9, 7])])
    assert compute_scores("rarity", padded, pad_id=0).tolist() == pytest.approx(unpadded.tolist())


def test_callable_precomputed_and_loss_scores() -> None:
    data = TokenSamples(10)
    assert compute_scores(lambda s: -float(s["index"]), data).tolist() == [-float(i) for i in range(10)]
    assert compute_scores(torch.arange(10.0), data).tolist() == list(range(10))
    assert (compute_scores("loss", data) == UNSEEN).all()
    with pytest.raises(ValueError, match="3 precomputed scores for a training set of 10"):
        compute_scores([1.0, 2.0, 3.0], data)
    with pytest.raises(ValueError, match="returned nan for sample 0"):
        compute_scores(lambda s: float("nan"), data)


# -- sampler ------------------------------------------------------------------------------------------------
def _epoch(sampler: CurriculumSampler, epoch: int = 0) -> list[int]:
    sampler.set_epoch(epoch)
    out = []
    it = iter(sampler)
    for index in it:
        out.append(index)
        if len(out) % sampler.batch_size == 0 or len(out) == len(sampler):
            sampler.mark_consumed()
    return out


def test_sampler_is_deterministic_per_seed_and_epoch() -> None:
    def make(seed: int) -> CurriculumSampler:
        sampler = CurriculumSampler(TokenSamples(), seed=seed, num_replicas=1, rank=0)
        sampler.set_batch_size(8)
        return sampler

    a, b = make(0), make(0)
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 1) == _epoch(b, 1) != _epoch(make(0), 0)
    assert _epoch(make(1), 0) != _epoch(make(0), 0)
    assert sorted(_epoch(make(0), 0)) == list(range(NUM_SAMPLES))  # unbound: a plain shuffle


def test_sampler_draws_admitted_samples_without_repeats_and_the_hard_share_above() -> None:
    data = TokenSamples()
    sampler = CurriculumSampler(data, num_replicas=1, rank=0)
    sampler.set_batch_size(8)
    sampler.set_scores(torch.arange(NUM_SAMPLES, dtype=torch.float64))  # index = difficulty
    sampler.threshold = 0.25  # the 24 easiest: indices 0..23
    drawn = _epoch(sampler)
    assert set(drawn) == set(range(24)) and len(drawn) == NUM_SAMPLES
    assert all(sorted(drawn[i : i + 24]) == list(range(24)) for i in range(0, NUM_SAMPLES, 24))  # a pass each
    sampler.hard_share = 0.25
    hard = [i for i in _epoch(sampler, 1) if i >= 24]
    assert len(hard) == NUM_SAMPLES // 4 and len(set(hard)) == len(hard)


def test_sampler_gives_ranks_disjoint_equal_shards() -> None:
    shards = []
    for rank in range(2):
        sampler = CurriculumSampler(TokenSamples(95), seed=5, num_replicas=2, rank=rank)
        sampler.set_batch_size(8)
        sampler.set_scores(torch.arange(95, dtype=torch.float64))
        sampler.threshold, sampler.hard_share = 0.5, 0.2
        shards.append(_epoch(sampler))
    assert len(shards[0]) == len(shards[1]) == 48
    for start in range(0, 48, 8):
        assert not set(shards[0][start : start + 8]) & set(shards[1][start : start + 8])


def test_sampler_resumes_mid_epoch_with_read_ahead_batches() -> None:
    def make() -> CurriculumSampler:
        sampler = CurriculumSampler(TokenSamples(), num_replicas=1, rank=0)
        sampler.set_batch_size(8)
        sampler.set_scores(torch.arange(NUM_SAMPLES, dtype=torch.float64))
        sampler.threshold = 0.3
        return sampler

    full = _epoch(make())
    first = make()
    it = iter(first)
    head = [next(it) for _ in range(8 * 5)]  # five batches read (a DataLoader reading ahead) ...
    for _ in range(3):  # ... three trained on when the checkpoint is taken
        first.mark_consumed()
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    assert head[:24] + list(resumed) == full
    other = CurriculumSampler(TokenSamples(), num_replicas=1, rank=0)  # resumed with another batch size
    other.set_batch_size(4)
    other.set_scores(torch.arange(NUM_SAMPLES, dtype=torch.float64))
    other.load_state_dict(state)
    rest = list(other)
    assert rest[:16] == head[24:] and len(rest) == NUM_SAMPLES - 24  # the read-ahead batches first


def test_shorten_batch_truncates_or_reshapes_sequence_tensors_in_place() -> None:
    x, y, label = torch.arange(24).view(2, 12), torch.arange(24).view(2, 12) + 1, torch.tensor([0, 1])
    batch = (x, {"y": y}, label)
    assert shorten_batch_(batch, 4) == 4
    assert batch[0] is x and x.tolist() == [[0, 1, 2, 3], [12, 13, 14, 15]] and y.shape == (2, 4)
    assert label.tolist() == [0, 1]
    z = torch.arange(24).view(2, 12)
    shorten_batch_([z], 5, how="reshape")
    assert z.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [12, 13, 14, 15, 16], [17, 18, 19, 20, 21]]


# -- the callback in a Trainer ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pacing", "deadline"), [("mastery", 0.5), ("linear", "12 steps"), ("root", "2 epochs"), ("step", "1000 tokens")]
)
def test_threshold_grows_and_reaches_one_by_the_deadline(tmp_path: Path, pacing: str, deadline: Any) -> None:
    curriculum = DynamicCurriculum(pacing=pacing, deadline=deadline, mastery_window=4)
    recorder = _fit(tmp_path, curriculum)
    thresholds = recorder.thresholds
    assert thresholds[0] < 0.5 and all(b >= a for a, b in itertools.pairwise(thresholds))
    due = {"mastery": 12, "linear": 12, "root": 24, "step": math.ceil(1000 / (8 * SEQ))}[pacing]
    assert thresholds[due - 1] == 1.0 and min(thresholds[: due - 1]) < 1.0
    early = [i for b in recorder.batches[:3] for i in b]  # length scorer: short samples first (i % 13 small)
    assert sum(i % 13 for i in early) / len(early) < 4.0


@pytest.mark.parametrize("scorer", ["rarity", "callable", "tensor"])
def test_other_scorers_put_their_easiest_samples_first(tmp_path: Path, scorer: str) -> None:
    easiest_first = {"rarity": "rarity", "callable": lambda s: -float(s["index"]), "tensor": -torch.arange(96.0)}
    recorder = _fit(tmp_path, DynamicCurriculum(scorer=easiest_first[scorer], hard_fraction=0.0))
    early = [i for b in recorder.batches[:2] for i in b]  # drawn from the easiest 24, then 30, samples
    if scorer == "rarity":  # a sample of length n holds ids 1..n: longer samples hold rarer ids
        assert max(i % 13 for i in early) <= 4
    else:
        assert min(early) >= NUM_SAMPLES - 30


def test_mastery_pacing_outruns_linear_when_the_loss_settles(tmp_path: Path) -> None:
    linear = _fit(tmp_path / "a", DynamicCurriculum(pacing="linear", deadline=1.0))
    mastery = _fit(
        tmp_path / "b", DynamicCurriculum(pacing="mastery", deadline=1.0, mastery_window=4, mastery_tolerance=10.0)
    )
    assert mastery.thresholds[-1] == 1.0 > linear.thresholds[12]
    assert mastery.thresholds[8] > linear.thresholds[8]


def test_resumed_run_sees_exactly_the_batches_of_the_uninterrupted_run(tmp_path: Path) -> None:
    def curriculum() -> DynamicCurriculum:  # loss scores change every step: the hardest case to replay
        return DynamicCurriculum(scorer="loss", deadline="20 steps", mastery_window=3, mastery_tolerance=0.5)

    full = _fit(tmp_path / "full", curriculum(), max_steps=20)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=7, save_top_k=-1)
    with pytest.raises(Crash):
        _fit(
            tmp_path / "first",
            curriculum(),
            max_steps=20,
            callbacks=[checkpoint, CrashAt(8)],
            enable_checkpointing=True,
        )
    ckpt = next((tmp_path / "ckpt").glob("*step=7*.ckpt"))
    resumed = _fit(tmp_path / "resumed", curriculum(), max_steps=20, ckpt_path=str(ckpt))
    assert 7 % (NUM_SAMPLES // 8) != 0  # the checkpoint is mid-epoch
    assert resumed.batches == full.batches[7:]
    assert resumed.thresholds == pytest.approx(full.thresholds[7:])


class LossRecorder(Recorder):
    """Also records each training batch's loss."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.losses.append(float(outputs["loss"]))


def test_seq_len_mode_resumes_mid_epoch_with_the_losses_of_the_uninterrupted_run(tmp_path: Path) -> None:
    """A plain shuffled DataLoader in seq_len mode resumes mid-epoch (Lightning alone would restart the epoch's
    data), and losses read between two host reads survive the checkpoint."""

    def curriculum() -> DynamicCurriculum:
        return DynamicCurriculum(
            mode="seq_len", deadline="16 steps", min_seq_len=4, seq_len_step=4, mastery_window=3,
            mastery_tolerance=0.5, read_every_n_batches=3,
        )

    full = _fit(tmp_path / "full", curriculum(), max_steps=20, recorder=LossRecorder())
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=7, save_top_k=-1)
    with pytest.raises(Crash):
        _fit(tmp_path / "first", curriculum(), max_steps=20, callbacks=[checkpoint, CrashAt(8)],
             enable_checkpointing=True)
    ckpt = next((tmp_path / "ckpt").glob("*step=7*.ckpt"))
    resumed = _fit(tmp_path / "resumed", curriculum(), max_steps=20, ckpt_path=str(ckpt), recorder=LossRecorder())
    assert 7 % (NUM_SAMPLES // 8) != 0 and 7 % 3 != 0  # mid-epoch, and between two reads of the losses
    assert resumed.batches == full.batches[7:]
    assert resumed.lengths == full.lengths[7:] and full.lengths[0] == 4
    assert resumed.losses == full.losses[7:]
    assert resumed.thresholds == full.thresholds[7:]


@pytest.mark.parametrize("mode", ["samples", "seq_len"])
def test_reading_the_losses_every_n_batches_sees_every_loss_in_order(tmp_path: Path, mode: str) -> None:
    """The host reads are batched, not sampled: after fit the mastery estimate and counts are those of reading
    every batch."""
    results = []
    for every in (1, 5):
        curriculum = DynamicCurriculum(mode=mode, pacing="linear", deadline="10 steps", mastery_window=3,
                                       read_every_n_batches=every)
        recorder = _fit(tmp_path / str(every), curriculum, max_steps=12)
        results.append((curriculum._estimator.state_dict(), curriculum.tokens_seen, curriculum.samples_seen,
                        recorder.thresholds))
    assert results[0] == results[1]


def test_user_passed_sampler_is_driven_and_custom_samplers_are_refused(tmp_path: Path) -> None:
    recorder = _fit(tmp_path / "a", DynamicCurriculum(deadline="12 steps"), Regressor(sampler="curriculum"))
    assert recorder.thresholds[11] == 1.0
    with pytest.raises(ValueError, match="custom WeightedRandomSampler"):
        _fit(tmp_path / "b", DynamicCurriculum(), Regressor(sampler="weighted"))


def test_validation_data_is_never_filtered_or_shortened(tmp_path: Path) -> None:
    for mode in ("samples", "seq_len"):
        model = Regressor()
        curriculum = DynamicCurriculum(mode=mode, deadline=1.0, **({} if mode == "samples" else {"min_seq_len": 4}))
        recorder = _fit(
            tmp_path / mode, curriculum, model, limit_val_batches=None, val_check_interval=6, num_sanity_val_steps=0
        )
        validations = len(model.val_indices) // 40
        assert validations >= 4 and sorted(model.val_indices) == sorted(list(range(1000, 1040)) * validations)
        if mode == "seq_len":
            assert recorder.lengths[0] == 4


def test_seq_len_mode_warms_the_length_up_to_full_in_multiples_of_the_step(tmp_path: Path) -> None:
    recorder = _fit(
        tmp_path, DynamicCurriculum(mode="seq_len", pacing="linear", deadline="12 steps", min_seq_len=4, seq_len_step=4)
    )
    lengths = recorder.lengths
    assert lengths[0] == 4 and lengths[-1] == SEQ and all(b >= a for a, b in itertools.pairwise(lengths))
    assert all(n % 4 == 0 for n in lengths) and lengths[12] == SEQ


def test_decisions_are_logged_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _fit(tmp_path, DynamicCurriculum(deadline=0.5, histogram_every_n_steps=5))
    events = EventAccumulator(str(tmp_path / "tiny" / "version_0"), size_guidance={"histograms": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {f"geo/curriculum/{n}" for n in ("threshold", "mastery", "mix_ratio", "admitted", "progress")} <= scalars
    assert "geo/curriculum/admitted_scores" in events.Tags()["histograms"]
    admitted = [e.value for e in events.Scalars("geo/curriculum/admitted")]
    assert 24 <= admitted[0] < 40 and admitted[-1] == NUM_SAMPLES


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scorer": "perplexity"}, "scorer='perplexity' is not a built-in scorer"),
        ({"scorer": 3}, "scorer must be one of"),
        ({"mode": "tokens"}, "mode='tokens' is not one of"),
        ({"pacing": "cosine"}, "pacing='cosine' is not one of"),
        ({"start_threshold": 0.0}, r"start_threshold=0.0 must be a finite number in \(0.0, 1.0\]"),
        ({"start_threshold": 1.5}, r"start_threshold=1.5 must be a finite number in \(0.0, 1.0\]"),
        ({"start_threshold": "0.5"}, r"start_threshold='0.5' must be a number"),
        ({"hard_fraction": "0.1"}, r"hard_fraction='0.1' must be a number"),
        ({"deadline": "soon"}, "deadline='soon'"),
        ({"hard_fraction": 1.0}, "hard_fraction"),
        ({"max_speedup": 0.5}, "max_speedup"),
        ({"mode": "seq_len", "scorer": "length"}, "scorer has no effect with mode='seq_len'"),
        ({"seq_len_mode": "pad"}, "seq_len_mode='pad'"),
        ({"min_seq_len": 0}, "min_seq_len=0"),
        ({"mastery_window": 1}, "mastery_window=1"),
        ({"read_every_n_batches": 0}, "read_every_n_batches=0 must be a positive integer"),
    ],
)
def test_bad_arguments_fail_in_init_naming_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        DynamicCurriculum(**kwargs)


@pytest.mark.parametrize(
    ("deadline", "match"),
    [
        ("30 steps", "at most 24 steps"),
        ("3 epochs", "at most 2 epochs"),
        ("5000 samples", "at most 192 samples"),
        ("9000 tokens", "at most 3,072 tokens"),
    ],
)
def test_deadlines_the_run_cannot_meet_fail_at_the_start(tmp_path: Path, deadline: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _fit(tmp_path, DynamicCurriculum(deadline=deadline))


def test_loss_scorer_needs_per_sample_losses(tmp_path: Path) -> None:
    class MeanOnly(Regressor):
        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            return super().training_step(batch, batch_idx)["loss"]

    with pytest.raises(ValueError, match="scorer='loss' needs training_step to return"):
        _fit(tmp_path, DynamicCurriculum(scorer="loss"), MeanOnly())


@pytest.mark.ddp
def test_ddp_ranks_get_disjoint_equal_shards_and_agree_on_the_threshold(tmp_path: Path) -> None:
    curriculum = DynamicCurriculum(scorer="loss", deadline="10 steps", mastery_window=3, hard_fraction=0.25)
    _fit(tmp_path, curriculum, recorder=Recorder(tmp_path), max_steps=12, **DDP_CPU)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 12
    for a, b in zip(ranks[0]["batches"], ranks[1]["batches"], strict=True):
        assert len(a) == len(b) == 8 and not set(a) & set(b)
    assert ranks[0]["thresholds"] == ranks[1]["thresholds"] and ranks[0]["thresholds"][9] == 1.0


@pytest.mark.ddp
def test_ddp_scoring_error_on_rank_zero_fails_every_rank_instead_of_hanging(tmp_path: Path) -> None:
    # Both spawned ranks exit with the error (a hang would time the test out); spawn re-raises rank 0's.
    with pytest.raises(ProcessRaisedException, match="every training sample has length 5"):
        _fit(tmp_path, DynamicCurriculum(scorer="length"), Regressor(sampler="fixed_length"), **DDP_CPU)


@pytest.mark.ddp
def test_ddp_resume_continues_every_ranks_batches_exactly(tmp_path: Path) -> None:
    def run(name: str, **overrides: Any) -> None:
        (tmp_path / name).mkdir()
        curriculum = DynamicCurriculum(scorer="loss", deadline="16 steps", mastery_window=3, hard_fraction=0.25)
        _fit(
            tmp_path / name, curriculum, recorder=Recorder(tmp_path / name), max_steps=16, **DDP_CPU, **overrides
        )

    def batches(name: str) -> list[list[list[int]]]:
        return [json.loads((tmp_path / name / f"rank{r}.json").read_text())["batches"] for r in range(2)]

    run("full")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    with pytest.raises((ProcessRaisedException, ProcessExitedException)):  # a rank raises Crash, or is torn down
        run("first", callbacks=[checkpoint, CrashAt(5)], enable_checkpointing=True)
    run("resumed", ckpt_path=str(next((tmp_path / "ckpt").glob("*step=4*.ckpt"))))
    assert 4 % (NUM_SAMPLES // 16) != 0  # mid-epoch: 6 batches of 8 per rank and epoch
    assert batches("resumed") == [rank[4:] for rank in batches("full")]
