"""Tables looked up by position, absolute or relative, are never boosted: ``SparsityAwareLR`` gives them multiplier 1
and ``GeoAdamW`` updates them as AdamW does, each naming them once. On a tiny Hugging Face T5 built from a config
(``relative_attention_bias``: buckets of key minus query position, two-sided in the encoder) and on a distance table
whose buckets the gradient check does not know."""

from __future__ import annotations

import copy
import logging
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_geo.callbacks import SparsityAwareLR
from lightning_geo.callbacks.embedding_lookups import position_lookup_reason
from lightning_geo.optim import GeoAdamW, geo_adamw
from lightning_geo.optim.row_modes import DENSE, POSITIONAL, ROWS, UNTOUCHED, row_modes
from lightning_geo.utils.positions import position_name_hint
from tests.helpers import tiny_trainer

ENCODER_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
DECODER_BIAS = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


# ----------------------------------------------------------------- the signals, one by one
def test_indices_that_come_from_positions_are_positional():
    q = torch.arange(6)[:, None]
    k = torch.arange(6)[None, :]
    buckets = (k - q).clamp(-3, 3) + 3  # (Q, K): a function of key minus query position
    assert position_lookup_reason(torch.arange(8).expand(4, 8)) is not None  # absolute, expanded over the batch
    assert position_lookup_reason(torch.arange(5, 13)) is not None  # with a cache offset
    assert position_lookup_reason(torch.arange(7, -1, -1)) is not None  # distances counting down
    assert "query and key" in position_lookup_reason(buckets)
    assert "query and key" in position_lookup_reason((k - q).abs())  # ALiBi-like: a table of |distance|
    assert position_lookup_reason(buckets.expand(3, 6, 6)) is not None  # (B, Q, K), the same for every item
    same = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]]).expand(4, 2, 5)
    assert "same for every item" in position_lookup_reason(same)


def test_token_batches_are_not_positional():
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(0, 50, (64,), generator=generator)
    assert position_lookup_reason(torch.randint(0, 50, (4, 16), generator=generator)) is None
    windows = torch.stack([text[i:i + 16] for i in range(4)])  # windows one token apart: shifted left, not right
    assert position_lookup_reason(windows) is None
    assert position_lookup_reason(windows[:2].flip(0)) is None  # two windows, shuffled: constant along diagonals
    assert position_lookup_reason(torch.full((4, 16), 7)) is None  # one repeated token says nothing
    assert position_lookup_reason(torch.tensor([[5], [9]])) is None  # rows of one token say nothing
    assert position_lookup_reason(torch.randint(0, 50, (1, 16), generator=generator)) is None


@pytest.mark.parametrize("name", ["transformer.wpe.weight", "bert.embeddings.position_embeddings.weight",
                                  "model.decoder.embed_positions.weight", f"model.{ENCODER_BIAS}",
                                  "vit.pos_embed", "clip.positional_embedding", "swin.rel_pos_bias.weight"])
def test_position_names(name):
    assert position_name_hint(name)


@pytest.mark.parametrize("name", ["transformer.wte.weight", "model.shared.weight", "composition.weight",
                                  "pos_tagger.weight", "lm_head.weight"])
def test_token_names(name):
    assert not position_name_hint(name)


def _grad(rows: int, touched: list[int]) -> torch.Tensor:
    grad = torch.zeros(rows, 3)
    grad[touched] = 1.0
    return grad


def test_gradient_check_knows_two_sided_buckets():
    """T5's encoder buckets: keys before the query in the first half, keys after it from the middle row + 1 on (the
    middle row itself, "after at distance 0", is never looked up, so the gradient is never dense)."""
    short = _grad(32, [*range(8), *range(17, 24)])  # 8 tokens
    full = _grad(32, [*range(16), *range(17, 32)])  # every distance bucket
    one_sided = _grad(32, list(range(8)))  # T5's decoder
    scattered = _grad(32, [0, 3, 5, 17])
    off_middle = _grad(32, [*range(8), *range(20, 24)])
    not_from_zero = _grad(32, [*range(1, 8), *range(17, 24)])
    modes = row_modes([short, full, one_sided, scattered, off_middle, not_from_zero])
    assert modes == [POSITIONAL, POSITIONAL, POSITIONAL, ROWS, ROWS, ROWS]
    # A hint (a name, a mark) turns untouched rows into unused positions; a dense or all-zero gradient stays as it is.
    hinted = row_modes([scattered, _grad(32, list(range(32))), _grad(32, [])], positional=[True, True, True])
    assert hinted == [POSITIONAL, DENSE, UNTOUCHED]


