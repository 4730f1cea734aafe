"""``lightning-geo predict``: score a folder of text files with a trained demo model, length-bucketed.

Each file is encoded with the checkpoint's own vocabulary (unknown characters become id 0) and cut into
pieces of at most ``seq_len + 1`` characters (the model's context plus the next character to predict). The
pieces, whose lengths vary with the files' sizes, go through ``trainer.predict`` with
[`LengthBucketing`][lightning_geo.callbacks.LengthBucketing] under a token budget; their summed next-character losses
come back in dataset order and add up to one score per file: bits per character (lower: the text looks
more like what the model was trained on).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_geo.callbacks import LengthBucketing
from lightning_geo.demo.config import MIXED_PRECISIONS
from lightning_geo.demo.corpus import CorpusError, _iter_files, _read_text
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.strategies.checkpoint import load_module, read_checkpoint
from lightning_geo.utils.bucket_collate import pad_collate
from lightning_geo.utils.table import format_table

PREDICT_PRECISIONS: tuple[str, ...] = ("32-true", *MIXED_PRECISIONS)
"""Precisions ``lightning-geo predict`` runs in; the mixed ones under GEO's ``PredictiveScalingPrecision``."""


class TextPieces(Dataset):
    """Files' character ids cut into pieces of at most ``piece_len`` characters; ``lengths`` for bucketing.

    Args:
        texts: One text per file.
        vocab: The model's characters by id (id 0: every character outside it).
        piece_len: Most characters per piece (the model's ``seq_len + 1``), ``>= 2``.
    """

    def __init__(self, texts: list[str], vocab: str, piece_len: int) -> None:
        index = {ch: i for i, ch in enumerate(vocab)}
        self.pieces: list[torch.Tensor] = []
        self.file_of: list[int] = []
        for number, text in enumerate(texts):
            ids = torch.tensor([index.get(ch, 0) for ch in text], dtype=torch.long)
            # consecutive pieces overlap by one character, so every character after the first is predicted once
            for start in range(0, max(len(ids) - 1, 1), piece_len - 1):
                piece = ids[start : start + piece_len]
                if len(piece) >= 2:
                    self.pieces.append(piece)
                    self.file_of.append(number)
        self.lengths = [len(p) for p in self.pieces]

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.pieces[i], "attention_mask": torch.ones_like(self.pieces[i])}


class PieceScorer(pl.LightningModule):
    """Wraps a ``CharLanguageModel``: ``predict_step`` returns each piece's summed loss (nats) and targets."""

    def __init__(self, model: CharLanguageModel) -> None:
        super().__init__()
        self.model = model

    @override
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, T) each
        logits = self.model(ids[:, :-1])  # (B, T-1, V); causal, so right padding changes no real position
        losses = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
        targets = mask[:, 1:].float()
        return {"loss_sum": (losses * targets).sum(1), "targets": targets.sum(1)}


@dataclass
class FileScore:
    """One file's score: ``bits_per_char`` over its ``characters`` (all but the first are predicted)."""

    path: str
    characters: int
    bits_per_char: float


@dataclass
class PredictResult:
    """Scores of every file, and how the run went."""

    scores: list[FileScore]
    pieces: int
    seconds: float
    padding_ratio: float

    def table(self) -> str:
        """The scores as a text table, one row per file."""
        rows = [[s.path, s.characters, f"{s.bits_per_char:.3f}"] for s in self.scores]
        return format_table(["file", "characters", "bits/char"], rows)

    def summary(self) -> str:
        """One line: files, pieces, speed and padding."""
        return (f"{len(self.scores)} files, {self.pieces} pieces in {self.seconds:.1f} s "
                f"({self.pieces / max(self.seconds, 1e-9):,.0f} pieces/s), padded/real tokens {self.padding_ratio:.2f}")


