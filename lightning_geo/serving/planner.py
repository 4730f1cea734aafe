"""When to launch a batch and which requests go in it, under a p95 latency target: the serving scheduler.

Pure Python, no server: [`GeoBatchingLoop`][lightning_geo.serving.GeoBatchingLoop] feeds it the requests it
reads from LitServe's queue and asks it, whenever the model is free, for the next batch.

- **Which requests**: the pending requests are grouped by length under a padded-token budget with
  ``token_budget_batches``, the rule ``LengthBucketing`` uses in ``trainer.predict``; the group holding the
  oldest request is the batch (so no request waits behind younger ones for ever).
- **When**: at once if that group fills the budget, or if batches of its size keep up with the measured
  arrival rate (then waiting would only add latency); otherwise, when the server could not keep up with
  batches that small, after waiting for more requests, as long as the arrival rate says they will fill the
  budget before the oldest request would miss ``target_p95_ms``.
- **Budget**: ``max_tokens``, lowered so that one full batch takes at most a quarter of the target by
  the measured cost of a batch (``seconds = overhead + per_token x padded tokens``, fitted on the last
  batches), but never below an eighth of ``max_tokens``: where the per-batch overhead alone is that
  slow, small batches would only lower the throughput.
- **Admission**: a request whose predicted latency (its age plus the time to run every pending request
  before it and itself) exceeds a share of the target, or that finds ``max_queue`` requests pending, is
  refused with a ``retry_after`` (HTTP 503 in the server): latency stays bounded instead of growing with
  the queue. The share starts at 0.8 (the rest covers the HTTP path and the prediction's error) and
  follows the answers: it shrinks by a tenth after each batch in which more than 5% of the requests
  finished later than the target, and grows back while they are on time (by 0.1 per second, up to 0.9:
  a quiet server recovers from an overload within seconds, however few batches it runs).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_geo.utils.bucket_sampler import padded_tokens, token_budget_batches
from lightning_geo.utils.checks import check_number

BUDGET_SHARE = 0.25
"""Most of the latency target one full batch may take (its cost by the fitted model)."""
PADDING_ALLOWANCE = 1.15
"""Padded tokens per real token assumed when predicting how long the pending requests take."""
WAIT_UTILIZATION = 0.8
"""Busy share of the server, with batches of the current size, above which waiting for fuller batches pays."""
ADMIT_SHARE_START, ADMIT_SHARE_MIN, ADMIT_SHARE_MAX = 0.8, 0.25, 0.9
"""Share of the target a request's predicted latency may take to be admitted: first, least and most."""
LATE_SHARE = 0.05
"""Share of a batch's requests finishing after the target above which the admission share shrinks."""
ADMIT_SHARE_RECOVERY = 0.1
"""Growth of the admission share per second of on-time answers."""


@dataclass
class PendingRequest:
    """A request waiting for a batch: ``length`` in tokens, ``arrival`` in ``time.monotonic()`` seconds."""

    length: int
    arrival: float
    payload: Any = field(default=None, repr=False)


