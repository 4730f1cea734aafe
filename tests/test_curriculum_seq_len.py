"""DynamicCurriculum(mode="seq_len") in a real Trainer: only token sequences are shortened (features, images and
conv inputs never are), a model it cannot warm up is said, a deadline the run does not reach is said, and the
curriculum's sampler follows the run's seed."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, Timer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_geo.callbacks import CurriculumSampler, DynamicCurriculum
from lightning_geo.callbacks.curriculum_seq_len import shorten_batch_
from tests.helpers import tiny_trainer

B = 8  # samples per batch
NUM = 32  # samples in the training set


class Probe(pl.LightningModule):
    """Records every batch's tensor shapes and runs ``net`` (if any) on ``batch[key]``."""

    def __init__(self, data: Any, net: nn.Module | None = None, key: str | int | None = 0) -> None:
        super().__init__()
        self.data, self.key = data, key
        self.net = net
        self.w = nn.Parameter(torch.zeros(1))
        self.shapes: list[Any] = []
        self.first_rows: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if isinstance(batch, dict):
            self.shapes.append({k: tuple(v.shape) for k, v in batch.items()})
        else:
            self.shapes.append([tuple(t.shape) for t in batch])
        self.first_rows.append(batch["index"] if isinstance(batch, dict) else batch[-1])
        loss = (self.w - 1).square().sum()
        if self.net is not None and self.key is not None:
            loss = loss + self.net(batch[self.key].float()).mean()
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=B, shuffle=True)


def _fit(tmp_path: Path, model: Probe, curriculum: DynamicCurriculum, **overrides: Any) -> pl.Trainer:
    callbacks = [curriculum, *overrides.pop("callbacks", [])]
    ckpt_path = overrides.pop("ckpt_path", None)
    trainer = tiny_trainer(tmp_path, callbacks=callbacks, **{"max_steps": 6, "limit_val_batches": 0, **overrides})
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


def _curriculum_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if "DynamicCurriculum" in str(w.message)]


def _tabular() -> Probe:
    x, y = torch.randn(NUM, 64), torch.randn(NUM, 1)
    return Probe(TensorDataset(x, y, torch.arange(NUM)), nn.Linear(64, 1))


def _tabular_with_integer_labels() -> Probe:
    x, y = torch.randn(NUM, 64), torch.randint(0, 3, (NUM, 1))  # a (B, 1) integer label is no token sequence
    return Probe(TensorDataset(x, y, torch.arange(NUM)), nn.Linear(64, 1))


def _conv() -> Probe:
    x = torch.randn(NUM, 16, 12, 12)
    return Probe(TensorDataset(x, torch.arange(NUM)), nn.Conv2d(16, 4, 3))


def _images() -> Probe:
    data = [{"pixel_values": torch.randn(3, 16, 16), "labels": torch.tensor(i % 3), "index": torch.tensor(i)}
            for i in range(NUM)]
    return Probe(data, nn.Conv2d(3, 4, 3), key="pixel_values")


# -- what is (not) a token sequence ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "make", [_tabular, _tabular_with_integer_labels, _conv, _images], ids=["tabular", "int_labels", "conv", "images"]
)
def test_batches_without_tokens_are_untouched_and_said_once(tmp_path: Path, make: Any) -> None:
    """Float features (B, 64), conv inputs (B, 16, 12, 12) and an image dict train at their own shapes, with one
    warning that the warmup does nothing for this model (what recipe() asks for with on_unrecognized="warn")."""
    model = make()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path, model, DynamicCurriculum(mode="seq_len", on_unrecognized="warn"))
    full = model.shapes[0]
    assert len(model.shapes) == 6 and all(shapes == full for shapes in model.shapes)
    assert (full == [(B, 64), (B, 1), (B,)] or full == [(B, 16, 12, 12), (B,)]
            or full["pixel_values"] == (B, 3, 16, 16))
    said = _curriculum_warnings(record)
    assert len(said) == 1 and "the sequence-length warmup does nothing for this model" in said[0], said
    assert "no token sequence" in said[0]


@pytest.mark.parametrize(
    "make", [_tabular, _tabular_with_integer_labels, _conv, _images], ids=["tabular", "int_labels", "conv", "images"]
)
def test_an_explicit_seq_len_warmup_on_batches_without_tokens_fails_at_the_first_batch(tmp_path: Path,
                                                                                       make: Any) -> None:
    with pytest.raises(ValueError, match=r"DynamicCurriculum\(mode='seq_len'\) cannot warm up this model"):
        _fit(tmp_path, make(), DynamicCurriculum(mode="seq_len"))


def test_recipe_warns_instead_of_failing_on_models_without_tokens() -> None:
    from lightning_geo.recipes import recipe

    (warmup,) = [c for c in recipe(accelerator="cpu")["callbacks"] if isinstance(c, DynamicCurriculum)]
    assert warmup.mode == "seq_len" and warmup.on_unrecognized == "warn"


