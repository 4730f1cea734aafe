"""Serving under load: GEO's batching (``GeoBatchingLoop``) against LitServe's own dynamic batching, on real text.

``python benchmarks/serve.py [--models classifier,lm] [--duration 20] [--reps 1] [--target-ms 200] [--rates 10,20]
[--quick] [--out benchmarks/results/serve.txt]``

What is served: the paragraphs of the Python documentation's topics (``doc_paragraphs`` of ``predict.py``), each
cut at ``--max-len`` (512) characters by the client, sent as ``{"id": ..., "text": ...}``; the server encodes every
character it gets as ``CharTexts`` does (``ord(c) % 256``), so a longer text reaches GEO's ``max_length`` check.
Two models of ``predict.py`` with fixed random weights (``seed 0``): ``classifier`` (a 2-block attention encoder, 4
logits per text) and ``lm`` (the demo's CharGPT scoring a text's mean next-character loss). One LitAPI
(``CharTextAPI``) serves both arms: ``batch`` pads with ``pad_collate`` and ``unbatch`` is ``list(output)``.

Arms, each a ``LitServer`` in its own process (``serve.py --serve-only ARM MODEL PORT``: one inference worker on
the CPU, one torch thread, loopback, a free port; stopped with SIGTERM after its measurements):

- ``litserve``: LitServe's batching (``max_batch_size`` requests within ``batch_timeout``), tuned over
  ``max_batch_size`` in {4, 8, 16, 32} x ``batch_timeout`` in {5, 20} ms: the tuned config is the one of highest
  saturation throughput, each config measured for ``--grid-duration`` seconds per rate, climbing the rate ladder
  from its second rate (20 req/s) until it is saturated (below), plus one rate between;
- ``geo``: ``geo_server`` with ``GeoBatchingLoop(target_p95_ms=--target-ms, max_length=--max-len)``.

Load: locust (``serve_locustfile.py``, headless, ``FastHttpUser``) as a subprocess. ``max(50, 2 s x rate)`` users
each send on their own Poisson schedule, so together they offer Poisson arrivals at the rate; a user waits for its
answer before sending again, so the arrivals are open-loop only while fewer requests than users are in flight, and
the rate achieved is reported (``offered/s``). Every request carries a unique id that the server echoes; every
send and answer is logged with its unrounded latency, and the numbers below are computed from that log, over
``--duration`` seconds after a 3 s warm-up (the grid: 2 s); the load goes on 2 s past the window, and when it stops
the requests in flight get up to 60 s to be answered.

Per (model, rate, arm): ``offered/s`` (requests sent in the window / its seconds), ``answers/s`` (200 answers
completed in the window / its seconds), p50/p95/p99 of the 200 answers to the requests sent in the window (ms),
``503 %`` of those requests, ``other err`` (other statuses, connection errors, and 200 answers whose body id is
not the request's), ``lost`` (sent but never answered, the whole run) and ``twice`` (ids answered more than once,
counting a 200 by the id in its body), the server process tree's CPU seconds over the locust run's wall seconds
(``/proc/PID/stat``), and ``load``, the machine's 1-minute load average after the run (the machine is shared:
bursts of other work show there). An arm ``holds`` a rate when its p95 <= target and, for ``litserve``, it keeps
up (answers/s >= 0.95 x offered/s), for ``geo``, it refuses (503) at most 1%. Its saturation throughput is its
largest answers/s at a rate it holds. Arms interleave at each rate (their order alternates); with ``--reps`` each
number is the median, with its spread. While one arm is measured the other's server is paused (SIGSTOP): idle,
LitServe's batching loop polls its queue every millisecond.

Rates: doubling from 10 req/s until both arms are saturated (an arm is when it fails a rate and falls behind
there, answers/s < 0.95 x offered/s or more than 1% refused, or when it fails two rates in a row), then for each
arm a rate between its highest held rate and the next (``--rates`` replaces the ladder). Then, on GEO's server:
overload at 2x the rate of its saturation throughput (p95 of the 200 answers, 503 share, ``Retry-After`` on every
503, none lost, none answered twice); 100 malformed or oversized requests (bad JSON, no ``text``, 5000 characters
against ``max_length`` 512, wrong types), answered 4xx, with ``/health`` and a normal request answered afterwards;
and correctness: 50 paragraphs sent at once (so they share batches), the largest difference of a served output to
the model's on that paragraph alone, in this process, fp32 (texts refused with 503 are sent again a second later,
up to 5 times; the 503s are counted). These checks use a small urllib client: they need exact bodies and the
answers' contents, not load.

``padding limit``: plain batching's padded / real characters for batches of the tuned ``max_batch_size`` in random
order, the speed-up length grouping can give a model whose cost is linear in tokens. ``--quick``: one model, 2
rates, 2 grid configs, 6 s windows, nothing written. A full run writes ``--out`` and the plot beside it (``.png``:
p95 against answers/s, one line per arm per model).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import torch
from bench_common import Transcript, code_version, command_line, free_port, median, spread, verdict, write_results
from predict import CharTexts, Classifier, LMScorer, doc_paragraphs, padding_limit

from lightning_geo.utils.bucket_collate import pad_collate
from lightning_geo.utils.table import format_table

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "serve_locustfile.py"
RESULTS = HERE / "results" / "serve.txt"
MODELS = {"classifier": Classifier, "lm": LMScorer}
ARMS = ("litserve", "geo")
GRID = tuple((size, timeout) for size in (4, 8, 16, 32) for timeout in (0.005, 0.02))
QUICK_GRID = ((4, 0.005), (16, 0.02))
QUICK_RATES = (20.0, 60.0)
START_RATE = 10.0  # req/s, the ladder's first rung
MAX_RATE = 1280.0  # req/s: the ladder stops doubling past this
MIN_USERS, USER_SECONDS = 50, 2.0  # locust users: max(MIN_USERS, USER_SECONDS x rate)
WARMUP_S, GRID_WARMUP_S = 3, 2
TAIL_S = 2  # locust keeps sending this long past the window: its stop comes up to ~1 s early, by its own clock
STOP_TIMEOUT_S = 60  # seconds locust waits for the requests in flight when the run ends
SERVER_START_S = 240.0  # most seconds a server may take to answer /health
REQUEST_TIMEOUT_S = 60  # LitServe's request timeout in both arms
KEEP_UP = 0.95  # litserve holds a rate when answers/s >= KEEP_UP x offered/s
MAX_REFUSED = 0.01  # geo holds a rate when at most this share is refused
SATURATION_TARGETS = {"classifier": 2.0, "lm": 1.5}  # GEO's saturation throughput / tuned LitServe's
P95_REDUCTION_TARGET = 0.40
OVERLOAD_FACTOR, OVERLOAD_P95_FACTOR = 2.0, 1.5  # offered x GEO's saturation rate; p95 bound x target
BAD_REQUESTS, CHECK_TEXTS, CHECK_ROUNDS, LONG_TEXT_CHARS = 100, 50, 5, 5000
DIFF_TARGET = 1e-5


# --------------------------------------------------------------------------------------------- the server
def build_model(model_name: str, max_len: int) -> torch.nn.Module:
    """The served model with the fixed weights of ``seed 0``, in eval mode (server and checker build the same)."""
    torch.manual_seed(0)
    return MODELS[model_name](max_len).eval()


class CharTextAPI(ls.LitAPI):
    """``{"id": ..., "text": str}`` -> ``{"id": ..., "output": <the model's output for the text>}``.

    The text is encoded as ``CharTexts`` does, every character kept; ``batch`` pads with ``pad_collate``,
    ``predict`` is the model's ``predict_step`` (``(B, 4)`` logits or ``(B,)`` mean losses, nats).
    """

    def __init__(self, model_name: str, max_len: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name, self.max_len = model_name, max_len

    def setup(self, device: str) -> None:
        torch.set_num_threads(1)
        self.module = build_model(self.model_name, self.max_len)

    def decode_request(self, request: dict, context: dict) -> dict[str, torch.Tensor]:
        text = request["text"]
        if not isinstance(text, str) or not text:
            raise ValueError(f"'text' must be a non-empty string, got {type(text).__name__}")
        context["id"] = request.get("id")
        return CharTexts([text], len(text))[0]

    def batch(self, inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return pad_collate(inputs)

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return self.module.predict_step(batch, 0)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, output: torch.Tensor, context: dict) -> dict[str, Any]:
        return {"id": context.get("id"), "output": output.tolist()}


def serve_only(args: argparse.Namespace) -> None:
    """Run one arm's server until SIGTERM (a KeyboardInterrupt here: LitServe's graceful shutdown path)."""
    arm, model_name, port = args.serve_only
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", ".*both batch and unbatch methods implemented.*")  # GEO batches by itself
    if arm == "geo":
        from lightning_geo.serving import GeoBatchingLoop, geo_server

        loop = GeoBatchingLoop(target_p95_ms=args.target_ms, max_length=args.max_len)
        server = geo_server(CharTextAPI(model_name, args.max_len), loop=loop, accelerator="cpu",
                            workers_per_device=1, timeout=REQUEST_TIMEOUT_S)
    else:
        api = CharTextAPI(model_name, args.max_len, max_batch_size=args.max_batch_size,
                          batch_timeout=args.batch_timeout)
        server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=REQUEST_TIMEOUT_S)
    server.run(host="127.0.0.1", port=int(port), generate_client_file=False, log_level="warning", num_api_servers=1)


def process_tree_cpu_s(root_pid: int) -> float:
    """User + system CPU seconds of ``root_pid`` and its live descendants, from ``/proc/PID/stat``."""
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ..., utime, stime
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = int(fields[11]) + int(fields[12])
    tree, grew = {root_pid}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(cpu.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


@dataclass
class ServerSettings:
    """One arm's server: ``arm`` and ``model``; LitServe's ``max_batch_size`` and ``batch_timeout_s`` (seconds)."""

    arm: str
    model: str
    max_batch_size: int = 1
    batch_timeout_s: float = 0.0

    def label(self) -> str:
        if self.arm == "geo":
            return "geo"
        return f"litserve (max_batch_size {self.max_batch_size}, batch_timeout {self.batch_timeout_s * 1000:g} ms)"


class ServerProcess:
    """A server of ``serve.py --serve-only`` in its own session; a context manager that waits for ``/health``."""

    def __init__(self, settings: ServerSettings, args: argparse.Namespace, workdir: Path) -> None:
        self.settings, self.args = settings, args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"server-{settings.arm}-{settings.model}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        s = self.settings
        command = [sys.executable, str(Path(__file__).resolve()), "--serve-only", s.arm, s.model, str(self.port),
                   "--max-len", str(self.args.max_len), "--target-ms", str(self.args.target_ms),
                   "--max-batch-size", str(s.max_batch_size), "--batch-timeout", str(s.batch_timeout_s)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.settings.label()} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if get_text(f"{self.url}/health") == "ok":
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.settings.label()} did not answer /health in {SERVER_START_S:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, up to 30 s for LitServe's graceful shutdown, then SIGKILL to whatever is left of its session."""
        if self.proc is None:
            return
        self.resume()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # the session this server started: its workers, if any remain
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP the server's processes: idle, LitServe's batching loop polls its queue every millisecond, and the
        arms share 2 CPUs."""
        self._signal_session(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_session(signal.SIGCONT)

    def _signal_session(self, signum: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def cpu_seconds(self) -> float:
        return process_tree_cpu_s(self.proc.pid) if self.proc is not None else 0.0

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


# --------------------------------------------------------------------------------------------- a small client
def http(url: str, body: bytes | None = None, timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of a GET (``body=None``) or of a POST with ``Content-Type: application/json``."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get_text(url: str) -> str:
    try:
        return http(url, timeout=2.0)[2].decode(errors="replace")
    except OSError:
        return ""


def post_json(url: str, payload: Any) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)`` of a POST; ``(0, {})`` without an answer, ``{}`` for a body that is not an object."""
    try:
        status, _, body = http(url, json.dumps(payload).encode())
        answer = json.loads(body)
    except OSError:
        return 0, {}
    except ValueError:
        answer = {}
    return status, answer if isinstance(answer, dict) else {}


