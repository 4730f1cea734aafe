"""The demo corpus: stdlib sources by default, split by file, and clear errors for unusable input."""

from __future__ import annotations

import pytest
import torch

from lightning_geo.demo.corpus import UNKNOWN, CorpusError, load_corpus, stdlib_source_dir


def test_default_corpus_is_the_stdlib_split_by_file():
    corpus = load_corpus()
    assert str(stdlib_source_dir()) in corpus.source
    assert corpus.num_train_files > 100 and corpus.num_val_files > 10
    # About 5% of the files validate; the two sides share no file, so validation text is unseen code.
    assert 0.02 < corpus.num_val_files / (corpus.num_train_files + corpus.num_val_files) < 0.1
    assert len(corpus.train) > 1_000_000 and len(corpus.val) > 50_000
    assert corpus.vocab[0] == UNKNOWN and corpus.vocab_size == 256
    assert corpus.train.dtype == torch.int32 and int(corpus.train.max()) < corpus.vocab_size
    assert "def " in corpus.decode(corpus.val[:5000])


def test_folder_skips_binary_and_empty_files_and_is_deterministic(text_folder):
    first, second = load_corpus(text_folder), load_corpus(text_folder)
    assert first.num_train_files + first.num_val_files == 8  # image.bin and empty.txt are skipped
    assert first.num_val_files >= 1
    assert first.vocab == second.vocab and torch.equal(first.train, second.train) and torch.equal(first.val, second.val)


def test_single_file_is_split_by_position(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("abcdefghij" * 100)
    corpus = load_corpus(path, val_fraction=0.1)
    assert (len(corpus.train), len(corpus.val)) == (900, 100)
    assert corpus.num_val_files == 0


def test_round_trip_and_rare_characters_map_to_unknown(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("aaaaa bbb cc d é" * 20)
    corpus = load_corpus(path, vocab_size=4)  # unknown + the three most common: 'a', ' ', 'b'
    assert corpus.vocab == UNKNOWN + "a b"
    assert corpus.decode(corpus.encode("abcd")) == f"ab{UNKNOWN}{UNKNOWN}"


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing", None, "does not exist"),
        ("empty.txt", b"", "is empty"),
        ("program.bin", b"\x7fELF\x00\x01\x02" * 10, "is not a UTF-8 text file"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "is not a UTF-8 text file"),
        ("folder", "dir", "contains no non-empty UTF-8 text files"),
    ],
)
def test_unusable_corpus_raises_corpus_error(tmp_path, name, content, match):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
        (path / "only.bin").write_bytes(b"\x00" * 64)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CorpusError, match=match):
        load_corpus(path)


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match=r"val_fraction=0.0 must be in \(0, 0.5\]"):
        load_corpus(tmp_path, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"vocab_size=1 must be in \[2, 65536\]"):
        load_corpus(tmp_path, vocab_size=1)
