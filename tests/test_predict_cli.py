"""`lightning-geo predict`: a folder of text files scored with a trained demo checkpoint, length-bucketed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_geo.demo.corpus import load_corpus
from lightning_geo.demo.data import CharDataModule
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.demo.predict import TextPieces, score_folder
from tests.helpers import tiny_trainer
from tests.test_demo_cli import _run_main

SEQ_LEN = 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train")
    (folder / "a.py").write_text("".join(f"def f_{i}(x):\n    return x * {i}\n\n" for i in range(200)))
    corpus = load_corpus(folder / "a.py", val_fraction=0.2)
    model = CharLanguageModel(corpus.vocab, seq_len=SEQ_LEN, n_layer=1, n_head=2, n_embd=16, warmup_steps=1)
    trainer = tiny_trainer(folder, logger=False, max_steps=3)
    trainer.fit(model, CharDataModule(corpus, seq_len=SEQ_LEN, batch_size=8, val_samples=8))
    path = folder / "demo.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "short.txt").write_text("def g(y):\n    return y\n")
    (folder / "long.py").write_text("".join(f"def h_{i}(z):\n    return z + {i}\n" for i in range(30)))
    (folder / "sub" / "exact.txt").write_text("x" * (SEQ_LEN + 1))
    (folder / "blob.bin").write_bytes(bytes(range(256)))
    return folder


def reference_bits_per_char(checkpoint: Path, text: str) -> float:
    """The file's score from one unbucketed, unpadded forward per piece."""
    model = CharLanguageModel.load_from_checkpoint(str(checkpoint), map_location="cpu").eval()
    pieces = TextPieces([text], model.hparams.vocab, SEQ_LEN + 1).pieces
    with torch.no_grad():
        total = sum(F.cross_entropy(model(p[None, :-1])[0], p[1:], reduction="sum").item() for p in pieces)
    return total / (len(text) - 1) / math.log(2)


def test_predict_scores_every_text_file_like_an_unbucketed_loop(checkpoint: Path, texts: Path, capsys) -> None:
    output = texts.parent / "scores.tsv"
    code, out, err = _run_main(["predict", str(texts), "--checkpoint", str(checkpoint), "--max-tokens", "64",
                                "--batch-size", "4", "--accelerator", "cpu", "--output", str(output)], capsys)
    assert code == 0, err
    assert "3 files" in out and "blob.bin" not in out
    rows = [line.split("\t") for line in output.read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["long.py", "short.txt", "sub/exact.txt"]
    for name, characters, bits in rows:
        text = (texts / name).read_text()
        assert int(characters) == len(text)
        assert float(bits) == pytest.approx(reference_bits_per_char(checkpoint, text), abs=1e-4)


def test_pieces_predict_every_character_after_the_first_once() -> None:
    dataset = TextPieces(["abcdefghij", "ab", "abcde"], "\ufffdabcdefghij", piece_len=5)
    assert dataset.lengths == [5, 5, 2, 2, 5]  # "abcde", "efghi", "ij"; "ab"; "abcde"
    assert dataset.file_of == [0, 0, 0, 1, 2]
    assert sum(n - 1 for n in dataset.lengths) == 9 + 1 + 4


def test_bad_input_ends_with_a_one_line_error(checkpoint: Path, texts: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run_main(["predict", str(texts), "--checkpoint", str(tmp_path / "missing.ckpt")], capsys)
    assert code == 2 and "lightning-geo predict: error: checkpoint" in err and "does not exist" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run_main(["predict", str(empty), "--checkpoint", str(checkpoint)], capsys)
    assert code == 2 and "contains no UTF-8 text file" in err
    code, _, err = _run_main(["predict", str(texts), "--checkpoint", str(checkpoint), "--max-tokens", "0"], capsys)
    assert code == 2 and "--max-tokens" in err
    with pytest.raises(ValueError, match="precision='64-true'"):
        score_folder(checkpoint, texts, precision="64-true")
