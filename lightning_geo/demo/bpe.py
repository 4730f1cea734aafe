"""A byte-level BPE vocabulary for the demo corpus, trained in-process with Hugging Face ``tokenizers``.

A subword vocabulary (4,096 tokens by default) makes the demo a realistic small LM: most embedding and
output rows are touched rarely, as in any LM with a real tokenizer (a 256-character vocabulary touches
nearly every row every step, so there is no sparsity for GEO to act on). Training the vocabulary and
encoding the text takes seconds; both are cached (``~/.cache/lightning_geo/bpe``, or ``$LIGHTNING_GEO_CACHE``),
keyed by the corpus, the vocabulary size, the character cap and the ``tokenizers`` version.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightning_geo.demo.corpus import CorpusError, read_corpus_texts

BPE_TRAINING_CHARS = 8_000_000
"""At most this many characters of training text teach the BPE merges (the whole text is still encoded)."""


@dataclass(frozen=True)
class SubwordCorpus:
    """A corpus encoded with a byte-level BPE.

    Attributes:
        tokenizer_json: The tokenizer, serialised by ``tokenizers`` (kept so that a model can decode).
        train: 1-D ``int32`` tensor of token ids for training.
        val: 1-D ``int32`` tensor of token ids for validation.
        source: Where the text came from.
        num_train_files: Files encoded into ``train``.
        num_val_files: Files that make up ``val`` (0 when a single file was split by position).
        train_chars: Characters of text behind ``train`` (for characters per token).
    """

    tokenizer_json: str
    train: torch.Tensor
    val: torch.Tensor
    source: str
    num_train_files: int
    num_val_files: int
    train_chars: int

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return self._tokenizer().get_vocab_size()

    @property
    def vocab(self) -> int:
        """What the demo model's ``vocab`` argument takes for a subword corpus: the vocabulary size."""
        return self.vocab_size

    @property
    def chars_per_token(self) -> float:
        """Characters of training text per token (about 3.3 on Python sources with 4,096 tokens)."""
        return self.train_chars / max(1, len(self.train))

    def _tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.tokenizer_json)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (``int64``) of ``text``."""
        return torch.tensor(self._tokenizer().encode(text).ids, dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """The text of token ``ids``."""
        return self._tokenizer().decode([int(i) for i in ids])


def default_cache_dir() -> Path:
    """``$LIGHTNING_GEO_CACHE/bpe`` if set, else ``~/.cache/lightning_geo/bpe``."""
    root = os.environ.get("LIGHTNING_GEO_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "lightning_geo") / "bpe"


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte has a token: nothing is unknown
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _encode(tokenizer, texts: list[str]) -> np.ndarray:
    ids = [np.asarray(e.ids, dtype=np.int32) for e in tokenizer.encode_batch(texts)]
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)


def load_bpe_corpus(
    path: str | os.PathLike[str] | None = None,
    *,
    vocab_size: int = 4096,
    max_train_chars: int | None = 12_000_000,
    val_fraction: float = 0.05,
    cache_dir: str | os.PathLike[str] | None = None,
) -> SubwordCorpus:
    """Load a corpus, learn a byte-level BPE on its training text and encode both splits (cached).

    Args:
        path: As for ``load_corpus``; default the Python standard library.
        vocab_size: Tokens in the vocabulary, in ``[260, 65536]``. Default 4096.
        max_train_chars: Encode at most this many characters of training text (whole files, in a fixed shuffled
            order), or ``None`` for all of it. Default 12 M (about 3.6 M tokens of Python: more than the demo
            trains on, in 4 s).
        val_fraction: Share held out for validation, as for ``load_corpus``. Default 0.05.
        cache_dir: Where to keep the tokenizer and the encoded ids. Default ``default_cache_dir``.

    Raises:
        CorpusError: as ``load_corpus`` does, or if the text encodes to too few tokens.
        ValueError: for ``vocab_size`` or ``max_train_chars`` out of range.
    """
    try:
        import tokenizers
    except ImportError as err:
        raise CorpusError(
            "the BPE vocabulary needs Hugging Face tokenizers: pip install 'lightning_geo[demo]' "
            "(or use --tokenizer char)"
        ) from err
    if not 260 <= vocab_size <= 65536:
        raise ValueError(f"vocab_size={vocab_size!r} must be in [260, 65536] (256 bytes and some merges)")
    if max_train_chars is not None and max_train_chars < 1:
        raise ValueError(f"max_train_chars={max_train_chars!r} must be positive (or None for all the text)")
    texts = read_corpus_texts(path, val_fraction=val_fraction)
    order = list(range(len(texts.train)))
    random.Random(0).shuffle(order)  # a fixed spread over the corpus, not its alphabetically first files
    chosen, total = [], 0
    for i in order:
        if max_train_chars is not None and total >= max_train_chars:
            break
        chosen.append(texts.train[i])
        total += len(texts.train[i])

    key = hashlib.sha256(json.dumps([
        texts.source, len(texts.train), len(texts.val), total, sum(map(len, texts.val)), vocab_size, max_train_chars,
        tokenizers.__version__,
    ]).encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = folder / key
    files = {name: entry / name for name in ("tokenizer.json", "train.npy", "val.npy")}
    if all(f.is_file() for f in files.values()):
        tokenizer_json = files["tokenizer.json"].read_text()
        train, val = np.load(files["train.npy"]), np.load(files["val.npy"])
    else:
        learn_from, learned = [], 0
        for text in chosen:
            if learned >= BPE_TRAINING_CHARS:
                break
            learn_from.append(text)
            learned += len(text)
        tokenizer = _train_tokenizer(learn_from, vocab_size)
        tokenizer_json = tokenizer.to_str()
        train, val = _encode(tokenizer, chosen), _encode(tokenizer, texts.val)
        entry.mkdir(parents=True, exist_ok=True)
        for name, array in (("train.npy", train), ("val.npy", val)):
            partial = entry / f"{name}.{os.getpid()}.partial"
            with partial.open("wb") as handle:
                np.save(handle, array.astype(np.uint16))  # vocab_size <= 65536
            os.replace(partial, files[name])  # atomic: a concurrent run never reads half a file
        partial = entry / f"tokenizer.json.{os.getpid()}.partial"
        partial.write_text(tokenizer_json)
        os.replace(partial, files["tokenizer.json"])
    if len(train) < 2 or len(val) < 2:
        raise CorpusError(f"the corpus {texts.source!r} encodes to too few tokens ({len(train)} / {len(val)})")
    return SubwordCorpus(
        tokenizer_json=tokenizer_json,
        train=torch.from_numpy(train.astype(np.int32)),
        val=torch.from_numpy(val.astype(np.int32)),
        source=texts.source,
        num_train_files=len(chosen),
        num_val_files=texts.num_val_files,
        train_chars=total,
    )
