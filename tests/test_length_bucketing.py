"""LengthBucketing: token-budget batches, dataset order restored, writers, DDP shards, unchanged metrics."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchmetrics import MeanMetric

from lightning_geo.callbacks import LengthBucketing
from lightning_geo.utils.bucket_collate import pad_collate
from lightning_geo.utils.bucket_sampler import (
    BucketBatchSampler,
    padded_tokens,
    shard_batches,
    token_budget_batches,
)
from tests.helpers import DDP_CPU, tiny_trainer

VOCAB = 50


class Texts(Dataset):
    """Variable-length token sequences as ``{"input_ids", "attention_mask", "label"}`` dicts."""

    def __init__(self, lengths: list[int], with_lengths_attribute: bool = False) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = [torch.randint(1, VOCAB, (n,), generator=generator) for n in lengths]
        if with_lengths_attribute:
            self.lengths = list(lengths)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "label": torch.tensor(i % 3)}


def random_lengths(n: int, seed: int = 1, high: int = 24) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, high, (n,), generator=generator).tolist()


class Scorer(pl.LightningModule):
    """Masked mean of token embeddings -> 3 logits; predicts per-sample logits; token-weighted val loss."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 8)
        self.out = nn.Linear(8, 3)
        self.val_loss = MeanMetric()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        pooled = (self.emb(batch["input_ids"]) * mask).sum(1) / mask.sum(1)
        return self.out(pooled)  # (B, 3)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.shapes.append(tuple(batch["input_ids"].shape))
        return self(batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses = nn.functional.cross_entropy(self(batch), batch["label"], reduction="none")  # (B,)
        tokens = batch["attention_mask"].sum(1).float()
        self.val_loss.update(losses, weight=tokens)  # token-weighted: the same whatever the batching

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute())
        self.val_loss.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.val_loss.compute())
        self.val_loss.reset()


def assert_rows_close(batches: list[list[list[float]]], plain: list[torch.Tensor]) -> None:
    torch.testing.assert_close(torch.tensor([row for b in batches for row in b]), torch.cat(plain), atol=1e-6, rtol=0)


def loader(dataset: Dataset, batch_size: int = 8) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, collate_fn=pad_collate)


def predict(tmp_path: Path, dataset: Dataset, *callbacks: pl.Callback, **overrides: Any) -> tuple[Any, Scorer]:
    model = Scorer()
    trainer = tiny_trainer(tmp_path, logger=False, callbacks=list(callbacks), **overrides)
    return trainer.predict(model, loader(dataset)), model


# ------------------------------------------------------------------ batching, sharding, padding (no Trainer)


def test_token_budget_batches_respect_the_budget_and_cover_every_sample_once() -> None:
    lengths = random_lengths(200)
    batches, oversized = token_budget_batches(lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(200)) and oversized == []
    assert all(padded_tokens(b, lengths) <= 64 for b in batches)
    assert len(batches[0]) > len(batches[-1])  # short samples in large batches, long ones in small
    capped, _ = token_budget_batches(lengths, 64, max_batch_size=3)
    assert max(len(b) for b in capped) == 3 and all(padded_tokens(b, lengths) <= 64 for b in capped)


def test_shards_are_disjoint_equal_in_count_and_balanced_in_tokens() -> None:
    lengths = random_lengths(101, high=60)
    batches, _ = token_budget_batches(lengths, 120)
    shares = [shard_batches(batches, lengths, num_replicas=3, rank=r) for r in range(3)]
    flat = [i for share in shares for b in share for i in b]
    assert sorted(flat) == list(range(101))
    assert len({len(share) for share in shares}) == 1
    tokens = [sum(padded_tokens(b, lengths) for b in share) for share in shares]
    assert max(tokens) - min(tokens) <= max(padded_tokens(b, lengths) for b in batches)