def test_hugging_face_dict_batch_is_shortened_consistently_and_other_tensors_are_left_alone(tmp_path: Path) -> None:
    """input_ids, attention_mask and labels are cut together; a float (B, 32) vector and a (B,) field are not,
    though the vector's dimension 1 is the batch's longest."""
    data = [{"input_ids": torch.arange(16) + i, "attention_mask": torch.ones(16, dtype=torch.long),
             "labels": torch.arange(16) + i, "speaker_embedding": torch.randn(32), "index": torch.tensor(i)}
            for i in range(NUM)]
    model = Probe(data)
    curriculum = DynamicCurriculum(mode="seq_len", pacing="linear", deadline="4 steps", min_seq_len=4, seq_len_step=4)
    _fit(tmp_path, model, curriculum)
    lengths = [shapes["input_ids"][1] for shapes in model.shapes]
    assert lengths == [4, 4, 8, 12, 16, 16]
    for shapes, length in zip(model.shapes, lengths, strict=True):
        assert shapes["attention_mask"] == shapes["labels"] == shapes["input_ids"] == (B, length)
        assert shapes["speaker_embedding"] == (B, 32) and shapes["index"] == (B,)
    assert curriculum.tokens_seen == B * sum(lengths)  # the attention mask's sum, as trained


def test_inputs_embeds_are_shortened_on_time_and_count_tokens_not_hidden_units(tmp_path: Path) -> None:
    data = [{"inputs_embeds": torch.randn(16, 64), "index": torch.tensor(i)} for i in range(NUM)]
    model = Probe(data)
    curriculum = DynamicCurriculum(mode="seq_len", pacing="linear", deadline="4 steps", min_seq_len=4, seq_len_step=4)
    _fit(tmp_path, model, curriculum)
    lengths = [shapes["inputs_embeds"][1] for shapes in model.shapes]
    assert lengths == [4, 4, 8, 12, 16, 16]
    assert all(shapes["inputs_embeds"] == (B, n, 64) for shapes, n in zip(model.shapes, lengths, strict=True))
    assert curriculum.tokens_seen == B * sum(lengths)


def test_tuple_batch_shortens_token_ids_and_tensors_of_their_shape_only(tmp_path: Path) -> None:
    ids = torch.randint(0, 50, (NUM, 16))
    weights, features = torch.rand(NUM, 16), torch.randn(NUM, 24)
    model = Probe(TensorDataset(ids, weights, features, torch.arange(NUM)))
    _fit(tmp_path, model, DynamicCurriculum(mode="seq_len", min_seq_len=8), max_steps=2)
    assert model.shapes[0] == [(B, 8), (B, 8), (B, 24), (B,)]


def test_the_models_declared_length_caps_the_warmup(tmp_path: Path) -> None:
    class Config:
        max_position_embeddings = 12

    net = nn.Linear(1, 1)
    net.config = Config()  # type: ignore[assignment]
    model = Probe(TensorDataset(torch.randint(0, 50, (NUM, 16)), torch.arange(NUM)), net, key=None)
    curriculum = DynamicCurriculum(mode="seq_len", pacing="linear", deadline="2 steps", min_seq_len=4, seq_len_step=4)
    with pytest.warns(UserWarning, match=r"declares at most 12 \(net.config.max_position_embeddings\)"):
        _fit(tmp_path, model, curriculum, max_steps=4)
    assert curriculum.full_seq_len == 12 and model.shapes[-1][0] == (B, 12)


def test_time_major_batches_are_shortened_along_seq_dim_0() -> None:
    ids, embeds = torch.zeros(16, B, dtype=torch.long), torch.randn(16, B, 4)  # (T, B), (T, B, D)
    labels = torch.zeros(B, 1, dtype=torch.long)
    assert shorten_batch_((ids, embeds, labels), 4, seq_dim=0) == 4
    assert ids.shape == (4, B) and embeds.shape == (4, B, 4) and labels.shape == (B, 1)


