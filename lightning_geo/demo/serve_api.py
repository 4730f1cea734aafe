"""The demo character model behind LitServe: ``POST /predict {"text": ...}`` -> its bits per character.

What ``lightning-geo serve`` runs: a ``LitAPI`` that scores each posted text with a demo checkpoint the way
``lightning-geo predict`` scores a file piece (mean next-character loss over the text, in bits), batched by
[`GeoBatchingLoop`][lightning_geo.serving.GeoBatchingLoop].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from fastapi import HTTPException
from litserve import LitAPI


class DemoScoringAPI(LitAPI):
    """Scores posted texts with the demo character model in ``checkpoint``.

    Request: ``{"text": "..."}``, 2 to ``seq_len + 1`` characters (characters outside the model's
    vocabulary count as its id 0). Answer: ``{"bits_per_char": float}``.

    Args:
        checkpoint: A character-vocabulary demo checkpoint (``lightning-geo fit --tokenizer char``): a
            ``.ckpt`` file or the folder ``strategy="geo_hybrid"`` saves.

    Raises:
        ValueError: at ``setup``, for a checkpoint of another model or of a subword vocabulary.
    """

    def __init__(self, checkpoint: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checkpoint = str(checkpoint)

    def setup(self, device: str) -> None:
        """Load the model on ``device`` (LitServe calls this once per inference worker)."""
        from lightning_geo.demo.predict import load_character_model

        model = load_character_model(self.checkpoint, name="--checkpoint", command="serve")
        vocab = model.hparams["vocab"]
        self.model = model.to(device).eval()
        self.index = {ch: i for i, ch in enumerate(vocab)}
        self.max_chars = model.config.seq_len + 1

    def decode_request(self, request: dict) -> dict[str, torch.Tensor]:
        """``{"text": str}`` -> the text's character ids and mask (a 400 names what is wrong)."""
        text = request.get("text")
        if not isinstance(text, str):
            raise HTTPException(400, 'a request is a JSON object {"text": "..."} with a string text')
        if len(text) < 2:
            raise HTTPException(400, "text needs at least 2 characters (the first predicts the second)")
        ids = torch.tensor([self.index.get(ch, 0) for ch in text], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) padded ids and mask -> (B,) bits per character over each text's real characters."""
        device = next(self.model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        logits = self.model(ids[:, :-1])  # causal: right padding changes no real position
        losses = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
        targets = mask[:, 1:].float()
        return (losses * targets).sum(1) / targets.sum(1) / math.log(2)

    def encode_response(self, output: torch.Tensor) -> dict[str, Any]:
        """One text's score as JSON."""
        return {"bits_per_char": float(output)}
