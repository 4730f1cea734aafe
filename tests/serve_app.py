"""A tiny text classifier served by LitServe, for tests/test_serving.py: ``python tests/serve_app.py PORT ARM``.

``ARM`` is ``geo`` (GeoBatchingLoop, 200 ms target unless ``--target-ms``) or ``litserve`` (LitServe's own
batching). A request is ``{"ids": [int, ...]}`` (and optionally ``"slow_ms"``: its batch sleeps that long); the
answer ``{"logits": [float, float, float], "batch_size": int, "padded_length": int}``. A request holding the id
``FAIL_ID`` makes its whole batch raise.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import litserve as ls
import torch
from torch import nn

FAIL_ID = 999
VOCAB = 1000
MAX_LENGTH = 64


def classifier() -> nn.Module:
    """The served model: embedding, masked mean over the real tokens, a linear layer (fixed seed)."""
    torch.manual_seed(0)
    return nn.ModuleDict({"embed": nn.Embedding(VOCAB, 16), "head": nn.Linear(16, 3)})


def classify(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) ids and mask -> (B, 3) logits; padding (mask 0) changes nothing."""
    weights = attention_mask.unsqueeze(-1).float()
    pooled = (model["embed"](input_ids) * weights).sum(1) / weights.sum(1).clamp(min=1)
    return model["head"](pooled)


class ClassifierAPI(ls.LitAPI):
    """The LitAPI: one request is a list of token ids."""

    def setup(self, device: str) -> None:
        self.model = classifier()

    def decode_request(self, request: dict) -> dict[str, torch.Tensor]:
        ids = torch.tensor(request["ids"], dtype=torch.long)
        if ids.dim() != 1 or len(ids) == 0 or int(ids.min()) < 0 or int(ids.max()) >= VOCAB:
            raise ValueError(f"'ids' must be a non-empty list of ints in [0, {VOCAB})")
        slow_ms = torch.tensor(float(request.get("slow_ms", 0.0)))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "slow_ms": slow_ms}

    def batch(self, inputs: list) -> Any:  # LitServe's own arm: pad to the longest (GEO's arm pads alike)
        from lightning_geo.utils.bucket_collate import pad_collate

        return pad_collate(inputs)

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if bool((batch["input_ids"] == FAIL_ID).any()):
            raise RuntimeError("a request asked this batch to fail")
        time.sleep(float(batch["slow_ms"].max()) / 1000)
        with torch.no_grad():
            logits = classify(self.model, batch["input_ids"], batch["attention_mask"])
        shape = torch.tensor(batch["input_ids"].shape, dtype=logits.dtype).expand(len(logits), 2)
        return torch.cat([logits, shape], dim=1)  # (B, 5): logits, then the batch's size and padded length

    def unbatch(self, output: torch.Tensor) -> list:
        return list(output)

    def encode_response(self, output: torch.Tensor) -> dict:
        return {"logits": output[:3].tolist(), "batch_size": int(output[3]), "padded_length": int(output[4])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("arm", choices=("geo", "litserve"))
    parser.add_argument("--target-ms", type=float, default=200.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.arm == "geo":
        from lightning_geo.serving import GeoBatchingLoop, geo_server

        loop = GeoBatchingLoop(target_p95_ms=args.target_ms, max_length=MAX_LENGTH, max_tokens=512)
        server = geo_server(ClassifierAPI(), loop=loop, accelerator="cpu", timeout=60)
    else:
        api = ClassifierAPI(max_batch_size=8, batch_timeout=0.01)
        server = ls.LitServer(api, accelerator="cpu", timeout=60)
    server.run(port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
