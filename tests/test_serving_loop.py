"""GeoBatchingLoop's batch step in-process (no server): collation, precision and its float32 fallback, splitting."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

ls = pytest.importorskip("litserve")

from lightning_geo.serving import GeoBatchingLoop  # noqa: E402


class ScaleAPI(ls.LitAPI):
    """Sums each request's embedded tokens through a linear layer scaled by ``scale``."""

    def __init__(self, scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.layer, self.scale = nn.Linear(4, 2), scale

    def predict(self, batch):
        x = batch["x"] * batch["attention_mask"].unsqueeze(-1)  # (B, T, 4): padding zeroed
        return self.layer(x.sum(1) * self.scale)


def _requests(lengths):
    torch.manual_seed(1)
    return [{"x": torch.randn(n, 4), "attention_mask": torch.ones(n)} for n in lengths]


def test_a_batch_is_padded_and_split_per_request_as_each_request_alone() -> None:
    api, loop = ScaleAPI(), GeoBatchingLoop(precision="32-true")
    loop._autocast = loop._resolve_precision("cpu")
    requests = _requests([3, 7, 1])
    outputs = loop._predict(api, requests, [{} for _ in requests])
    for request, output in zip(requests, outputs, strict=True):
        alone = loop._predict(api, [request], [{}])[0]
        assert output.shape == (2,) and torch.allclose(output, alone, rtol=0, atol=1e-6)


def test_a_batch_that_overflows_in_float16_runs_again_in_float32_and_says_so_once(caplog) -> None:
    api, loop = ScaleAPI(scale=1e6), GeoBatchingLoop(precision="16-mixed")
    loop._autocast = loop._resolve_precision("cpu")
    requests = _requests([5, 9])
    with caplog.at_level(logging.WARNING, logger="lightning_geo.serving.loop"):
        first = loop._predict(api, requests, [{}, {}])
        loop._predict(api, requests, [{}, {}])
    expected = GeoBatchingLoop(precision="32-true")
    expected._autocast = None
    assert all(torch.isfinite(o).all() for o in first)
    assert torch.allclose(torch.stack(first), torch.stack(expected._predict(api, requests, [{}, {}])))
    assert sum("run again in float32" in r.getMessage() for r in caplog.records) == 1


def test_bf16_autocast_runs_where_asked_and_float32_is_the_cpu_default() -> None:
    assert GeoBatchingLoop()._resolve_precision("cpu") is None
    assert GeoBatchingLoop(precision="bf16-mixed")._resolve_precision("cpu") == ("cpu", torch.bfloat16)


def test_an_output_that_cannot_be_split_per_request_asks_for_unbatch() -> None:
    class SumAPI(ScaleAPI):
        def predict(self, batch):
            return batch["x"].sum()

    loop = GeoBatchingLoop()
    loop._autocast = None
    with pytest.raises(ValueError, match=r"define LitAPI\.unbatch"):
        loop._predict(SumAPI(), _requests([2, 3]), [{}, {}])


def test_the_apis_own_batch_and_unbatch_are_used_when_it_defines_them() -> None:
    class OwnAPI(ScaleAPI):
        def batch(self, inputs):
            return {"x": torch.stack([i["x"][:1] for i in inputs]), "attention_mask": torch.ones(len(inputs), 1)}

        def unbatch(self, output):
            return ["first"] * len(output)

    loop = GeoBatchingLoop()
    loop._autocast = None
    assert loop._predict(OwnAPI(), _requests([2, 5]), [{}, {}]) == ["first", "first"]


def test_a_streaming_or_async_api_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="stream=True"):
        GeoBatchingLoop().pre_setup(ScaleAPI(stream=True))


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"max_length": 0}, "max_length"), ({"length_fn": 3}, "length_fn"), ({"precision": "fp8"}, "precision"),
     ({"target_p95_ms": -1}, "target_p95_ms")],
)
def test_a_bad_setting_is_refused_naming_it(kwargs, named) -> None:
    with pytest.raises((TypeError, ValueError), match=named):
        GeoBatchingLoop(**kwargs)