# --------------------------------------------------------------------------------------------- one load run
@dataclass
class LoadPoint:
    """One locust run against one server: rates in requests/s, latencies in ms, shares in [0, 1], counts."""

    rate: float
    offered: float
    throughput: float
    p50: float
    p95: float
    p99: float
    refused: float
    other: int
    lost: int
    twice: int
    no_retry_after: int
    sent: int
    cpu_s: float = 0.0
    wall_s: float = 0.0
    load: float = math.nan  # the machine's 1-minute load average at the end of the run
    reps: list[LoadPoint] = field(default_factory=list, repr=False)


def read_records(path: Path) -> tuple[float, dict[str, float], list[dict[str, Any]]]:
    """The test's start time, each request's send time by id, and the answers, from the locust records file."""
    start, sent, answers = math.nan, {}, []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["event"] == "start":
                start = record["t"]
            elif record["event"] == "sent":
                sent[record["id"]] = record["t"]
            else:
                answers.append(record)
    return start, sent, answers


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def summarize_load(path: Path, rate: float, warmup_s: float, duration_s: float) -> LoadPoint:
    """A :class:`LoadPoint` from the records: the window is ``duration_s`` seconds after ``warmup_s``."""
    start, sent, answers = read_records(path)
    low, high = start + warmup_s, start + warmup_s + duration_s
    window = {rid for rid, t in sent.items() if low <= t < high}
    ok = [a for a in answers if a["status"] == 200 and a["body_id"] == a["id"]]
    latencies = [a["ms"] for a in ok if a["id"] in window]
    in_window = [a for a in answers if a["id"] in window]
    answered_ids = Counter(a["id"] if a["status"] != 200 or a["body_id"] is None else a["body_id"] for a in answers)
    return LoadPoint(
        rate=rate,
        offered=len(window) / duration_s,
        throughput=sum(low <= a["t"] + a["ms"] / 1000 < high for a in ok) / duration_s,
        p50=percentile(latencies, 50),
        p95=percentile(latencies, 95),
        p99=percentile(latencies, 99),
        refused=sum(a["status"] == 503 for a in in_window) / max(len(window), 1),
        other=sum(a["status"] not in (200, 503) or (a["status"] == 200 and a["body_id"] != a["id"])
                  for a in in_window),
        lost=len(set(sent) - {a["id"] for a in answers}),
        twice=sum(count > 1 for count in answered_ids.values()),
        no_retry_after=sum(a["status"] == 503 and not a["retry_after"] for a in answers),
        sent=len(sent),
    )


