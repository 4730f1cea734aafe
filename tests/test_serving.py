"""GEO's serving layer behind a real LitServe server on loopback, with real HTTP requests (no mocks).

One server (tests/serve_app.py: a tiny classifier under ``GeoBatchingLoop``, max_length 64, a 2 s target: lenient, so
that a loaded CI machine refuses no request the tests expect answered; the overload test makes batches slow instead)
serves every test in this file, in order; the last one stops it with SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("litserve")

from tests.helpers import free_port
from tests.serve_app import FAIL_ID, MAX_LENGTH, classifier, classify

APP = Path(__file__).with_name("serve_app.py")
ROOT = APP.parent.parent


class Server:
    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process, self.url = process, f"http://127.0.0.1:{port}"

    def post(self, body: bytes | dict, timeout: float = 60) -> tuple[int, dict, dict]:
        """(status, JSON body, headers) of one POST /predict."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/predict", data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}"), dict(err.headers)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                return response.read() == b"ok"
        except OSError:
            return False


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port = free_port()
    command = [sys.executable, str(APP), str(port), "geo", "--target-ms", "2000"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    served = Server(process, port)
    deadline = time.monotonic() + 180
    while not served.healthy():
        assert process.poll() is None, "the server exited at start"
        assert time.monotonic() < deadline, "the server did not start within 180 s"
        time.sleep(0.5)
    yield served
    if process.poll() is None:
        process.kill()
        process.wait()


def _ids(i: int) -> list[int]:
    return [(7 * i + k) % 900 for k in range(1 + (i * 37) % MAX_LENGTH)]


def _post_all(server: Server, bodies: list) -> list[tuple[int, dict, dict]]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(server.post, bodies))


def test_concurrent_requests_are_batched_and_answer_as_the_model_does_alone(server: Server) -> None:
    model = classifier()
    bodies = [{"ids": _ids(i)} for i in range(48)]
    answers = _post_all(server, bodies)
    assert [status for status, _, _ in answers] == [200] * len(bodies)
    for body, (_, answer, _) in zip(bodies, answers, strict=True):
        ids = torch.tensor(body["ids"])
        alone = classify(model, ids[None], torch.ones_like(ids)[None])[0]
        assert torch.allclose(torch.tensor(answer["logits"]), alone, rtol=0, atol=1e-5)
        assert answer["padded_length"] >= len(ids)
    assert max(answer["batch_size"] for _, answer, _ in answers) > 1


def test_malformed_and_oversized_requests_get_a_4xx_naming_the_problem_and_serving_goes_on(server: Server) -> None:
    kinds = [
        (b"{not json", 422, "JSON"),
        ({"tokens": [1, 2]}, 400, "KeyError: 'ids'"),
        ({"ids": "abc"}, 400, "malformed request"),
        ({"ids": [5000]}, 400, "must be a non-empty list"),
        ({"ids": list(range(MAX_LENGTH + 1))}, 413, f"max_length={MAX_LENGTH}"),
    ]
    bodies = [kinds[i % len(kinds)] for i in range(100)]
    answers = _post_all(server, [body for body, _, _ in bodies])
    for (_, status, named), (got, answer, _) in zip(bodies, answers, strict=True):
        assert got == status and named in json.dumps(answer)
    assert server.healthy()
    assert server.post({"ids": [1, 2, 3]})[0] == 200


def test_a_failing_batch_answers_its_requests_500_and_the_next_ones_are_served(server: Server) -> None:
    status, answer, _ = server.post({"ids": [1, FAIL_ID]})
    assert status == 500 and "RuntimeError" in answer["detail"]
    answers = _post_all(server, [{"ids": _ids(i)} for i in range(8)])
    assert [status for status, _, _ in answers] == [200] * 8


def test_overload_is_refused_with_503_and_retry_after_and_no_request_is_lost(server: Server) -> None:
    for _ in range(3):  # the cost model learns that a batch of these takes ~0.5 s: 120 of them take seconds
        assert server.post({"ids": _ids(3), "slow_ms": 500})[0] == 200
    answers = _post_all(server, [{"ids": _ids(i), "slow_ms": 500} for i in range(120)])
    statuses = [status for status, _, _ in answers]
    assert len(statuses) == 120 and set(statuses) <= {200, 503}
    refused = [(answer, headers) for status, answer, headers in answers if status == 503]
    assert refused and statuses.count(200) > 0
    for answer, headers in refused:
        assert "overloaded" in answer["detail"]["error"]
        assert int(headers["retry-after"]) >= 1


def test_sigterm_answers_every_accepted_request_before_the_server_exits(server: Server) -> None:
    bodies = [{"ids": _ids(i), "slow_ms": 100} for i in range(6)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(server.post, body) for body in bodies]
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        statuses = [future.result()[0] for future in futures]
    assert set(statuses) <= {200, 503} and 200 in statuses
    assert server.process.wait(timeout=60) == 0
    deadline = time.monotonic() + 60
    while _live_processes_in_group(server.process.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _live_processes_in_group(server.process.pid) == []  # no HTTP or inference process is left behind


def _live_processes_in_group(group: int) -> list[int]:
    """Processes of process group ``group`` that are not zombies (read from /proc)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live