class BatchCostModel:
    """A batch's seconds as ``overhead_s + per_token_s x padded_tokens``, least squares over recent batches.

    Each new batch weighs 1 and the earlier ones ``forget`` times less each time, so the fit follows a
    change of load or of machine within ~``1 / (1 - forget)`` batches. Until two batches of different sizes
    are seen, ``per_token_s`` is the last measurement less the prior overhead.

    Args:
        overhead_s: Prior per-batch cost in seconds. Default 1e-3.
        per_token_s: Prior cost per padded token in seconds. Default 2e-6.
        forget: Weight kept by the older batches at each new one, in ``(0, 1)``. Default 0.95.
    """

    def __init__(self, overhead_s: float = 1e-3, per_token_s: float = 2e-6, forget: float = 0.95) -> None:
        self.overhead_s = check_number("BatchCostModel", "overhead_s", overhead_s, 0.0)
        self.per_token_s = check_number("BatchCostModel", "per_token_s", per_token_s, 0.0, low_open=True)
        self.forget = check_number("BatchCostModel", "forget", forget, 0.0, 1.0, low_open=True, high_open=True)
        self._sums = [0.0] * 5  # weight, x, x^2, y, x*y
        self.batches = 0

    def update(self, padded: int, seconds: float) -> None:
        """Add one measured batch: ``padded`` tokens (batch size x its longest request) took ``seconds``."""
        x, y = float(max(padded, 1)), max(float(seconds), 0.0)
        self._sums = [s * self.forget for s in self._sums]
        for k, value in enumerate((1.0, x, x * x, y, x * y)):
            self._sums[k] += value
        self.batches += 1
        w, sx, sxx, sy, sxy = self._sums
        spread = w * sxx - sx * sx
        if spread > 1e-9 * max(w * sxx, 1.0):
            slope = (w * sxy - sx * sy) / spread
            intercept = (sy - slope * sx) / w
            if slope > 0 and intercept >= 0:
                self.per_token_s, self.overhead_s = slope, intercept
                return
        # one size seen, or a fit outside the physical range: keep the overhead, refit the slope through it
        self.per_token_s = max((sy - self.overhead_s * w) / sx, 1e-12)

    def predict(self, padded: float) -> float:
        """Predicted seconds of a batch of ``padded`` padded tokens."""
        return self.overhead_s + self.per_token_s * max(padded, 0.0)

    def tokens_within(self, seconds: float) -> int:
        """Most padded tokens one batch can hold and still take at most ``seconds``."""
        return max(int((seconds - self.overhead_s) / self.per_token_s), 0)


