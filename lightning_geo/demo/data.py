"""Fixed-length character windows as a map-style dataset, and the demo's DataModules.

``CharDataModule`` takes a loaded ``Corpus``; ``CorpusDataModule`` takes the
corpus as a path (or ``None`` for the Python standard library) and loads it, for LightningCLI / YAML configs.

One sample is one window of ``seq_len + 1`` consecutive characters (inputs and next-character targets),
cut from the encoded text without overlap: sample ``i`` always holds the same text, so a sampler (or a
curriculum) can choose samples by index and a resumed run sees the same data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_geo.demo.corpus import Corpus, CorpusError, load_corpus

if TYPE_CHECKING:
    from lightning_geo.demo.bpe import SubwordCorpus


class CharWindows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Non-overlapping windows of ``seq_len + 1`` characters: ``(input ids, target ids)``, each ``(seq_len,)``.

    Args:
        ids: 1-D tensor of character ids.
        seq_len: Characters per sample (the targets are the inputs shifted by one).
        indices: Optional subset of window numbers to expose (e.g. an evenly spread validation subset).
    """

    def __init__(self, ids: torch.Tensor, seq_len: int, indices: list[int] | None = None) -> None:
        self.ids = ids
        self.seq_len = seq_len
        num_windows = (len(ids) - 1) // seq_len
        self.indices = list(range(num_windows)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.indices[i] * self.seq_len
        window = self.ids[start : start + self.seq_len + 1].long()
        return window[:-1], window[1:]


class CharDataModule(pl.LightningDataModule):
    """Training windows in random order and a fixed, evenly spread validation subset.

    The test loader is the validation subset: the corpus holds out one set of files, and ``test`` reports
    the loss on it under ``test/`` (the demo has no third split).

    Args:
        corpus: The encoded corpus (of characters, or of subword tokens: a
            ``SubwordCorpus``).
        seq_len: Characters per sample. Default 128.
        batch_size: Samples per batch and per device. Default 32.
        val_samples: Validation windows, spread evenly over the validation text; at most all of them.
            Default 256.

    Raises:
        CorpusError: if the training or validation text is shorter than one batch of samples.
    """

    def __init__(
        self, corpus: Corpus | SubwordCorpus, *, seq_len: int = 128, batch_size: int = 32, val_samples: int = 256
    ) -> None:
        super().__init__()
        self.corpus = corpus
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.train_set = CharWindows(corpus.train, seq_len)
        if len(self.train_set) < batch_size:
            raise CorpusError(
                f"the training text ({len(corpus.train):,} characters) is too short for one batch of "
                f"{batch_size} x {seq_len + 1} characters; use a larger corpus or smaller --batch-size/--seq-len"
            )
        num_val = (len(corpus.val) - 1) // seq_len
        if num_val < 1:
            raise CorpusError(
                f"the validation text ({len(corpus.val):,} characters) is shorter than one sample of "
                f"{seq_len + 1} characters; use a larger corpus or a smaller --seq-len"
            )
        count = min(val_samples, num_val)
        self.val_set = CharWindows(corpus.val, seq_len, indices=[i * num_val // count for i in range(count)])

    @property
    def vocab(self) -> str | int:
        """The corpus's characters by id, or a subword corpus's vocabulary size (what the model's ``vocab`` must
        be)."""
        return self.corpus.vocab

    @override
    def train_dataloader(self) -> DataLoader:
        # Everything is in memory and a sample is one slice: worker processes would only add start-up time.
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class CorpusDataModule(CharDataModule):
    """``CharDataModule`` that loads its corpus from a path: the form LightningCLI and YAML configs take.

    Args:
        corpus: A UTF-8 text file or a folder of text files. Default ``None``: the ``.py`` files of the running
            Python's standard library (31 M characters; about 5 s to load on a 2-core CPU).
        seq_len: Characters per sample. Default 128.
        batch_size: Samples per batch and per device. Default 32.
        val_samples: Validation windows, spread evenly over the validation text. Default 256.
        val_fraction: Share of the files (of the characters, for a single file) held out for validation, in
            ``(0, 0.5]``. Default 0.05.
        vocab_size: Most character ids, id 0 (unknown characters) included, in ``[2, 65536]``. Default 256.

    Raises:
        CorpusError: if the corpus is missing, empty, binary or too short for one batch.
        ValueError: for ``val_fraction`` or ``vocab_size`` out of range.

    Example:
        ```python
        data = CorpusDataModule("notes.txt", seq_len=64)
        model = CharLanguageModel(data.vocab, seq_len=64)
        ```
    """

    def __init__(
        self,
        corpus: str | None = None,
        *,
        seq_len: int = 128,
        batch_size: int = 32,
        val_samples: int = 256,
        val_fraction: float = 0.05,
        vocab_size: int = 256,
    ) -> None:
        loaded = load_corpus(corpus, val_fraction=val_fraction, vocab_size=vocab_size)
        super().__init__(loaded, seq_len=seq_len, batch_size=batch_size, val_samples=val_samples)
        self.corpus_path = corpus
        self.val_fraction = val_fraction
        self.vocab_size = vocab_size