def run_load(server: ServerProcess, rate: float, duration_s: int, warmup_s: int, seed: int, texts_path: Path,
             workdir: Path) -> LoadPoint:
    """One headless locust run offering ``rate`` requests/s to ``server``: ``warmup_s``, the measured ``duration_s``,
    then ``TAIL_S`` more (not measured)."""
    users = max(MIN_USERS, math.ceil(USER_SECONDS * rate))
    stem = f"{server.settings.arm}-{server.port}-{rate:g}-{seed}"
    records, log_path = workdir / f"{stem}.jsonl", workdir / f"{stem}.locust.log"
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r",
               str(users), "--run-time", f"{warmup_s + duration_s + TAIL_S}s", "--stop-timeout", str(STOP_TIMEOUT_S),
               "--host", server.url, "--exit-code-on-error", "0", "--only-summary", "--loglevel", "WARNING",
               "--texts", str(texts_path), "--records", str(records), "--rate", f"{rate:g}", "--seed", str(seed)]
    cpu_before, started = server.cpu_seconds(), time.perf_counter()
    with open(log_path, "wb") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=warmup_s + duration_s + TAIL_S + STOP_TIMEOUT_S + 120)
    wall_s, cpu_s = time.perf_counter() - started, server.cpu_seconds() - cpu_before
    if finished.returncode != 0 or not records.exists():
        raise RuntimeError(f"locust exited with {finished.returncode}:\n{log_path.read_text()[-3000:]}")
    point = summarize_load(records, rate, warmup_s, duration_s)
    point.cpu_s, point.wall_s = cpu_s, wall_s
    point.load = float(Path("/proc/loadavg").read_text().split()[0])
    return point