class ArrivalRate:
    """Requests and tokens per second over the last ``window_s`` seconds of arrivals (at most 4096 kept)."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = check_number("ArrivalRate", "window_s", window_s, 0.0, low_open=True)
        self._arrivals: deque[tuple[float, int]] = deque()
        self._tokens = 0  # of the arrivals kept, so that a rate costs no pass over them

    def add(self, arrival: float, length: int) -> None:
        """Record a request of ``length`` tokens arriving at ``arrival`` (monotonic seconds)."""
        if len(self._arrivals) == 4096:
            self._tokens -= self._arrivals.popleft()[1]
        self._arrivals.append((arrival, length))
        self._tokens += length

    def tokens_per_s(self, now: float) -> float:
        """Tokens arriving per second lately; 0.0 with fewer than two arrivals in the window."""
        while self._arrivals and self._arrivals[0][0] < now - self.window_s:
            self._tokens -= self._arrivals.popleft()[1]
        if len(self._arrivals) < 2:
            return 0.0
        span = max(now - self._arrivals[0][0], 1e-6)
        return self._tokens / span


class BatchPlanner:
    """Length-grouped batches launched under a p95 latency target, with admission control.

    Args:
        target_p95_ms: The latency the server aims to keep 95% of requests under, from arrival to
            answer, in milliseconds. Default 200.
        max_tokens: Most padded tokens (requests x longest) per batch. Default 4096: on the CPUs measured,
            2048-4096 ran fastest per token; larger batches leave the caches. Lowered automatically while a
            full batch would take more than a quarter of the target.
        max_batch_size: Most requests per batch; ``None`` (default) for no limit beyond ``max_tokens``.
        max_queue: Most requests pending; a request beyond it is refused. Default 1024.
        cost: The batch cost model (default: a new ``BatchCostModel``).

    Raises:
        TypeError, ValueError: naming the argument, for a value of the wrong type or out of range.
    """

    def __init__(
        self,
        target_p95_ms: float = 200.0,
        max_tokens: int = 4096,
        max_batch_size: int | None = None,
        max_queue: int = 1024,
        cost: BatchCostModel | None = None,
    ) -> None:
        self.target_s = check_number("BatchPlanner", "target_p95_ms", target_p95_ms, 0.0, low_open=True) / 1000
        self.max_tokens = int(check_number("BatchPlanner", "max_tokens", max_tokens, 1))
        if max_batch_size is not None:
            max_batch_size = int(check_number("BatchPlanner", "max_batch_size", max_batch_size, 1))
        self.max_batch_size = max_batch_size
        self.max_queue = int(check_number("BatchPlanner", "max_queue", max_queue, 1))
        self.cost = cost or BatchCostModel()
        self.arrivals = ArrivalRate()
        self.pending: list[PendingRequest] = []
        self._pending_tokens = 0
        self.admit_share = ADMIT_SHARE_START
        self._last_record: float | None = None

    def budget(self) -> int:
        """This moment's padded-token budget: ``max_tokens``, or less (down to an eighth) if a full batch is slow."""
        fits = self.cost.tokens_within(BUDGET_SHARE * self.target_s)
        return max(min(self.max_tokens, fits), self.max_tokens // 8, 1)

    def backlog_s(self, extra_tokens: int = 0) -> float:
        """Predicted seconds to run every pending request (plus ``extra_tokens`` more), in full batches."""
        tokens = self._pending_tokens + extra_tokens
        if tokens <= 0:
            return 0.0
        batches = math.ceil(PADDING_ALLOWANCE * tokens / self.budget())
        return batches * self.cost.overhead_s + self.cost.per_token_s * PADDING_ALLOWANCE * tokens

    def admit(self, request: PendingRequest, now: float) -> float | None:
        """Queue ``request``, or refuse it: returns ``None`` if queued, else the seconds to wait before a retry.

        Refused when ``max_queue`` requests are pending or when its predicted latency (its age, the pending
        requests' predicted time and its own) exceeds ``admit_share`` of the target.
        """
        self.arrivals.add(request.arrival, request.length)
        backlog = self.backlog_s(request.length)
        late = (now - request.arrival) + backlog > self.admit_share * self.target_s
        if len(self.pending) >= self.max_queue or late:
            return max(backlog, self.target_s)
        self.pending.append(request)
        self._pending_tokens += request.length
        return None

    def next_batch(self, now: float) -> tuple[list[PendingRequest], float]:
        """The batch to launch now, or how long to wait for a better one.

        Returns:
            ``(batch, 0.0)`` to launch ``batch`` now (removed from the pending requests), or ``([], wait_s)``
            to wait at most ``wait_s`` seconds for more requests and ask again (``inf`` when none is pending).
        """
        if not self.pending:
            return [], math.inf
        budget = self.budget()
        lengths = [p.length for p in self.pending]
        groups, _ = token_budget_batches(lengths, budget, max_batch_size=self.max_batch_size)
        oldest = min(range(len(self.pending)), key=lambda i: self.pending[i].arrival)
        group = next(g for g in groups if oldest in g)
        tokens = padded_tokens(group, lengths)
        full = len(groups) > 1 or (self.max_batch_size is not None and len(group) >= self.max_batch_size)
        rate = self.arrivals.tokens_per_s(now)
        busy = rate * self.cost.predict(tokens) / max(tokens, 1)  # share of time spent on batches of this size
        if not full and busy > WAIT_UTILIZATION:
            slack = self.pending[oldest].arrival + self.target_s - now - self.cost.predict(budget)
            fill_s = (budget - tokens) / rate
            if 0 < fill_s <= slack:
                return [], fill_s
        chosen = set(group)
        batch = [p for i, p in enumerate(self.pending) if i in chosen]
        self.pending = [p for i, p in enumerate(self.pending) if i not in chosen]
        self._pending_tokens -= sum(p.length for p in batch)
        return batch, 0.0

    def record(self, batch: Sequence[PendingRequest], seconds: float, now: float) -> None:
        """Feed back a batch ``next_batch`` returned: it ran ``seconds`` and was answered at ``now``.

        Updates the cost model, and the admission share from how many of its requests were late.
        """
        self.cost.update(len(batch) * max((p.length for p in batch), default=1), seconds)
        late = sum(now - p.arrival > self.target_s for p in batch)
        elapsed = 0.0 if self._last_record is None else max(now - self._last_record, 0.0)
        self._last_record = now
        if batch and late > LATE_SHARE * len(batch):
            self.admit_share = max(ADMIT_SHARE_MIN, self.admit_share * 0.9)
        else:
            self.admit_share = min(ADMIT_SHARE_MAX, self.admit_share + ADMIT_SHARE_RECOVERY * elapsed)