def test_sequences_no_longer_than_min_seq_len_are_said(tmp_path: Path) -> None:
    model = Probe(TensorDataset(torch.randint(0, 50, (NUM, 6)), torch.arange(NUM)))
    with pytest.warns(UserWarning, match="have 6 tokens, no more than min_seq_len=8"):
        _fit(tmp_path, model, DynamicCurriculum(mode="seq_len"), max_steps=2)
    assert model.shapes[-1][0] == (B, 6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq_dim": -7}, r"seq_dim=-7 is not one of \[1, 0\]"),
        ({"seq_dim": 2}, r"seq_dim=2 is not one of \[1, 0\]"),
        ({"seq_dim": 0, "seq_len_mode": "reshape"}, "seq_len_mode='reshape' needs seq_dim=1"),
        ({"on_unrecognized": "ignore"}, r"on_unrecognized='ignore' is not one of \['error', 'warn'\]"),
        ({"seed": 1.5}, "seed=1.5 must be an integer or None"),
    ],
)
def test_bad_seq_len_arguments_fail_in_init(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DynamicCurriculum(mode="seq_len", **kwargs)


# -- a deadline the run does not reach ----------------------------------------------------------------------
class StopAt(Callback):
    """Stops the run after ``steps`` optimizer steps (as EarlyStopping or a budget callback would)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def _tokens() -> Probe:
    return Probe(TensorDataset(torch.randint(0, 50, (NUM, 64)), torch.arange(NUM)))


@pytest.mark.parametrize("length", [{"max_steps": 10**6}, {"max_steps": -1, "max_epochs": 50}])
def test_a_run_stopped_before_the_deadline_says_the_warmup_did_not_finish(tmp_path: Path, length: dict) -> None:
    model, curriculum = _tokens(), DynamicCurriculum(mode="seq_len", deadline=0.3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path, model, curriculum, callbacks=[StopAt(6)], **length)
    assert [shapes[0] for shapes in model.shapes] == [(B, 8)] * 6
    said = _curriculum_warnings(record)
    assert len(said) == 1, said
    assert "stopped before the sequence-length warmup reached full length: reached 8 of 64 tokens" in said[0]
    assert "deadline='" in said[0] and " seconds'" in said[0]


def test_a_run_that_reaches_the_deadline_says_nothing(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path, _tokens(), DynamicCurriculum(mode="seq_len", deadline=0.5))
    assert _curriculum_warnings(record) == []


class StopAfterSeconds(Callback):
    """Stops the run once ``seconds`` have passed and at least 3 steps were taken."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
        if timer.time_elapsed() >= self.seconds and trainer.global_step >= 3:
            trainer.should_stop = True


def test_max_time_that_stops_the_run_before_a_share_deadline_is_said_during_training(tmp_path: Path) -> None:
    """max_steps is only a cap beside max_time: after a tenth of max_time the pace shows the deadline is out of
    reach, and it is said then (once: not again at the end)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path, _tokens(), DynamicCurriculum(mode="seq_len", deadline=0.3), max_steps=10**6,
             max_time={"seconds": 2}, callbacks=[StopAfterSeconds(0.5)])
    said = _curriculum_warnings(record)
    assert len(said) == 1, said
    assert "at this pace the run's max_time (2 s) stops it before the deadline" in said[0]
    assert "deadline='1 seconds'" in said[0]


def test_a_share_deadline_with_only_max_time_asks_for_seconds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bounded only by max_time \(2,000 s\).*deadline='600 seconds'"):
        _fit(tmp_path, _tokens(), DynamicCurriculum(mode="seq_len", deadline=0.3), max_steps=-1,
             max_time={"seconds": 2000})


# -- the sampler follows the run's seed -------------------------------------------------------------------
def _first_batches(tmp_path: Path, global_seed: int, **kwargs: Any) -> list[list[int]]:
    pl.seed_everything(global_seed, verbose=False)
    model = _tokens()
    _fit(tmp_path, model, DynamicCurriculum(mode="seq_len", **kwargs), max_steps=2)
    return [rows.tolist() for rows in model.first_rows]


def test_the_curriculum_sampler_follows_seed_everything_unless_given_a_seed(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test; seed_everything sets it
    zero, one = _first_batches(tmp_path / "a", 0), _first_batches(tmp_path / "b", 1)
    assert zero != one
    assert _first_batches(tmp_path / "c", 0) == zero
    assert _first_batches(tmp_path / "d", 0, seed=5) == _first_batches(tmp_path / "e", 1, seed=5)


def test_a_sampler_on_the_global_seed_resumes_with_the_checkpoints_seed(monkeypatch: Any) -> None:
    def make(**kwargs: Any) -> CurriculumSampler:
        sampler = CurriculumSampler(list(range(40)), num_replicas=1, rank=0, **kwargs)
        sampler.set_batch_size(4)
        return sampler

    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    full = list(make())
    first = make()
    it = iter(first)
    head = [next(it) for _ in range(12)]
    for _ in range(3):
        first.mark_consumed()
    state = first.state_dict()
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.seed == 3 and head + list(resumed) == full
    with pytest.raises(ValueError, match="checkpoint has seed=3, this run has seed=7"):
        make(seed=7).load_state_dict(state)


class CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise KeyError("crash")


def test_a_run_resumed_under_another_global_seed_continues_the_checkpoints_batches(tmp_path: Path,
                                                                                   monkeypatch: Any) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")

    def run(name: str, seed: int, **overrides: Any) -> list[list[int]]:
        pl.seed_everything(seed, verbose=False)
        model = _tokens()
        _fit(tmp_path / name, model, DynamicCurriculum(mode="seq_len", deadline="6 steps"), max_steps=8, **overrides)
        return [rows.tolist() for rows in model.first_rows]

    full = run("full", 3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    with pytest.raises(KeyError):
        run("first", 3, callbacks=[checkpoint, CrashAt(4)], enable_checkpointing=True)
    resumed = run("resumed", 7, ckpt_path=str(next((tmp_path / "ckpt").glob("*step=3*.ckpt"))))
    assert 3 % (NUM // B) != 0 and resumed == full[3:]  # mid-epoch, and in the saved run's order