SUMMED = ("other", "lost", "twice", "no_retry_after", "sent")  # counts add up over repetitions


def combine(points: list[LoadPoint]) -> LoadPoint:
    """The repetitions of one (arm, rate): counts summed, everything else the median; ``reps`` keeps them."""
    values = {}
    for f in dataclasses.fields(LoadPoint):
        if f.name == "reps":
            continue
        column = [getattr(p, f.name) for p in points]
        values[f.name] = sum(column) if f.name in SUMMED else median(column)
    return LoadPoint(**values, reps=points)


def holds(point: LoadPoint, arm: str, target_ms: float) -> bool:
    """Whether ``arm`` held the rate: p95 within target, and kept up (litserve) or refused at most 1% (geo)."""
    if not point.p95 <= target_ms:
        return False
    if arm == "geo":
        return point.refused <= MAX_REFUSED
    return point.throughput >= KEEP_UP * point.offered


# --------------------------------------------------------------------------------------------- rate ladders
Measure = Callable[[float], dict[str, LoadPoint]]
Ladder = dict[float, dict[str, LoadPoint]]


def saturation(points: Ladder, arm: str, target_ms: float) -> tuple[float, float | None]:
    """``(answers/s, rate)`` of ``arm``'s largest throughput at a rate it held; ``(0.0, None)`` if it held none."""
    held = [(points[rate][arm].throughput, rate) for rate in points if holds(points[rate][arm], arm, target_ms)]
    return max(held) if held else (0.0, None)


def doubling(start: float) -> Iterator[float]:
    rate = start
    while rate <= MAX_RATE:
        yield rate
        rate *= 2


def saturated(points: Ladder, arm: str, target_ms: float) -> bool:
    """Whether ``arm`` is past its saturation at the last rate measured: it failed there and either fell behind
    (answers/s < 0.95 x offered/s, or more than 1% refused) or failed at the rate before too (one failure alone
    can be a burst of the machine's other load)."""
    rates = sorted(points)
    last = points[rates[-1]][arm]
    if holds(last, arm, target_ms):
        return False
    fell_behind = last.throughput < KEEP_UP * last.offered or last.refused > MAX_REFUSED
    return fell_behind or (len(rates) > 1 and not holds(points[rates[-2]][arm], arm, target_ms))


def rate_between(points: Ladder, arm: str, target_ms: float) -> float | None:
    """1.5x ``arm``'s highest held rate if that falls below the next rate measured (which it failed), else None."""
    held = [rate for rate in points if holds(points[rate][arm], arm, target_ms)]
    above = [rate for rate in points if held and rate > max(held)]
    if not above:
        return None
    between = float(round(1.5 * max(held)))
    return between if between < min(above) and between not in points else None


def climb(measure: Measure, arms: tuple[str, ...], rates: Iterator[float], target_ms: float, *,
          stop_when_saturated: bool, add_between: bool) -> Ladder:
    """Measure at ``rates`` in order, stopping once every arm is :func:`saturated` (if asked); then, if asked, a rate
    between each arm's highest held rate and the next (:func:`rate_between`)."""
    points: Ladder = {}
    for rate in rates:
        points[rate] = measure(rate)
        if stop_when_saturated and all(saturated(points, arm, target_ms) for arm in arms):
            break
    for arm in arms if add_between else ():
        between = rate_between(points, arm, target_ms)
        if between is not None:
            points[between] = measure(between)
    return dict(sorted(points.items()))


# --------------------------------------------------------------------------------------------- the benchmark
@dataclass
class Context:
    """What every measurement needs: the parsed arguments, the texts file, a scratch folder and the transcript."""

    args: argparse.Namespace
    texts: list[str]
    texts_path: Path
    workdir: Path
    log: Transcript


def progress_line(label: str, point: LoadPoint, rep: int) -> str:
    return (f"    {label} {point.rate:g} req/s rep {rep + 1}: offered {point.offered:.1f}/s, answers "
            f"{point.throughput:.1f}/s, p95 {point.p95:.0f} ms, 503 {point.refused:.1%}, other {point.other}, lost "
            f"{point.lost}, twice {point.twice}, server CPU {point.cpu_s:.0f} s / {point.wall_s:.0f} s, load "
            f"{point.load:.1f}")