def read_folder(folder: str | Path) -> tuple[list[str], list[str]]:
    """The relative paths and texts of the UTF-8 text files under ``folder`` (binary and empty files skipped).

    Raises:
        CorpusError: if ``folder`` is not a folder or holds no text file.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CorpusError(f"{str(root)!r} is not a folder")
    paths, texts = [], []
    for path in _iter_files(root, None):
        text = _read_text(path)
        if text and len(text) >= 2:
            paths.append(path.relative_to(root).as_posix())
            texts.append(text)
    if not texts:
        raise CorpusError(f"folder {str(root)!r} contains no UTF-8 text file of 2 characters or more")
    return paths, texts


def load_demo_model(checkpoint: str | Path, *, name: str = "checkpoint") -> CharLanguageModel:
    """The ``CharLanguageModel`` in ``checkpoint`` (a file, or the folder ``strategy="geo_hybrid"`` saves), on the CPU.

    Args:
        checkpoint: A checkpoint of the demo model.
        name: What messages call ``checkpoint`` (``"--checkpoint"`` for the command-line flag).

    Raises:
        ValueError: naming ``name``, if it holds another model (what it holds instead: its hyperparameters and
            first weights); ``UnreadableCheckpointError`` (a ValueError) if it is truncated or corrupt.
        OSError: if it does not exist.
    """
    try:
        return load_module(CharLanguageModel, checkpoint, name=name)
    except (TypeError, KeyError, RuntimeError) as err:  # CharLanguageModel's arguments or weights are not there
        state = read_checkpoint(checkpoint, name=name)  # read again, on this path only, to say what it holds
        hparams = sorted(state.get("hyper_parameters") or {})
        weights = list(state.get("state_dict") or {})
        shown = ", ".join(weights[:3]) + (", ..." if len(weights) > 3 else "") if weights else "none"
        raise ValueError(f"{name} {checkpoint} is not a checkpoint of the demo model (CharLanguageModel, whose "
                         f"hyperparameters include 'vocab'): it holds hyperparameters {hparams or 'none'} and weights "
                         f"{shown}; give one that 'lightning-geo fit' saved") from err


def load_character_model(checkpoint: str | Path, *, name: str = "checkpoint", command: str = "predict"
                         ) -> CharLanguageModel:
    """``load_demo_model``, refusing a subword-vocabulary model (``command`` scores characters).

    Raises:
        ValueError: for a subword-vocabulary checkpoint, naming ``command``; else as ``load_demo_model``.
    """
    model = load_demo_model(checkpoint, name=name)
    if not isinstance(model.hparams["vocab"], str):
        raise ValueError(f"{checkpoint} is a subword-vocabulary model; {command} scores character models "
                         "(train one with --tokenizer char)")
    return model


def score_folder(
    checkpoint: str | Path,
    folder: str | Path,
    *,
    max_tokens: int = 8192,
    batch_size: int = 32,
    precision: str = "32-true",
    accelerator: str = "auto",
    name: str = "checkpoint",
) -> PredictResult:
    """Score every text file under ``folder`` with the demo model in ``checkpoint``, length-bucketed.

    Args:
        checkpoint: A checkpoint of ``CharLanguageModel`` (e.g. from ``lightning-geo fit``): a file or the
            distributed checkpoint folder ``strategy="geo_hybrid"`` saves.
        folder: A folder of text files.
        max_tokens: ``LengthBucketing``'s budget of padded characters per batch. Default 8192.
        batch_size: The DataLoader's batch size; predictions are regrouped by it. Default 32.
        precision: One of ``PREDICT_PRECISIONS``. Default ``"32-true"``.
        accelerator: Lightning accelerator. Default ``"auto"``.
        name: What messages call ``checkpoint`` (``"--checkpoint"`` for the command-line flag).

    Raises:
        ValueError: for an unknown ``precision``, a checkpoint of another model or a subword-vocabulary one;
            CorpusError (a ValueError) for a folder without text.
        OSError: if the checkpoint does not exist; ``UnreadableCheckpointError`` (a ValueError) if it is
            truncated or corrupt.
    """
    if precision not in PREDICT_PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PREDICT_PRECISIONS)}")
    model = load_character_model(checkpoint, name=name)
    vocab = model.hparams["vocab"]
    paths, texts = read_folder(folder)
    dataset = TextPieces(texts, vocab, model.config.seq_len + 1)
    bucketing = LengthBucketing(max_tokens=max_tokens)
    plugins: list[Any] = []
    if precision != "32-true":
        from lightning_geo.precision import PredictiveScalingPrecision

        plugins.append(PredictiveScalingPrecision(precision))  # type: ignore[arg-type]
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[bucketing], plugins=plugins)
    start = time.perf_counter()
    # one dataloader, predictions returned: a list of PieceScorer.predict_step's dicts
    batches = cast("list[dict[str, torch.Tensor]]", trainer.predict(
        PieceScorer(model), DataLoader(dataset, batch_size=batch_size, collate_fn=pad_collate)
    ))
    seconds = time.perf_counter() - start
    loss_sum = torch.cat([b["loss_sum"] for b in batches]).double()
    targets = torch.cat([b["targets"] for b in batches]).double()
    file_of = torch.tensor(dataset.file_of)
    file_loss = torch.zeros(len(texts), dtype=torch.float64).index_add_(0, file_of, loss_sum)
    file_targets = torch.zeros(len(texts), dtype=torch.float64).index_add_(0, file_of, targets)
    scores = [FileScore(path, len(text), float(loss / count / math.log(2)))
              for path, text, loss, count in zip(paths, texts, file_loss.tolist(), file_targets.tolist(), strict=True)]
    return PredictResult(scores, len(dataset), seconds, bucketing.padding_ratio)