def test_pad_collate_pads_each_batch_to_its_own_longest() -> None:
    batch = pad_collate([{"ids": torch.tensor([5, 6, 7]), "attention_mask": torch.ones(3)},
                         {"ids": torch.tensor([8]), "attention_mask": torch.ones(1)}], padding_value=-1)
    assert batch["ids"].tolist() == [[5, 6, 7], [8, -1, -1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pad_collate([(torch.tensor([1]), 2), (torch.tensor([3]), 4)])[1].tolist() == [2, 4]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"max_tokens": 2.5}, "max_tokens=2.5"),
        ({"max_batch_size": 0}, "max_batch_size=0"),
        ({"stages": ("fit",)}, "stages=.*'predict', 'validate', 'test'"),
        ({"stages": "predict"}, "stages='predict'"),
        ({"stages": ()}, "stages=()"),
        ({"length_fn": 3}, "length_fn=3"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LengthBucketing(**kwargs)
    with pytest.raises(ValueError, match="rank=2"):
        BucketBatchSampler([1, 2], 4, num_replicas=2, rank=2)


# ------------------------------------------------------------------ predict


def test_predictions_come_back_in_dataset_order_including_the_last_partial_bucket(tmp_path: Path) -> None:
    dataset = Texts(random_lengths(37))  # lengths from the attention_mask; 37 = 4 batches of 8 + 5
    plain, _ = predict(tmp_path, dataset)
    bucketing = LengthBucketing(max_tokens=40)
    bucketed, model = predict(tmp_path, dataset, bucketing)
    assert len(model.shapes) > len(plain)  # the buckets really differ from the plain batches
    assert [len(p) for p in bucketed] == [8, 8, 8, 8, 5]
    for a, b in zip(plain, bucketed, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    assert 1.0 <= bucketing.padding_ratio < 1.5


def test_batches_stay_under_the_token_budget_and_padding_is_per_batch(tmp_path: Path) -> None:
    lengths = random_lengths(60)
    _, model = predict(tmp_path, Texts(lengths, with_lengths_attribute=True), LengthBucketing(max_tokens=48))
    assert sum(b for b, _ in model.shapes) == 60
    assert all(b * t <= 48 for b, t in model.shapes)
    expected = sorted(max(lengths[i] for i in b) for b in token_budget_batches(lengths, 48)[0])
    assert sorted(t for _, t in model.shapes) == expected  # each batch padded only to its own longest


def test_a_sample_longer_than_max_tokens_runs_alone_with_one_warning(tmp_path: Path) -> None:
    dataset = Texts([3, 30, 4, 31, 2], with_lengths_attribute=True)
    with pytest.warns(UserWarning, match=r"2 sample\(s\) are longer than max_tokens=20") as record:
        bucketed, model = predict(tmp_path, dataset, LengthBucketing(max_tokens=20))
    assert sum("longer than max_tokens" in str(w.message) for w in record) == 1
    assert (1, 30) in model.shapes and (1, 31) in model.shapes
    torch.testing.assert_close(bucketed[0], predict(tmp_path, dataset)[0][0], atol=1e-6, rtol=0)


def test_length_fn_is_called_once_per_sample_across_predict_calls(tmp_path: Path) -> None:
    calls = []

    def length_fn(sample: dict[str, torch.Tensor]) -> int:
        calls.append(1)
        return len(sample["input_ids"])

    dataset = Texts(random_lengths(20))
    bucketing = LengthBucketing(max_tokens=30, length_fn=length_fn)
    model = Scorer()
    trainer = tiny_trainer(tmp_path, logger=False, callbacks=[bucketing])
    first = trainer.predict(model, loader(dataset))
    second = trainer.predict(model, loader(dataset))
    assert len(calls) == 20
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_a_dataset_without_lengths_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    dataset = TensorDataset(torch.zeros(6, 4, dtype=torch.long))
    model = Scorer()
    trainer = tiny_trainer(tmp_path, logger=False, callbacks=[LengthBucketing()])
    with pytest.raises(ValueError, match=r"cannot tell the length.*TensorDataset.*`lengths` attribute.*length_fn"):
        trainer.predict(model, DataLoader(dataset, batch_size=2))


class BatchMean(Scorer):
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch).mean()  # one number per batch: no per-sample structure


def test_outputs_without_a_batch_dimension_stay_in_bucket_order_with_one_warning(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, logger=False, callbacks=[LengthBucketing(max_tokens=40)])
    with pytest.warns(UserWarning, match="not led by the batch dimension"):
        outputs = trainer.predict(BatchMean(), loader(Texts(random_lengths(20))))
    assert all(o.dim() == 0 for o in outputs) and len(outputs) > 20 // 8 + 1  # the buckets' outputs, untouched


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(Texts(random_lengths(10)))


def test_an_iterable_dataset_keeps_its_batching_with_one_warning(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, logger=False, callbacks=[LengthBucketing()])
    with pytest.warns(UserWarning, match="IterableDataset.*runs with its own batching"):
        outputs = trainer.predict(Scorer(), loader(Stream(), batch_size=4))
    assert [len(o) for o in outputs] == [4, 4, 2]


class Writer(BasePredictionWriter):
    """Writes each batch's (indices, predictions) and the epoch's predictions as JSON files per rank."""

    def __init__(self, folder: Path, interval: str) -> None:
        super().__init__(interval)
        self.folder = folder

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        with open(self.folder / f"batches_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"indices": list(batch_indices), "labels": batch["label"].tolist()}) + "\n")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        payload = {"indices": batch_indices, "predictions": [p.tolist() for p in predictions]}
        (self.folder / f"epoch_rank{trainer.global_rank}.json").write_text(json.dumps(payload))


def test_prediction_writers_get_dataset_indices_and_the_ordered_predictions(tmp_path: Path) -> None:
    dataset = Texts(random_lengths(29))
    plain, _ = predict(tmp_path, dataset)
    writers = [Writer(tmp_path, "epoch"), Writer(tmp_path, "batch")]
    predict(tmp_path, dataset, *writers, LengthBucketing(max_tokens=40))  # bucketing after the writers
    epoch = json.loads((tmp_path / "epoch_rank0.json").read_text())
    assert epoch["indices"] == [[list(range(s, min(s + 8, 29))) for s in range(0, 29, 8)]]  # per dataloader
    assert_rows_close(epoch["predictions"], plain)
    lines = [json.loads(line) for line in (tmp_path / "batches_rank0.jsonl").read_text().splitlines()]
    assert sorted(i for line in lines for i in line["indices"]) == list(range(29))
    assert all(line["labels"] == [i % 3 for i in line["indices"]] for line in lines)  # indices match the batch


# ------------------------------------------------------------------ validate / test


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_validate_and_test_metrics_equal_the_unbucketed_loop(tmp_path: Path, stage: str) -> None:
    dataset = Texts(random_lengths(45))

    def run(*callbacks: pl.Callback) -> float:
        trainer = tiny_trainer(tmp_path, logger=False, callbacks=list(callbacks))
        results = getattr(trainer, stage)(Scorer(), loader(dataset), verbose=False)
        return results[0][f"{'val' if stage == 'validate' else 'test'}/loss"]

    plain = run()
    bucketing = LengthBucketing(max_tokens=40, stages=(stage,))
    assert run(bucketing) == pytest.approx(plain, abs=1e-6)
    assert bucketing.padded_tokens > 0  # the loop really was bucketed
    assert run(LengthBucketing(max_tokens=40)) == pytest.approx(plain, abs=1e-6)  # predict only: untouched


# ------------------------------------------------------------------ DDP


@pytest.mark.ddp
def test_ddp_ranks_get_disjoint_balanced_buckets_and_gathered_predictions_are_in_order(tmp_path: Path) -> None:
    dataset = Texts(random_lengths(41))
    plain, _ = predict(tmp_path, dataset)
    model = Scorer()
    writers = [Writer(tmp_path, "epoch"), Writer(tmp_path, "batch")]
    trainer = tiny_trainer(tmp_path, logger=False, callbacks=[*writers, LengthBucketing(max_tokens=40)],
                           **DDP_CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.predict(model, loader(dataset), return_predictions=False)
    ranks = [[json.loads(line)["indices"] for line in (tmp_path / f"batches_rank{r}.jsonl").read_text().splitlines()]
             for r in range(2)]
    flat = [{i for b in rank for i in b} for rank in ranks]
    assert not flat[0] & flat[1] and flat[0] | flat[1] == set(range(41))
    assert len(ranks[0]) == len(ranks[1])
    for r in range(2):  # every rank gathered the whole dataset, in order
        epoch = json.loads((tmp_path / f"epoch_rank{r}.json").read_text())
        assert_rows_close(epoch["predictions"], plain)