def measure_arms(ctx: Context, servers: dict[str, ServerProcess], duration_s: int, warmup_s: int, reps: int,
                 order: list[int]) -> Measure:
    """A ``Measure`` over ``servers`` (arm -> server): arms interleaved, their order alternating from rate to rate."""

    def measure(rate: float) -> dict[str, LoadPoint]:
        arms = list(servers)
        runs: dict[str, list[LoadPoint]] = {arm: [] for arm in arms}
        for rep in range(reps):
            for arm in arms if (order[0] + rep) % 2 == 0 else arms[::-1]:
                for other in set(arms) - {arm}:
                    servers[other].pause()
                servers[arm].resume()
                time.sleep(0.5)
                point = run_load(servers[arm], rate, duration_s, warmup_s, ctx.args.seed + rep, ctx.texts_path,
                                 ctx.workdir)
                runs[arm].append(point)
                ctx.log(progress_line(arm, point, rep))
        order[0] += 1
        return {arm: combine(points) for arm, points in runs.items()}

    return measure


@dataclass
class GridResult:
    settings: ServerSettings
    points: Ladder
    saturation: tuple[float, float | None]


def tune_litserve(ctx: Context, model: str) -> list[GridResult]:
    """Every grid config of LitServe's batching, climbing the rates until it stops holding, one server each."""
    args, results = ctx.args, []
    grid = QUICK_GRID if args.quick else GRID
    for size, timeout_s in grid:
        settings = ServerSettings("litserve", model, size, timeout_s)
        ctx.log(f"  grid: {settings.label()}")
        with ServerProcess(settings, args, ctx.workdir) as server:
            measure = measure_arms(ctx, {"litserve": server}, args.grid_duration, GRID_WARMUP_S, 1, [0])
            rates = iter(args.rates) if args.rates else doubling(2 * START_RATE)
            points = climb(measure, ("litserve",), rates, args.target_ms, stop_when_saturated=True,
                           add_between=not args.rates)
        results.append(GridResult(settings, points, saturation(points, "litserve", args.target_ms)))
    return results


@dataclass
class ModelResult:
    """Everything measured for one model."""

    model: str
    grid: list[GridResult]
    tuned: ServerSettings
    ladder: Ladder
    overload: LoadPoint | None = None
    overload_rate: float | None = None
    bad_statuses: dict[str, Counter] = field(default_factory=dict)
    after_bad: tuple[bool, bool] = (False, False)  # /health ok, a normal request answered 200
    max_diff: float = math.nan
    check_answered: int = 0
    check_refused: int = 0  # 503s the correctness check's texts got before being answered
    padding: float = math.nan


def run_model(ctx: Context, model: str) -> ModelResult:
    """Tune LitServe, compare both arms over the rates, then overload, bad requests and correctness on GEO."""
    args = ctx.args
    ctx.log(f"\n{model}: tuning LitServe's batching")
    grid = tune_litserve(ctx, model)
    tuned = max(grid, key=lambda g: g.saturation[0]).settings
    ctx.log(f"  tuned: {tuned.label()}\n{model}: both arms over the rates")
    geo = ServerProcess(ServerSettings("geo", model), args, ctx.workdir)
    with ServerProcess(tuned, args, ctx.workdir) as litserve, geo:
        measure = measure_arms(ctx, {"litserve": litserve, "geo": geo}, args.duration, WARMUP_S, args.reps, [0])
        rates = iter(args.rates) if args.rates else doubling(START_RATE)
        ladder = climb(measure, ARMS, rates, args.target_ms, stop_when_saturated=not args.rates,
                       add_between=not args.rates)
        litserve.stop()
        geo.resume()
        result = ModelResult(model, grid, tuned, ladder)
        check_geo_server(ctx, geo, result)
    lengths = [len(text) for text in ctx.texts]
    random.Random(args.seed).shuffle(lengths)
    result.padding = padding_limit(lengths, tuned.max_batch_size)
    return result


def check_geo_server(ctx: Context, geo: ServerProcess, result: ModelResult) -> None:
    """Overload at 2x GEO's saturation rate, then bad requests, then served vs. in-process outputs."""
    args = ctx.args
    _, rate = saturation(result.ladder, "geo", args.target_ms)
    if rate is not None:
        result.overload_rate = OVERLOAD_FACTOR * rate
        ctx.log(f"{result.model}: GEO overloaded at {result.overload_rate:g} req/s")
        result.overload = run_load(geo, result.overload_rate, args.duration, WARMUP_S, args.seed, ctx.texts_path,
                                   ctx.workdir)
        ctx.log(progress_line("geo", result.overload, 0))
    result.bad_statuses = send_bad_requests(geo.url)
    status, answer = post_json(f"{geo.url}/predict", {"id": "after-bad", "text": ctx.texts[0]})
    result.after_bad = (get_text(f"{geo.url}/health") == "ok", status == 200 and answer.get("id") == "after-bad")
    result.max_diff, result.check_answered, result.check_refused = served_vs_alone(geo.url, result.model, ctx)


