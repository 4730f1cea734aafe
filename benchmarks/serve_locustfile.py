"""Locust users for ``benchmarks/serve.py``: Poisson arrivals at a fixed offered rate, every request on record.

``serve.py`` runs it as ``python -m locust -f benchmarks/serve_locustfile.py --headless -u USERS -r USERS
--run-time Ns --host URL --texts TEXTS.json --records RECORDS.jsonl --rate R --seed S``.

Arrivals: each of the ``USERS`` users draws its send times as a Poisson process of rate ``R / USERS`` (gaps
exponential with mean ``USERS / R`` seconds, kept on a schedule, not counted from the last answer), so the users
together offer a Poisson process of rate ``R``. A user waits for its answer before its next send: a send falls
late only when its previous request is still in flight at its scheduled time, so the arrivals stay open-loop
while fewer than ``USERS`` requests are in flight; ``serve.py`` reports the rate achieved. When the run time is
over no user sends again, and the requests in flight are waited for (``--stop-timeout``).

Each request is ``POST /predict`` ``{"id": "<seed>-<user>-<n>", "text": <a random text of TEXTS.json>}`` (each
user's choices seeded by ``--seed`` and its number). ``RECORDS.jsonl`` gets one JSON line per event, time in
seconds since the epoch: ``{"event": "start", "t"}`` when the test starts, ``{"event": "sent", "id", "t"}``
just before a request goes out, and ``{"event": "answer", "id", "t", "ms", "status", "body_id",
"retry_after"}`` for each answer (``ms``: locust's unrounded latency; ``status`` 0 for a connection error;
``body_id``: the ``id`` of a 200 answer's body; ``retry_after``: a 503's ``Retry-After`` header or null).
"""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, events, task

_user_numbers = itertools.count()
_records: dict[str, Any] = {"file": None, "stopping": False}
_texts: list[str] = []


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--texts", default="", help="JSON file holding the list of texts to send")
    parser.add_argument("--records", default="", help="JSON-lines file every request and answer is written to")
    parser.add_argument("--rate", type=float, default=10.0, help="offered rate over all users, requests/s")
    parser.add_argument("--seed", type=int, default=0, help="seed of the users' choices of text and send times")


def _write(record: dict[str, Any]) -> None:
    if _records["file"] is not None:  # None after test_stop: a request the stop cut off is left unanswered
        _records["file"].write(json.dumps(record) + "\n")


@events.test_start.add_listener
def _open_records(environment: Any, **kwargs: Any) -> None:
    options = environment.parsed_options
    _texts[:] = json.loads(Path(options.texts).read_text(encoding="utf-8"))
    _records["file"] = open(options.records, "w", encoding="utf-8")  # noqa: SIM115 - closed at test_stop
    _write({"event": "start", "t": time.time()})


@events.test_stopping.add_listener
def _stop_sending(environment: Any, **kwargs: Any) -> None:
    # locust kills a waiting user at the stop, even one that has just woken up and sent: so none sends from here on
    _records["stopping"] = True


@events.test_stop.add_listener
def _close_records(environment: Any, **kwargs: Any) -> None:
    if _records["file"] is not None:
        _records["file"].close()
        _records["file"] = None


@events.request.add_listener
def _record_answer(response: Any, context: dict[str, Any], start_time: float, response_time: float,
                   **kwargs: Any) -> None:
    status = int(getattr(response, "status_code", 0) or 0)
    body_id = retry_after = None
    if status == 200:
        try:
            body_id = response.json().get("id")
        except (ValueError, AttributeError):
            body_id = None
    elif status == 503:
        retry_after = response.headers.get("retry-after")
    _write({"event": "answer", "id": context.get("id"), "t": start_time, "ms": response_time, "status": status,
            "body_id": body_id, "retry_after": retry_after})


class TextUser(FastHttpUser):
    """Sends random texts on its own Poisson schedule; waits for each answer (up to 120 s) before the next."""

    network_timeout = 120.0
    connection_timeout = 120.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.number = next(_user_numbers)
        self.rng = random.Random(options.seed * 1_000_003 + self.number)
        self.mean_gap_s = options.num_users / options.rate
        self.sent = 0
        self.next_send = time.time() + self.rng.expovariate(1 / self.mean_gap_s)
        gevent.sleep(max(self.next_send - time.time(), 0.0))

    def wait_time(self) -> float:
        return max(self.next_send - time.time(), 0.0)

    @task
    def send(self) -> None:
        if _records["stopping"]:
            return
        request_id = f"{self.environment.parsed_options.seed}-{self.number}-{self.sent}"
        text = self.rng.choice(_texts)
        self.sent += 1
        self.next_send += self.rng.expovariate(1 / self.mean_gap_s)
        _write({"event": "sent", "id": request_id, "t": time.time()})
        self.client.post("/predict", json={"id": request_id, "text": text}, context={"id": request_id})