def test_a_position_name_takes_a_parameter_off_the_row_rule(caplog):
    emb = nn.Embedding(16, 2)
    geo = GeoAdamW([("rel_pos_bias.weight", emb.weight)], lr=0.1)  # named parameters: the groups carry names
    emb(torch.tensor([[3, 7], [7, 3]])).sum().backward()  # rows 3 and 7: the gradient alone says ROWS
    with caplog.at_level(logging.INFO):
        geo.step()
    assert geo.state[emb.weight]["row_mode"] == POSITIONAL
    assert "rel_pos_bias.weight is looked up by position (its name says it is a position table)" in caplog.text


# ----------------------------------------------------------------- a tiny T5
def _tiny_t5(max_distance: int = 128) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=96, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
        relative_attention_num_buckets=32, relative_attention_max_distance=max_distance, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0,
    )
    return transformers.T5ForConditionalGeneration(config)


def _t5_batches(count: int, source_len: int = 8, target_len: int = 6) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    return [{"input_ids": torch.randint(1, 96, (4, source_len), generator=generator),
             "labels": torch.randint(1, 96, (4, target_len), generator=generator)} for _ in range(count)]


def _train_t5(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[dict[str, torch.Tensor]]) -> None:
    for batch in batches:
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()


def test_t5_relative_buckets_take_adamw_under_geo_adamw():
    """Encoder (two-sided buckets) and decoder (one-sided) bias both take torch's AdamW path; with the token
    embedding tied to the head (dense) as before, the whole T5 moves exactly as under AdamW."""
    reference, model = _tiny_t5(), _tiny_t5()
    batches = _t5_batches(4)
    _train_t5(reference, torch.optim.AdamW(reference.parameters(), lr=1e-2), batches)
    geo = GeoAdamW(model.parameters(), lr=1e-2)
    with pytest.warns(UserWarning, match="untouched rows"):
        _train_t5(model, geo, batches)
    params = dict(model.named_parameters())
    for name in (ENCODER_BIAS, DECODER_BIAS):
        assert geo.state[params[name]]["row_mode"] == POSITIONAL, name
        assert geo.row_hit_counts(params[name]) is None
    assert geo.state[params["shared.weight"]]["row_mode"] == DENSE  # tied to lm_head: as before
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def test_t5_encoder_buckets_at_full_length_are_still_positional():
    """Sequences past the largest distance touch every bucket but the middle one: still a position table."""
    model = _tiny_t5(max_distance=16)
    geo = GeoAdamW(model.parameters(), lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _train_t5(model, geo, _t5_batches(2, source_len=24))
    bias = dict(model.named_parameters())[ENCODER_BIAS]
    assert int((bias.grad.abs().sum(1) > 0).sum()) == 31
    assert geo.state[bias]["row_mode"] == POSITIONAL


def test_geo_adamw_names_each_position_table_once(monkeypatch, caplog):
    monkeypatch.setattr(geo_adamw, "RECHECK_EVERY", 2)  # several checks in a few steps
    model = _tiny_t5()
    geo = GeoAdamW(model.named_parameters(), lr=1e-2)  # param groups carry the names
    with caplog.at_level(logging.INFO), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _train_t5(model, geo, _t5_batches(6))
    for name in (ENCODER_BIAS, DECODER_BIAS):
        lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
        assert len(lines) == 1, lines
        assert "looked up by position" in lines[0] and "AdamW" in lines[0]


class T5Module(pl.LightningModule):
    def __init__(self, optimizer: str = "adamw") -> None:
        super().__init__()
        self.optimizer = optimizer
        self.model = _tiny_t5()
        self.lrs: dict[str, list[float]] = {}

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def train_dataloader(self):
        return DataLoader(_t5_batches(8), batch_size=None)

    def configure_optimizers(self):
        if self.optimizer == "geo_adamw":
            return GeoAdamW(self.parameters(), lr=1e-2)
        return RecordingAdamW({id(p): n for n, p in self.named_parameters()}, self.lrs, self.parameters(), lr=1e-3)


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that records every parameter's LR at the moment it updates it (after the closure, so after the
    callbacks' ``on_before_optimizer_step``)."""

    def __init__(self, names: dict[int, str], lrs: dict[str, list[float]], *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.names, self.lrs = names, lrs

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                self.lrs.setdefault(self.names[id(p)], []).append(float(group["lr"]))
        super().step()
        return loss


def _fit_t5(tmp_path, optimizer: str) -> tuple[SparsityAwareLR, T5Module, list[str]]:
    pl.seed_everything(0, verbose=False)
    callback = SparsityAwareLR(every_n_steps=1)
    module = T5Module(optimizer)
    trainer = tiny_trainer(tmp_path, callbacks=[callback], max_steps=4, logger=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module)
    return callback, module, [str(w.message) for w in caught]


def test_sparsity_lr_leaves_t5_relative_buckets_at_multiplier_one(tmp_path):
    callback, module, messages = _fit_t5(tmp_path, "adamw")
    for name in (f"model.{ENCODER_BIAS}", f"model.{DECODER_BIAS}"):
        assert name in callback.tracked
        assert module.lrs[name] == [1e-3] * 4  # never multiplied at any step
        assert callback.multipliers.get(name, 1.0) == 1.0
        assert sum(name in m for m in messages) == 1, [m for m in messages if name in m]
        assert "looked up by position" in callback.not_acting_on[name]
        assert "query and key positions" in callback.positional[name]
    # The shared token embedding, tied to the head, is left alone as before: for being tied, not positional.
    assert "tied" in callback.not_acting_on["model.shared.weight"]
    assert "model.shared.weight" not in callback.positional


def test_sparsity_lr_takes_t5_relative_buckets_off_geo_adamw_row_rule(tmp_path):
    callback, module, _ = _fit_t5(tmp_path, "geo_adamw")
    optimizer = module.trainer.optimizers[0]
    params = dict(module.named_parameters())
    for name in (f"model.{ENCODER_BIAS}", f"model.{DECODER_BIAS}"):
        assert optimizer.state[params[name]]["row_mode"] == POSITIONAL
        assert name in callback.positional


class DistanceTable(pl.LightningModule):
    """A token embedding and a learned bias per clipped |key - query| distance, stored in every other row: a bucket
    layout the gradient check does not know (touched rows 1, 3, 5, ...), found from the indices."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(200, 8)
        self.bias_table = nn.Embedding(16, 1)
        self.head = nn.Linear(8, 200)

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        t = ids.shape[1]
        distance = (torch.arange(t)[None, :] - torch.arange(t)[:, None]).abs().clamp_max(7) * 2 + 1  # (T, T)
        scores = self.bias_table(distance).squeeze(-1).masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))
        x = torch.softmax(scores, dim=-1) @ self.tokens(ids)  # (B, T, C)
        return nn.functional.cross_entropy(self.head(x[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        ids = (torch.rand(64, 12, generator=generator) ** 3 * 200).long()
        return DataLoader(torch.utils.data.TensorDataset(ids), batch_size=8)

    def configure_optimizers(self):
        return GeoAdamW(self.parameters(), lr=1e-2)


def test_a_table_found_from_its_indices_is_marked_on_geo_adamw(tmp_path):
    pl.seed_everything(0, verbose=False)
    callback = SparsityAwareLR()
    module = DistanceTable()
    reference = copy.deepcopy(module.bias_table)
    reference(torch.tensor([[1, 3], [3, 1]])).sum().backward()
    assert row_modes([reference.weight.grad]) == [ROWS]  # its gradient alone would take the row rule
    trainer = tiny_trainer(tmp_path, callbacks=[callback], max_steps=3, logger=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module)
    optimizer = trainer.optimizers[0]
    assert optimizer.state[module.bias_table.weight]["row_mode"] == POSITIONAL
    assert "query and key positions" in callback.positional["bias_table.weight"]
    assert optimizer.state[module.tokens.weight]["row_mode"] == ROWS  # the token embedding keeps the row rule


def test_mark_positional_rejects_a_foreign_parameter():
    optimizer = GeoAdamW(nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="not a parameter of this optimizer"):
        optimizer.mark_positional(nn.Parameter(torch.zeros(2, 2)), "test")