def bad_bodies() -> list[tuple[str, bytes]]:
    """``BAD_REQUESTS`` (kind, body) pairs, a quarter of each kind."""
    wrong_types = [{"text": 123}, {"text": ["a", "b"]}, {"text": None}, {"text": {"a": 1}}, ["text"]]
    kinds = [
        ("bad JSON", lambda i: b'{"id": "bad-%d", "text": "unclosed' % i),
        ("no 'text'", lambda i: json.dumps({"id": f"bad-{i}", "txt": "hello"}).encode()),
        (f"{LONG_TEXT_CHARS} chars", lambda i: json.dumps({"id": f"bad-{i}", "text": "x" * LONG_TEXT_CHARS}).encode()),
        ("wrong type", lambda i: json.dumps(wrong_types[i % len(wrong_types)]).encode()),
    ]
    return [(name, body(i)) for i in range(BAD_REQUESTS // len(kinds)) for name, body in kinds]


def send_bad_requests(url: str) -> dict[str, Counter]:
    """Send the bad requests one by one; the statuses answered, by kind (0: no answer)."""
    statuses: dict[str, Counter] = {}
    for kind, body in bad_bodies():
        try:
            status = http(f"{url}/predict", body, timeout=30.0)[0]
        except OSError:
            status = 0
        statuses.setdefault(kind, Counter())[status] += 1
    return statuses


def served_at_once(url: str, texts: list[str]) -> tuple[list[dict[str, Any] | None], int]:
    """The answers to ``texts`` sent at once (None: not answered 200 with its id), and how many 503s they got on
    the way: a refused text is sent again after a second, with the others refused, up to ``CHECK_ROUNDS`` times."""
    answers: list[dict[str, Any] | None] = [None] * len(texts)
    todo, refused = list(range(len(texts))), 0
    for _ in range(CHECK_ROUNDS):
        with ThreadPoolExecutor(len(todo)) as pool:
            replies = list(pool.map(lambda i: post_json(f"{url}/predict", {"id": f"check-{i}", "text": texts[i]}),
                                    todo))
        for i, (status, answer) in zip(todo, replies, strict=True):
            if status == 200 and answer.get("id") == f"check-{i}":
                answers[i] = answer
        todo = [i for i, (status, _) in zip(todo, replies, strict=True) if status == 503]
        refused += len(todo)
        if not todo:
            break
        time.sleep(1.0)  # GEO's Retry-After is at least 1 s
    return answers, refused


def served_vs_alone(url: str, model: str, ctx: Context) -> tuple[float, int, int]:
    """Largest |served - alone| over ``CHECK_TEXTS`` paragraphs sent at once (NaN if one was never answered 200),
    the number answered, and the 503s on the way."""
    texts = random.Random(ctx.args.seed + 1).sample(ctx.texts, CHECK_TEXTS)
    answers, refused = served_at_once(url, texts)
    module = build_model(model, ctx.args.max_len)
    diffs = []
    with torch.inference_mode():
        for text, answer in zip(texts, answers, strict=True):
            alone = module.predict_step(pad_collate([CharTexts([text], ctx.args.max_len)[0]]), 0)[0]
            served = torch.tensor(answer["output"]) if answer is not None else torch.full_like(alone, math.nan)
            diffs.append((served - alone).abs().max().item())
    answered = sum(answer is not None for answer in answers)
    return (max(diffs) if answered == len(texts) else math.nan), answered, refused


# --------------------------------------------------------------------------------------------- report
def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def grid_table(result: ModelResult, target_ms: float) -> str:
    rows = []
    for g in result.grid:
        held = [f"{rate:g}" for rate in g.points if holds(g.points[rate]["litserve"], "litserve", target_ms)]
        throughput, rate = g.saturation
        p95 = g.points[rate]["litserve"].p95 if rate is not None else math.nan
        rows.append([g.settings.max_batch_size, f"{g.settings.batch_timeout_s * 1000:g}",
                     ", ".join(f"{r:g}" for r in g.points), ", ".join(held) or "none", f"{throughput:.1f}", ms(p95),
                     "tuned" if g.settings == result.tuned else ""])
    return format_table(["max_batch_size", "batch_timeout ms", "rates tried", "rates held", "saturation answers/s",
                         "p95 there ms", ""], rows)


def ladder_table(result: ModelResult, target_ms: float, reps: int) -> str:
    rows = []
    for rate, arms in result.ladder.items():
        for arm in ARMS:
            p = arms[arm]
            row = [f"{rate:g}", arm, f"{p.offered:.1f}", f"{p.throughput:.1f}"]
            if reps > 1:
                row.append(spread([r.throughput for r in p.reps], "{:.1f}".format))
            row += [ms(p.p50), ms(p.p95)]
            if reps > 1:
                row.append(spread([r.p95 for r in p.reps], ms))
            row += [ms(p.p99), f"{p.refused:.1%}", p.other, p.lost, p.twice, f"{p.cpu_s:.0f} / {p.wall_s:.0f}",
                    f"{p.load:.1f}", "yes" if holds(p, arm, target_ms) else "no"]
            rows.append(row)
    headers = ["rate/s", "arm", "offered/s", "answers/s", *(["range"] if reps > 1 else []), "p50 ms", "p95 ms",
               *(["p95 range"] if reps > 1 else []), "p99 ms", "503", "other err", "lost", "twice",
               "server CPU s / wall s", "load", "holds"]
    return format_table(headers, rows)


def p95_reductions(result: ModelResult, target_ms: float) -> list[tuple[float, float, float]]:
    """``(rate, litserve p95, geo p95)`` at each rate up to LitServe's saturation rate where both have answers."""
    _, limit = saturation(result.ladder, "litserve", target_ms)
    if limit is None:
        return []
    return [(rate, arms["litserve"].p95, arms["geo"].p95) for rate, arms in result.ladder.items()
            if rate <= limit and not math.isnan(arms["litserve"].p95) and not math.isnan(arms["geo"].p95)]


def headline(result: ModelResult, target_ms: float) -> tuple[list[str], list[list[str]]]:
    """The model's verdict lines and their summary lines."""
    geo_sat, geo_rate = saturation(result.ladder, "geo", target_ms)
    ls_sat, ls_rate = saturation(result.ladder, "litserve", target_ms)
    ratio = geo_sat / ls_sat if ls_sat > 0 else math.inf
    target_ratio = SATURATION_TARGETS[result.model]
    summary = [
        f"saturation throughput at p95 <= {target_ms:g} ms: GEO {geo_sat:.1f} answers/s (at {geo_rate or 0:g} req/s), "
        f"tuned {result.tuned.label()} {ls_sat:.1f} answers/s (at {ls_rate or 0:g} req/s): x{ratio:.2f}",
        f"padding limit of the text (batches of {result.tuned.max_batch_size}, random order): {result.padding:.2f}",
    ]
    reductions = p95_reductions(result, target_ms)
    shares = [1 - geo / ls for _, ls, geo in reductions]
    summary.append("p95 at equal offered load up to LitServe's saturation rate (LitServe -> GEO): " + (", ".join(
        f"{rate:g}/s {ls:.0f} -> {geo:.0f} ms ({-share:+.0%})" for (rate, ls, geo), share in
        zip(reductions, shares, strict=True)) or "no such rate"))
    checks = [
        verdict(ratio >= target_ratio, f"{result.model}: GEO saturation throughput >= x{target_ratio:g} tuned "
                f"LitServe's at p95 <= {target_ms:g} ms", [f"x{ratio:.2f}: {geo_sat:.1f} vs {ls_sat:.1f} answers/s; "
                                                           f"padding limit {result.padding:.2f}"]),
        verdict(bool(shares) and median(shares) >= P95_REDUCTION_TARGET,
                f"{result.model}: p95 >= {P95_REDUCTION_TARGET:.0%} lower than LitServe's at equal offered load below "
                "its saturation (median over those rates)",
                [f"median {median(shares):.0%} over {len(shares)} rates" if shares else "no rate LitServe held"]),
    ]
    return summary, checks


def overload_lines(result: ModelResult, target_ms: float) -> tuple[list[str], list[str]]:
    p = result.overload
    if p is None:
        return ["overload: not run (GEO held no rate)"], verdict(None, f"{result.model}: GEO overload", [])
    bound = OVERLOAD_P95_FACTOR * target_ms
    line = (f"overload, GEO at {result.overload_rate:g} req/s ({OVERLOAD_FACTOR:g}x its saturation rate): offered "
            f"{p.offered:.1f}/s, answers {p.throughput:.1f}/s, p95 of the 200s {ms(p.p95)} ms (p50 {ms(p.p50)}, p99 "
            f"{ms(p.p99)}), 503 {p.refused:.1%}, 503 without Retry-After {p.no_retry_after}, other err {p.other}, lost "
            f"{p.lost}, twice {p.twice}")
    met = p.p95 <= bound and p.no_retry_after == 0 and p.lost == 0 and p.twice == 0
    return [line], verdict(met, f"{result.model}: GEO at {OVERLOAD_FACTOR:g}x saturation: p95 of accepted <= "
                           f"{bound:g} ms, Retry-After on every 503, 0 lost, 0 answered twice",
                           [f"p95 {ms(p.p95)} ms, 503 {p.refused:.1%}, missing Retry-After {p.no_retry_after}, "
                            f"lost {p.lost}, twice {p.twice}"])


def bad_request_lines(result: ModelResult) -> tuple[list[str], list[str]]:
    statuses = result.bad_statuses
    four_xx = sum(n for counts in statuses.values() for status, n in counts.items() if 400 <= status < 500)
    total = sum(sum(counts.values()) for counts in statuses.values())
    table = format_table(["request", "statuses answered"],
                         [[kind, ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))]
                          for kind, counts in statuses.items()])
    health_ok, normal_ok = result.after_bad
    met = four_xx == total == BAD_REQUESTS and health_ok and normal_ok
    return [table, f"4xx: {four_xx}/{total}; afterwards /health {'ok' if health_ok else 'FAILED'}, a normal request "
            f"{'answered 200' if normal_ok else 'FAILED'}"], verdict(
        met, f"{result.model}: {BAD_REQUESTS} malformed/oversized requests answered 4xx, server still serving",
        [f"{four_xx}/{total} 4xx, /health {health_ok}, normal request {normal_ok}"])


