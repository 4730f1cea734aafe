"""``GeoBatchingLoop``: LitServe's inference loop with length-grouped batches under a p95 latency target.

LitServe's own batching collects up to ``max_batch_size`` requests within ``batch_timeout`` and pads them
together: on text of varied lengths most of such a batch is padding, and its size is the same whatever
the lengths and the load. This loop takes over the inference worker's queue: every request is decoded as
it arrives (a malformed or too-long one is answered 4xx there and never joins a batch), admitted or
refused with 503 by [`BatchPlanner`][lightning_geo.serving.BatchPlanner], and batched with requests of
similar length when the planner says so.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from queue import Empty, Queue
from typing import Any

import torch

from lightning_geo.serving.planner import BatchPlanner, PendingRequest
from lightning_geo.utils.bucket_collate import pad_collate
from lightning_geo.utils.bucket_lengths import sample_length
from lightning_geo.utils.bucket_order import Unsplittable, split_per_sample
from lightning_geo.utils.checks import check_number

try:
    from fastapi import HTTPException
    from litserve import LitAPI
    from litserve.loops.base import _SENTINEL_VALUE, LitLoop, _inject_context
    from litserve.utils import LitAPIStatus, LoopResponseType, PickleableHTTPException
except ImportError as err:  # pragma: no cover - the message is the point
    raise ImportError(
        "lightning_geo.serving needs LitServe: pip install 'lightning_geo[serve]'"
    ) from err

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


def _overridden(lit_api: LitAPI, name: str) -> bool:
    return getattr(type(lit_api), name) is not getattr(LitAPI, name)


def _all_finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True


class GeoBatchingLoop(LitLoop):
    """An inference loop for a LitServe ``LitAPI``: batches by length and by load, under a latency target.

    Each request is decoded alone (``decode_request``), measured in tokens (``length_fn``, default: its
    ``attention_mask``'s sum or ``input_ids``' length), then queued or refused. Batches are collated with
    the API's ``batch`` if it defines one, else padded to their longest request (``pad_collate``, the rule
    ``LengthBucketing`` uses: ``attention_mask`` padded with 0); outputs are split per request with the
    API's ``unbatch`` if it defines one, else along their first dimension, and each is encoded and sent to
    its own client.

    Answers GEO gives instead of a result: 400 for a request ``decode_request`` or ``length_fn`` fails on
    (naming the error), 413 for one longer than ``max_length``, 503 with ``Retry-After`` when the target
    cannot be held (with [`RetryAfterMiddleware`][lightning_geo.serving.RetryAfterMiddleware]), 500 to the
    requests of a batch that raised (the loop keeps serving). On LitServe's stop signal every admitted
    request is answered before the loop returns.

    Args:
        target_p95_ms: Latency target, arrival to answer, in milliseconds. Default 200.
        max_tokens: Most padded tokens per batch. Default 4096 (lowered while a full batch would take more
            than a quarter of the target).
        max_batch_size: Most requests per batch; ``None`` (default): no limit beyond ``max_tokens``.
        max_queue: Most requests waiting; more are refused with 503. Default 1024.
        max_length: Longest request in tokens; longer ones get 413. ``None`` (default): no limit.
        length_fn: Called with a decoded request, returns its length in tokens (default: see above).
        precision: ``"auto"`` (default: ``"bf16-mixed"`` on a CUDA device that supports it, else float32,
            said once in the log), ``"32-true"``, ``"bf16-mixed"`` or ``"16-mixed"``. Under a mixed precision
            a batch whose outputs are not finite is run again in float32 (said once in the log).

    Raises:
        TypeError, ValueError: naming the argument, for a wrong value.

    Example:
        ```python
        api = MyTextAPI(loop=GeoBatchingLoop(target_p95_ms=150, max_length=512))
        LitServer(api, middlewares=[RetryAfterMiddleware]).run(port=8000)
        ```
    """

    def __init__(
        self,
        target_p95_ms: float = 200.0,
        max_tokens: int = 4096,
        max_batch_size: int | None = None,
        max_queue: int = 1024,
        max_length: int | None = None,
        length_fn: Callable[[Any], int] | None = None,
        precision: str = "auto",
    ) -> None:
        super().__init__()
        self.planner = BatchPlanner(target_p95_ms, max_tokens, max_batch_size, max_queue)
        if max_length is not None:
            max_length = int(check_number("GeoBatchingLoop", "max_length", max_length, 1))
        self.max_length = max_length
        if length_fn is not None and not callable(length_fn):
            raise TypeError(f"GeoBatchingLoop: length_fn={length_fn!r} must be a callable or None")
        self.length_fn = length_fn
        if precision not in PRECISIONS:
            raise ValueError(f"GeoBatchingLoop: precision={precision!r} must be one of {PRECISIONS}")
        self.precision = precision
        self.stopping = False
        self._fp32_retry_said = False

    # ------------------------------------------------------------------------------------------ LitServe hooks
    def pre_setup(self, lit_api: LitAPI, spec: Any = None) -> None:
        """Refuse what this loop cannot serve: streaming APIs and async ``predict`` (LitServe calls this)."""
        if lit_api.stream:
            raise ValueError("GeoBatchingLoop answers each request once: it cannot serve a LitAPI with stream=True")
        if lit_api.enable_async:
            raise ValueError("GeoBatchingLoop runs predict synchronously: give a LitAPI with enable_async=False")

    def __call__(
        self,
        lit_api: LitAPI,
        device: str,
        worker_id: int,
        request_queue: Queue,
        transport: Any,
        workers_setup_status: dict[str, str],
        callback_runner: Any,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self.serve(lit_api, request_queue, transport)

    # ------------------------------------------------------------------------------------------ the loop
    def serve(self, lit_api: LitAPI, request_queue: Queue, transport: Any) -> None:
        """Read, admit and batch requests until LitServe's stop signal, then answer every admitted one."""
        self._autocast = self._resolve_precision(str(getattr(lit_api, "device", "cpu")))
        while True:
            self._read_waiting(lit_api, request_queue, transport)
            batch, wait_s = self.planner.next_batch(time.monotonic())
            if batch:
                self._run_batch(lit_api, batch, transport)
                continue
            if self.stopping:
                return
            try:
                item = request_queue.get(timeout=min(wait_s, 1.0))
            except Empty:
                continue
            self._receive(lit_api, item, transport)

    def _read_waiting(self, lit_api: LitAPI, request_queue: Queue, transport: Any) -> None:
        while not self.stopping:
            try:
                item = request_queue.get_nowait()
            except Empty:
                return
            self._receive(lit_api, item, transport)

    def _receive(self, lit_api: LitAPI, item: Any, transport: Any) -> None:
        if item == _SENTINEL_VALUE:
            self.stopping = True
            return
        response_queue_id, uid, timestamp, x_enc = item
        self.put_response(transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR)
        context: dict[str, Any] = {}
        try:
            if lit_api.spec is not None and hasattr(lit_api.spec, "populate_context"):
                lit_api.spec.populate_context(context, x_enc)
            x = _inject_context(context, lit_api.decode_request, x_enc)
            length = int(self.length_fn(x) if self.length_fn is not None else sample_length(x))
        except HTTPException as err:
            self._send_error(transport, response_queue_id, uid, err.status_code, err.detail)
            return
        except Exception as err:
            self._send_error(transport, response_queue_id, uid, 400, f"malformed request: {type(err).__name__}: {err}")
            return
        if self.max_length is not None and length > self.max_length:
            self._send_error(transport, response_queue_id, uid, 413,
                         f"request of {length} tokens: this server takes at most max_length={self.max_length}")
            return
        request = PendingRequest(length, timestamp, (response_queue_id, uid, x, context))
        retry_s = self.planner.admit(request, time.monotonic())
        if retry_s is None:
            return
        detail = {"error": "overloaded: the latency target cannot be held", "retry_after_s": math.ceil(retry_s),
                  "target_p95_ms": round(self.planner.target_s * 1000, 3), "pending": len(self.planner.pending)}
        self._send_error(transport, response_queue_id, uid, 503, detail)

    def _send_error(self, transport: Any, response_queue_id: int, uid: str, status: int, detail: Any) -> None:
        error = PickleableHTTPException(status, detail)
        self.put_response(transport, response_queue_id, uid, error, LitAPIStatus.ERROR, LoopResponseType.REGULAR)

    def _run_batch(self, lit_api: LitAPI, batch: list[PendingRequest], transport: Any) -> None:
        ids = [(p.payload[0], p.payload[1]) for p in batch]
        inputs = [p.payload[2] for p in batch]
        contexts = [p.payload[3] for p in batch]
        start = time.perf_counter()
        try:
            outputs = self._predict(lit_api, inputs, contexts)
            encoded = [_inject_context(c, lit_api.encode_response, y) for c, y in zip(contexts, outputs, strict=True)]
        except HTTPException as err:
            for queue_id, uid in ids:
                self._send_error(transport, queue_id, uid, err.status_code, err.detail)
            return
        except Exception as err:
            log.exception("a batch of %d requests failed; its requests get HTTP 500, the server goes on", len(batch))
            for queue_id, uid in ids:
                self._send_error(transport, queue_id, uid, 500, f"the batch holding this request failed: "
                                 f"{type(err).__name__}")
            return
        self.planner.record(batch, time.perf_counter() - start, time.monotonic())
        for (queue_id, uid), y_enc in zip(ids, encoded, strict=True):
            self.put_response(transport, queue_id, uid, y_enc, LitAPIStatus.OK, LoopResponseType.REGULAR)

    def _predict(self, lit_api: LitAPI, inputs: list[Any], contexts: list[dict[str, Any]]) -> list[Any]:
        collated = _inject_context(contexts, lit_api.batch, inputs) if _overridden(lit_api, "batch") else (
            pad_collate(inputs))
        if self._autocast is None:
            with torch.inference_mode():
                y = _inject_context(contexts, lit_api.predict, collated)
        else:
            device_type, dtype = self._autocast
            with torch.inference_mode(), torch.autocast(device_type, dtype=dtype):
                y = _inject_context(contexts, lit_api.predict, collated)
            if not _all_finite(y):
                if not self._fp32_retry_said:
                    log.warning("a batch's outputs overflowed under %s: such batches run again in float32", dtype)
                    self._fp32_retry_said = True
                with torch.inference_mode():
                    y = _inject_context(contexts, lit_api.predict, collated)
        if _overridden(lit_api, "unbatch"):
            outputs = list(_inject_context(contexts, lit_api.unbatch, y))
        else:
            try:
                outputs = split_per_sample(y, len(inputs))
            except Unsplittable as err:
                raise ValueError(
                    f"predict's output cannot be split per request ({err}): define LitAPI.unbatch"
                ) from err
        if len(outputs) != len(inputs):
            raise ValueError(f"unbatch returned {len(outputs)} outputs for a batch of {len(inputs)} requests")
        return outputs

    def _resolve_precision(self, device: str) -> tuple[str, torch.dtype] | None:
        device_type = "cuda" if device.startswith("cuda") else "cpu"
        if self.precision == "32-true":
            return None
        if self.precision == "auto":
            if device_type == "cuda" and torch.cuda.is_bf16_supported():
                return ("cuda", torch.bfloat16)
            log.info("GeoBatchingLoop serves in float32 on %s (precision='auto': bf16 on CUDA devices only)", device)
            return None
        return (device_type, torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16)
