"""A character-level text corpus that needs no download: by default, the running Python's standard library.

The corpus is split into training and validation *by file* (a stable hash of each file's relative path
picks the validation files), so validation text is code the model has never seen, not a neighbouring
window of the same file. A single text file is split by position instead (the last part validates).

Characters are mapped to ids by frequency in the training text: the ``vocab_size - 1`` most common
characters get their own id, every other character maps to id 0 (``UNKNOWN``).
"""

from __future__ import annotations

import os
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

UNKNOWN = "\ufffd"
"""The symbol of id 0, which stands for every character outside the vocabulary."""

_MAX_CODEPOINT = 0x110000
_SNIFF_BYTES = 8192


class CorpusError(ValueError):
    """The corpus cannot be used: missing path, no text, a binary file, or too little text."""


@dataclass(frozen=True)
class Corpus:
    """An encoded character corpus.

    Attributes:
        vocab: The characters by id; ``vocab[0]`` is ``UNKNOWN``.
        train: 1-D ``int32`` tensor of character ids for training.
        val: 1-D ``int32`` tensor of character ids for validation.
        source: Where the text came from (a path), for summaries.
        num_train_files: Files (or 1 for a single file) that make up ``train``.
        num_val_files: Files that make up ``val`` (0 when a single file was split by position).
    """

    vocab: str
    train: torch.Tensor
    val: torch.Tensor
    source: str
    num_train_files: int
    num_val_files: int

    @property
    def vocab_size(self) -> int:
        """Number of ids, including id 0 for unknown characters."""
        return len(self.vocab)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Turn character ids back into text."""
        return "".join(self.vocab[int(i)] for i in ids)

    def encode(self, text: str) -> torch.Tensor:
        """Turn text into character ids (``int64``); unknown characters become 0."""
        index = {ch: i for i, ch in enumerate(self.vocab)}
        return torch.tensor([index.get(ch, 0) for ch in text], dtype=torch.long)


def stdlib_source_dir() -> Path:
    """The folder of the running interpreter's standard library (``sysconfig``'s ``stdlib`` path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _read_text(path: Path) -> str | None:
    """The file's text, or ``None`` if it is not UTF-8 text (contains NUL bytes or does not decode)."""
    data = path.read_bytes()
    if b"\x00" in data[:_SNIFF_BYTES]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _iter_files(folder: Path, suffixes: tuple[str, ...] | None) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        # Sorted walk for a deterministic corpus; skip hidden folders, caches and installed packages.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in {"__pycache__", "site-packages"})
        for name in sorted(files):
            if name.startswith("."):
                continue
            if suffixes is None or name.endswith(suffixes):
                yield Path(root) / name


def _is_validation_file(relative_path: str, val_fraction: float) -> bool:
    return zlib.crc32(relative_path.encode("utf-8")) % 10_000 < val_fraction * 10_000


def _split_folder(folder: Path, val_fraction: float, suffixes: tuple[str, ...] | None) -> tuple[list[str], list[str]]:
    train: list[str] = []
    val: list[str] = []
    for path in _iter_files(folder, suffixes):
        text = _read_text(path)
        if not text:
            continue  # binary or empty files in a folder are skipped; a folder of only those is an error
        (val if _is_validation_file(path.relative_to(folder).as_posix(), val_fraction) else train).append(text)
    if not train and not val:
        raise CorpusError(f"corpus folder {str(folder)!r} contains no non-empty UTF-8 text files")
    if not val:  # tiny folders: make sure validation is not empty
        val.append(train.pop())
    if not train:
        train.append(val.pop())
    return train, val


def _split_file(path: Path, val_fraction: float) -> tuple[list[str], list[str]]:
    text = _read_text(path)
    if text is None:
        raise CorpusError(f"corpus file {str(path)!r} is not a UTF-8 text file")
    if not text:
        raise CorpusError(f"corpus file {str(path)!r} is empty")
    cut = int(len(text) * (1.0 - val_fraction))
    return [text[:cut]], [text[cut:]]


def _codepoints(texts: list[str]) -> np.ndarray:
    joined = "\n".join(texts)
    return np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)


@dataclass(frozen=True)
class CorpusTexts:
    """A corpus split into training and validation texts, before any encoding.

    Attributes:
        train: Training texts (one per file, or one for a single file).
        val: Validation texts.
        source: Where the text came from, for summaries.
        num_val_files: Files held out for validation (0 when a single file was split by position).
    """

    train: list[str]
    val: list[str]
    source: str
    num_val_files: int


def read_corpus_texts(path: str | os.PathLike[str] | None = None, *, val_fraction: float = 0.05) -> CorpusTexts:
    """Read and split a corpus (see ``load_corpus`` for ``path`` and ``val_fraction``), without encoding it.

    Raises:
        CorpusError: if the path does not exist, holds no text, or is a binary file.
        ValueError: for ``val_fraction`` out of range.
    """
    if not 0.0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction={val_fraction!r} must be in (0, 0.5]")
    if path is None:
        folder = stdlib_source_dir()
        train_texts, val_texts = _split_folder(folder, val_fraction, suffixes=(".py",))
        return CorpusTexts(train_texts, val_texts, f"Python standard library ({folder})", len(val_texts))
    location = Path(path).expanduser()
    if not location.exists():
        raise CorpusError(f"corpus path {str(location)!r} does not exist")
    if location.is_dir():
        train_texts, val_texts = _split_folder(location, val_fraction, suffixes=None)
        return CorpusTexts(train_texts, val_texts, str(location), len(val_texts))
    train_texts, val_texts = _split_file(location, val_fraction)
    return CorpusTexts(train_texts, val_texts, str(location), 0)


def load_corpus(
    path: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.05,
    vocab_size: int = 256,
) -> Corpus:
    """Load, split and encode a character corpus.

    Args:
        path: A UTF-8 text file, or a folder whose text files are all used (binary files are skipped).
            Default ``None``: the ``.py`` files of the running Python's standard library.
        val_fraction: Share of files (of characters, for a single file) held out for validation,
            in ``(0, 0.5]``. Default 0.05.
        vocab_size: Most ids to use, including id 0 for characters outside the vocabulary; in
            ``[2, 65536]``. Default 256.

    Raises:
        CorpusError: if the path does not exist, holds no text, or is a binary file.
        ValueError: for ``val_fraction`` or ``vocab_size`` out of range.
    """
    if not 2 <= vocab_size <= 65536:
        raise ValueError(f"vocab_size={vocab_size!r} must be in [2, 65536]")
    texts = read_corpus_texts(path, val_fraction=val_fraction)
    train_texts, val_texts, source, num_val_files = texts.train, texts.val, texts.source, texts.num_val_files
    train_points = _codepoints(train_texts)
    val_points = _codepoints(val_texts)
    counts = np.bincount(train_points, minlength=_MAX_CODEPOINT)
    observed = np.flatnonzero(counts)
    # Most frequent first; ties broken by code point so the vocabulary is deterministic.
    order = observed[np.lexsort((observed, -counts[observed]))][: vocab_size - 1]
    lookup = np.zeros(_MAX_CODEPOINT, dtype=np.int32)
    lookup[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    vocab = UNKNOWN + "".join(chr(int(c)) for c in order)
    return Corpus(
        vocab=vocab,
        train=torch.from_numpy(lookup[train_points]),
        val=torch.from_numpy(lookup[val_points]),
        source=source,
        num_train_files=len(train_texts),
        num_val_files=num_val_files,
    )