def no_loss_verdict(results: list[ModelResult]) -> list[str]:
    points = [(r.model, arm, rate, arms[arm]) for r in results for rate, arms in r.ladder.items() for arm in ARMS]
    points += [(r.model, "litserve grid", rate, g.points[rate]["litserve"]) for r in results for g in r.grid
               for rate in g.points]
    bad = [f"{model} {arm} {rate:g}/s: lost {p.lost}, twice {p.twice}" for model, arm, rate, p in points
           if p.lost or p.twice]
    return verdict(not bad, "every load run, both arms: 0 lost, 0 answered twice", bad or [f"{len(points)} runs"])


def report_model(ctx: Context, result: ModelResult) -> list[list[str]]:
    """Print one model's tables; return its verdicts."""
    target_ms, log = ctx.args.target_ms, ctx.log
    log(f"\n== {result.model}: LitServe's batching, grid (window {ctx.args.grid_duration} s per rate)")
    log(grid_table(result, target_ms))
    log(f"\n== {result.model}: tuned LitServe vs GEO (window {ctx.args.duration} s, {ctx.args.reps} rep(s); 503 and "
        "other err over the window's requests, lost and twice over the whole run)")
    log(ladder_table(result, target_ms, ctx.args.reps))
    summary, checks = headline(result, target_ms)
    for line in summary:
        log(line)
    lines, overload_check = overload_lines(result, target_ms)
    bad_lines, bad_check = bad_request_lines(result)
    for line in [*lines, f"bad requests to GEO ({BAD_REQUESTS}):", *bad_lines]:
        log(line)
    log(f"served vs alone, {CHECK_TEXTS} paragraphs sent at once to GEO: {result.check_answered} answered (503s on "
        f"the way, each sent again 1 s later: {result.check_refused}), max |diff| {result.max_diff:.1e}")
    diff_check = verdict(result.max_diff <= DIFF_TARGET, f"{result.model}: GEO's served outputs within {DIFF_TARGET:g} "
                         "of the model's on each text alone (fp32)", [f"max |diff| {result.max_diff:.1e}"])
    return [*checks, overload_check, bad_check, diff_check]


