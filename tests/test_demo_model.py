"""The demo's model, data and schedule: shapes, shifts and the LR curve."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_geo.demo.corpus import CorpusError, load_corpus
from lightning_geo.demo.data import CharDataModule
from lightning_geo.demo.model import CharLanguageModel, GPTConfig, warmup_cosine


def test_windows_are_inputs_and_next_character_targets(text_folder):
    corpus = load_corpus(text_folder)
    dm = CharDataModule(corpus, seq_len=16, batch_size=4, val_samples=5)
    x, y = dm.train_set[3]
    assert x.shape == y.shape == (16,) and x.dtype == torch.long
    assert torch.equal(x[1:], y[:-1])
    assert torch.equal(torch.cat([x, y[-1:]]), corpus.train[3 * 16 : 4 * 16 + 1].long())
    assert len(dm.val_set) == 5
    xb, _ = next(iter(dm.train_dataloader()))
    assert xb.shape == (4, 16)


def test_too_little_text_for_one_batch_is_a_corpus_error(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("x" * 300)
    corpus = load_corpus(path)
    with pytest.raises(CorpusError, match="too short for one batch of 32 x 129 characters"):
        CharDataModule(corpus, seq_len=128, batch_size=32)


def test_model_predicts_every_position_and_starts_near_uniform():
    torch.manual_seed(0)
    model = CharLanguageModel("abcdefghij", seq_len=8, n_layer=2, n_head=2, n_embd=16)
    assert len(model.model.blocks) == 2  # the block chain GEO parts look for
    x = torch.randint(0, 10, (3, 8))
    assert model(x).shape == (3, 8, 10)
    loss = model._loss((x, torch.randint(0, 10, (3, 8))))
    assert abs(loss.item() - math.log(10)) < 0.1
    with pytest.raises(ValueError, match="sequence length 9 exceeds the model's seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match=r"n_embd \(30\) must be divisible by n_head \(4\)"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_layer=0 must be a positive integer"):
        GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match="lr=0 must be positive"):
        CharLanguageModel("ab", lr=0)


def test_warmup_then_cosine_to_ten_percent():
    lr = [warmup_cosine(s, warmup_steps=10, total_steps=110) for s in range(120)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.55)  # half-way through the cosine
    assert lr[110] == pytest.approx(0.1) and lr[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lr[9:]))
    assert warmup_cosine(0, warmup_steps=0, total_steps=10) == pytest.approx(1.0)