def plot(results: list[ModelResult], target_ms: float, path: Path) -> None:
    """p95 against answers/s, one line per arm per model (one panel per model), each point's offered rate marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        for arm, style in (("litserve", "o-"), ("geo", "s-")):
            points = [arms[arm] for arms in result.ladder.values()]
            label = "LitServe tuned " + result.tuned.label()[len("litserve "):] if arm == "litserve" else "GEO"
            ax.plot([p.throughput for p in points], [p.p95 for p in points], style, label=label)
            for p in points:
                ax.annotate(f"{p.rate:g}", (p.throughput, p.p95), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(target_ms, color="grey", linestyle="--", linewidth=1, label=f"target {target_ms:g} ms")
        ax.set(xlabel="answers/s (200)", ylabel="p95 latency, ms", yscale="log", title=f"{result.model}: p95 vs "
               "throughput (points: offered req/s)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"written to {path}")


# --------------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="classifier,lm", help="comma-separated: classifier, lm")
    parser.add_argument("--duration", type=int, default=None, help="measured seconds per run (default 20; quick 6)")
    parser.add_argument("--grid-duration", type=int, default=None, help="measured seconds per grid run (default 6)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions per rate (arms interleaved)")
    parser.add_argument("--target-ms", type=float, default=200.0, help="p95 latency target, ms")
    parser.add_argument("--rates", default="", help="comma-separated offered rates, req/s (replaces the ladder)")
    parser.add_argument("--max-len", type=int, default=512, help="characters per text at most (GEO: max_length)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the load's choices")
    parser.add_argument("--quick", action="store_true", help="one model, 2 rates, 2 grid configs, 6 s windows")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file of a full run (and its .png)")
    parser.add_argument("--serve-only", nargs=3, metavar=("ARM", "MODEL", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--max-batch-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch-timeout", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if args.quick:
        args.models, args.rates = args.models[:1], args.rates or list(QUICK_RATES)
    args.duration = args.duration or (6 if args.quick else 20)
    args.grid_duration = min(args.grid_duration or 6, args.duration)
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stopped run still stops its servers
    if args.serve_only:
        serve_only(args)
        return 0
    started, version, log = time.perf_counter(), code_version(), Transcript()
    texts = [text[: args.max_len] for text in doc_paragraphs(100_000)]
    lengths = sorted(len(text) for text in texts)
    mark = log.mark()
    log(f"$ {command_line(__file__)}")
    log(f"{version}, torch {torch.__version__}, litserve {ls.__version__}, locust (FastHttpUser, Poisson arrivals); "
        "servers: CPU, 1 inference worker, 1 torch thread")
    log(f"texts: {len(texts)} paragraphs of the Python docs' topics, cut at {args.max_len} characters: lengths "
        f"{lengths[0]}..{lengths[-1]} (median {lengths[len(lengths) // 2]}); p95 target {args.target_ms:g} ms; "
        f"window {args.duration} s after {WARMUP_S} s warm-up; users max({MIN_USERS}, {USER_SECONDS:g} s x rate)")
    results, checks = [], []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        workdir = Path(scratch)
        texts_path = workdir / "texts.json"
        texts_path.write_text(json.dumps(texts))
        ctx = Context(args, texts, texts_path, workdir, log)
        for model in args.models:
            results.append(run_model(ctx, model))
            checks += report_model(ctx, results[-1])
    log("")
    for line in [line for check in [*checks, no_loss_verdict(results)] for line in check]:
        log(line)
    log(f"\n({(time.perf_counter() - started) / 60:.1f} min)")
    if not args.quick:
        write_results(args.out, log.since(mark), version=version)
        plot(results, args.target_ms, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
