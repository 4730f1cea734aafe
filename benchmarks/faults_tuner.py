"""The tuner's part of the fault campaign: two ``GeoTuner`` processes share one SQLite study, one of them is
SIGKILLed mid-trial; does the study still end with every trial complete once and the unkilled study's best?

``benchmarks/faults.py --tuner-kills N`` runs it. Each study is the one of ``tests/test_tuning_shared_study.py``:
``SearchSpace({"x": Float(-1, 1), "y": Float(-1, 1)})``, ``max_trials=NUM_TRIALS`` quasi-random trials
(``num_initial=max_trials``: no GP fit), the objective ``(x - 0.6)**2 + (y + 0.6)**2`` (the test's, its optimum moved
off the centre the quasi-random design starts with, so that the best is not always trial 0) reported at ``REPORTS``
steps ``STEP_S`` seconds apart (each report is also written to the study: an Optuna ``NopPruner`` reads it there), one
heartbeat a second, two worker processes started together on a new SQLite file. The workers are forked from a
``multiprocessing`` fork server that imported the tuner once, so a process starts in milliseconds, not in the seconds
``import lightning_geo`` takes. Each worker appends a phase line to its own trace file before and after every storage
write it makes (a trial's start, each report, the result) and when its objective starts and returns; the phase of a kill
is the killed process's last line, "into trial" the time since that trial's start began to be written.

A kill is a SIGKILL of one of the two processes, at one of four kinds of moment, in turn:

- ``random``: uniformly within one of its trials (from the start of writing the trial's start to the end of writing
  its result, the unkilled study's median), so it lands in the objective and in each write in proportion to time;
- ``in-start``, ``in-report``, ``in-result``: uniformly within the median time the write of a trial's start, of a
  report or of the result takes, once the killed process began a randomly chosen one of them.

Two arms, in turn: ``restarted`` starts the killed process again at once (as a job scheduler would; the survivor or the
restarted process, whichever reads the study first, takes the killed trial over), and both run to their end; ``not
restarted`` leaves it dead, so the survivor must take its trial over. Then one more search opens the study, as the next
run of the script would: it runs what is left (in the ``restarted`` arm nothing should be) and reads the study back.

A trial is *lost* when it was started and is not ``COMPLETE`` once the processes ended (``restarted``) or after the next
search (``not restarted``: a trial the dead process held after the survivor's last look at the study is, by design, the
next search's to run). A trial is *doubled* when the study holds more than ``max_trials`` complete trials, two complete
trials of one config (an interrupted trial run again as a new trial), a trial that two processes both counted as theirs
(both their ``finish`` writes succeeded), or a trial that the ``GeoTuner`` of a process, or of the next search, lists
twice. A trial the other process took for interrupted while it still ran may run twice ("ran twice"): it must still
count once. The study ends *as the unkilled one* when its complete trials (number, config, value, bit for bit) and its
best (Optuna's ``study.best_trial``, and the next search's ``best_params`` and ``best_value``) equal those of an
unkilled study with the same seed. For that the workers take a file lock around each read-the-study, ask,
write-the-start step, so that two processes never ask for a config at the same moment (both could then propose the same
one, which makes the configs depend on timing, killed or not); the lock goes with a killed process, and it does not
cover a process opening the study, which claims interrupted trials.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import random
import signal
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NUM_TRIALS = 8  # of each study, both processes together
REPORTS = 3  # reports per trial
STEP_S = 0.25  # objective time before each report: a trial lasts longer than a restarted process takes to open
HEARTBEAT_S = 1.0
STUDY = "faults"
# a targeted kill: the trace tag it waits for, how many of those one trial writes, and the tag that ends that write
WRITE_OF_MODE = {"in-start": ("start", 1, "started"), "in-report": ("report", REPORTS, "reported"),
                 "in-result": ("finish", 1, "finished")}
MODES = ("random", *WRITE_OF_MODE)
ARMS = ("restarted", "not restarted")
PHASE_OF_TAG = {"search": "opening the study", "sync": "reading the study", "start": "writing its start",
                "started": "objective", "objective": "objective", "report": "writing a report",
                "reported": "objective", "return": "after the objective", "finish": "writing the result",
                "finished": "after the result", "release": "ending", "end": "ending"}


def objective(x: float, y: float) -> float:
    """The trial's value (best at ``x=0.6, y=-0.6``; with seed 0, trial 6 of the study is the best)."""
    return (x - 0.6) ** 2 + (y + 0.6) ** 2


def make_tuner(url: str, log_dir: Path, seed: int) -> Any:
    """The study's ``GeoTuner`` (every process of it, and the next search, the same)."""
    import optuna

    from lightning_geo.tuning import Float, GeoTuner, SearchSpace

    space = SearchSpace({"x": Float(-1.0, 1.0), "y": Float(-1.0, 1.0)})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "GeoTuner: max_trials=")
        return GeoTuner(space, max_trials=NUM_TRIALS, num_initial=NUM_TRIALS, storage=url, study_name=STUDY,
                        log_dir=log_dir, pruner=optuna.pruners.NopPruner(), verbose=False, seed=seed,
                        heartbeat_s=HEARTBEAT_S)


# ---------------------------------------------------------------- the worker (forked from the fork server)
def worker(url: str, log_dir: Path, trace_path: Path, lock_path: Path, seed: int, peers: int) -> None:
    """One tuner process of the study: ``search`` with its storage writes traced and its asks under the lock,
    started once ``peers`` processes (itself included) are ready, so that they surely run trials side by side. An
    error ends it with an ``error`` line in the trace."""
    try:
        _search(url, log_dir, trace_path, lock_path, seed, peers)
    except Exception as err:
        with open(trace_path, "a") as trace:
            trace.write(f"{time.time():.6f} error {type(err).__name__}: {err}".replace("\n", " ")[:200] + "\n")
        raise


def _search(url: str, log_dir: Path, trace_path: Path, lock_path: Path, seed: int, peers: int) -> None:
    from lightning_geo.tuning.optuna_storage import OptunaStorage
    from lightning_geo.tuning.tuner import GeoTuner

    trace = open(trace_path, "a", buffering=1)  # noqa: SIM115 (open for the whole run; a kill closes it)
    lock = open(lock_path, "a")  # noqa: SIM115
    held = [False]

    def line(*words: object) -> None:
        trace.write(" ".join([f"{time.time():.6f}", *map(str, words)]) + "\n")

    def hold() -> None:
        if not held[0]:
            fcntl.flock(lock, fcntl.LOCK_EX)
            held[0] = True

    def let_go() -> None:
        if held[0]:
            fcntl.flock(lock, fcntl.LOCK_UN)
            held[0] = False

    sync, start, finish, release = GeoTuner._sync, OptunaStorage.start, OptunaStorage.finish, OptunaStorage.release

    def traced_sync(self, elsewhere):
        hold()  # let go once the trial's start is written, or when the search ends
        line("sync")
        return sync(self, elsewhere)

    def traced_start(self, number, params, x, *, max_trials):
        line("start", "new" if number is None else number)
        started = start(self, number, params, x, max_trials=max_trials)
        line("started", started)
        let_go()
        return started

    def traced_finish(self, record, x):
        line("finish", record.number)
        counted = finish(self, record, x)
        line("finished", record.number, counted)
        return counted

    def traced_release(self):
        line("release")
        release(self)
        let_go()

    GeoTuner._sync = traced_sync
    OptunaStorage.start = traced_start
    OptunaStorage.finish = traced_finish
    OptunaStorage.release = traced_release

    def train_fn(config: dict[str, Any], trial: Any) -> float:
        line("objective", trial.number)
        value = objective(config["x"], config["y"])
        for step in range(1, REPORTS + 1):
            time.sleep(STEP_S)
            line("report", trial.number, step)
            trial.report(value + 1.0 / step, step=step)
            trial.should_prune()  # the Optuna pruner: writes the report to the study, then decides (never prunes)
            line("reported", trial.number, step)
        line("return", trial.number)
        return value

    tuner = make_tuner(url, log_dir, seed)
    ready = lock_path.parent / "ready"
    ready.mkdir(exist_ok=True)
    (ready / str(os.getpid())).touch()
    deadline = time.monotonic() + 300.0
    while len(list(ready.iterdir())) < peers and time.monotonic() < deadline:
        time.sleep(0.01)
    line("search")
    tuner.search(train_fn)
    numbers = [t.number for t in tuner.trials]
    line("end", "-", len(numbers), len(set(numbers)))  # the trials this process's tuner lists, and how many numbers


# ---------------------------------------------------------------- the campaign
@dataclass
class Line:
    """One trace line: when, its tag, the trial number it names (``None``: none or not known yet), the rest."""

    time: float
    tag: str
    number: int | None
    rest: list[str]


def read_trace(path: Path) -> list[Line]:
    """A worker's trace file, line by line (none yet if the file does not exist)."""
    lines = []
    for text in path.read_text().splitlines() if path.exists() else []:
        words = text.split()
        if len(words) < 2:
            continue  # a line cut by the kill
        number = int(words[2]) if len(words) > 2 and words[2].lstrip("-").isdigit() else None
        lines.append(Line(float(words[0]), words[1], number, words[3:]))
    return lines


@dataclass
class Study:
    """What a study ended with: its complete trials as ``(number, x, y, value)``, its best, the others."""

    complete: list[tuple[int, float, float, float]]
    best: tuple[int, float, float, float] | None
    incomplete: list[int] = field(default_factory=list)  # GeoTuner trials not COMPLETE (surplus ones aside)
    seconds: float = 0.0


@dataclass
class TunerKill:
    """One kill of a tuner process and how its study ended."""

    arm: str
    mode: str
    trial: str = ""  # the killed process's trial at the kill ("new": its start was being written)
    into_ms: float | None = None  # ms since that trial's start began to be written
    phase: str = ""
    rerun_by: str = ""  # who ran the killed trial again
    complete: int = 0
    lost: int | None = None
    doubled: int | None = None
    ran_twice: int = 0
    left: int = 0  # trials the next search ran
    results_equal: bool | None = None
    best_equal: bool | None = None
    error: str = ""

    @property
    def exact(self) -> bool:
        return bool(self.lost == 0 and self.doubled == 0 and self.results_equal and self.best_equal)


# what a worker imports, opening a study included
_PRELOAD = ["lightning_geo.tuning.tuner", "lightning_geo.tuning.optuna_storage", "optuna",
            "optuna.storages._rdb.storage", "alembic.command", "alembic.migration", "alembic.script", "faults_tuner"]


def _start(folder: Path, trace: Path, seed: int, peers: int = 2) -> multiprocessing.process.BaseProcess:
    """A worker, forked from the fork server (started, importing ``_PRELOAD``, on the first call)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    process = context.Process(target=worker, args=(_url(folder), folder / "logs", trace, folder / "ask.lock", seed,
                                                   peers), daemon=True)
    process.start()
    return process


def _url(folder: Path) -> str:
    return f"sqlite:///{folder / 'study.db'}"


def _finish(process: multiprocessing.process.BaseProcess, trace: Path, timeout: float = 300.0) -> str:
    """Wait for a worker; its error (from its trace), or ``""``."""
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        return f"no end within {timeout:.0f} s"
    if process.exitcode != 0:
        errors = [" ".join(x.rest) for x in read_trace(trace) if x.tag == "error"]
        return errors[-1][:100] if errors else f"exit {process.exitcode}"
    return ""


def _read_study(folder: Path) -> Study:
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=_url(folder))
    trials = [t for t in study.trials if "geo:x" in t.user_attrs and not t.user_attrs.get("geo:surplus")]
    complete = sorted((t.number, t.params["x"], t.params["y"], float(t.values[0])) for t in trials
                      if t.state == optuna.trial.TrialState.COMPLETE)
    best = None
    if complete:
        b = study.best_trial
        best = (b.number, b.params["x"], b.params["y"], float(b.values[0]))
    return Study(complete, best, sorted(t.number for t in trials if t.state != optuna.trial.TrialState.COMPLETE))


def _next_search(folder: Path, seed: int) -> tuple[list[int], Any]:
    """The next run of the script: a search in this process; the trials it ran, and its tuner."""
    ran: list[int] = []

    def train_fn(config: dict[str, Any], trial: Any) -> float:
        ran.append(trial.number)
        return objective(config["x"], config["y"])

    tuner = make_tuner(_url(folder), folder / "logs", seed)
    tuner.search(train_fn)
    return ran, tuner


def reference(work: Path, seed: int) -> tuple[Study, dict[str, float]]:
    """The unkilled study (both processes to their end), and the median time of a trial and of each write, s."""
    folder = work / "tuner_reference"
    folder.mkdir(parents=True)
    traces = [folder / "trace_a.txt", folder / "trace_b.txt"]
    errors = [_finish(p, trace) for p, trace in [(_start(folder, trace, seed), trace) for trace in traces]]
    if any(errors):
        raise SystemExit(f"the unkilled tuner study failed: {errors}")
    ran, tuner = _next_search(folder, seed)
    study = _read_study(folder)
    lines = [x for trace in traces for x in read_trace(trace)]
    study.seconds = max(x.time for x in lines if x.tag == "end") - min(x.time for x in lines if x.tag == "search")
    if ran or len(study.complete) != NUM_TRIALS or len(tuner.trials) != NUM_TRIALS:
        raise SystemExit(f"the unkilled tuner study did not end with {NUM_TRIALS} complete trials: {study}")
    spans: dict[str, list[float]] = {"trial": [], **{mode: [] for mode in WRITE_OF_MODE}}
    for trace in traces:
        lines = read_trace(trace)
        for i, first in enumerate(lines):
            for mode, (tag, _, end_tag) in WRITE_OF_MODE.items():
                if first.tag == tag:
                    end = next(x for x in lines[i + 1:] if x.tag == end_tag)
                    spans[mode].append(end.time - first.time)
            if first.tag == "start":
                spans["trial"].append(next(x for x in lines[i + 1:] if x.tag == "finished").time - first.time)
    return study, {name: statistics.median(values) for name, values in spans.items()}


def _wait_for(trace: Path, process: multiprocessing.process.BaseProcess, predicate: Callable[[list[Line]], bool],
              timeout: float = 300.0) -> bool:
    """Poll the trace (every 2 ms) until ``predicate(lines)``; ``False`` if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(read_trace(trace)):
            return True
        if not process.is_alive():
            return False
        time.sleep(0.002)
    return False


def _killed_trial(lines: list[Line], others: list[list[Line]]) -> tuple[int | None, str, float | None]:
    """The trial the killed process held at the kill (``None``: none, or a start that was not written), how it is
    named in the table, and the time its start began to be written."""
    starts = [x for x in lines if x.tag == "start"]
    if not starts:
        return None, "", None
    last_start = starts[-1]
    after = [x for x in lines if x.time >= last_start.time]
    if after[-1].tag in ("finished", "sync", "release", "end"):
        return None, "between trials", None
    if any(x.tag == "started" for x in after):
        number = next(x.number for x in after if x.tag == "started")
        return number, str(number), last_start.time
    if last_start.number is not None:  # the start of a re-run: the trial exists already
        return last_start.number, str(last_start.number), last_start.time
    # killed while writing a new trial's start: if the write went through, another process ran the trial again
    mine = {x.number for x in lines if x.tag == "started"}
    reruns = {x.number for other in others for x in other if x.tag == "start" and x.number is not None} - mine
    return (min(reruns) if reruns else None), "new", last_start.time


def kill_study(work: Path, number: int, kill: TunerKill, ref: Study, spans: dict[str, float], seed: int,
               rng: random.Random) -> TunerKill:
    """Run one study, SIGKILL one of its two processes at a moment ``kill.mode`` picks, let it end (the killed
    process started again in the ``restarted`` arm), run the next search, and check the study."""
    folder = work / f"tuner_kill_{number:03d}"
    folder.mkdir(parents=True)
    traces = {"killed": folder / "trace_a.txt", "survivor": folder / "trace_b.txt",
              "restarted": folder / "trace_a2.txt"}
    killed, survivor = _start(folder, traces["killed"], seed), _start(folder, traces["survivor"], seed)
    per_trial = 1 if kill.mode == "random" else WRITE_OF_MODE[kill.mode][1]
    tag = "start" if kill.mode == "random" else WRITE_OF_MODE[kill.mode][0]
    nth = rng.randint(1, per_trial * (NUM_TRIALS // 2 - 1))  # the killed process runs about half of the trials
    reached = _wait_for(traces["killed"], killed, lambda lines: sum(x.tag == tag for x in lines) >= nth)
    if reached:
        time.sleep(rng.uniform(0.0, spans["trial" if kill.mode == "random" else kill.mode]))
    if not killed.is_alive():
        kill.phase, kill.error = "ended before the kill", _finish(killed, traces["killed"]) or "exit 0"
        _finish(survivor, traces["survivor"])
        return kill
    assert killed.pid is not None
    os.kill(killed.pid, signal.SIGKILL)
    killed_at = time.time()
    killed.join()
    errors = []
    if kill.arm == "restarted":
        errors.append(_finish(_start(folder, traces["restarted"], seed, peers=1), traces["restarted"]))
    errors.append(_finish(survivor, traces["survivor"]))
    lines = {name: read_trace(path) for name, path in traces.items()}
    mine = [x for x in lines["killed"] if x.time <= killed_at]
    trial, kill.trial, began = _killed_trial(mine, [lines["survivor"], lines["restarted"]])
    kill.into_ms = None if began is None else 1000.0 * (killed_at - began)
    kill.phase = PHASE_OF_TAG.get(mine[-1].tag, mine[-1].tag) if mine else "start-up"
    if mine and mine[-1].tag == "report":
        kill.phase += f" {mine[-1].rest[0]}"
    if any(errors):
        kill.error = next(e for e in errors if e)
        return kill
    before = _read_study(folder)  # what the two processes left
    ran, tuner = _next_search(folder, seed)
    study = _read_study(folder)
    kill.left = len(ran)
    kill.complete = len(study.complete)
    if trial is not None:
        by = [name for name in ("survivor", "restarted") if any(
            x.tag == "objective" and x.number == trial and x.time > killed_at for x in lines[name])]
        by += ["next search"] if trial in ran else []
        done_before = trial not in before.incomplete and not by
        kill.rerun_by = " + ".join(by) if by else ("none: complete before the kill" if done_before else "NONE")
    else:
        kill.rerun_by = "none: " + ("its start was not written" if kill.trial == "new" else "between trials")
    started = {x.number for name_lines in lines.values() for x in name_lines if x.tag == "started"} - {None}
    started |= {c[0] for c in study.complete} | set(study.incomplete) | ({trial} if trial is not None else set())
    complete = {c[0] for c in (before if kill.arm == "restarted" else study).complete}
    kill.lost = len(started - complete)
    counted = Counter(x.number for name_lines in lines.values() for x in name_lines
                      if x.tag == "finished" and x.rest == ["True"])
    numbers = [t.number for t in tuner.trials]
    listed_twice = sum(int(x.rest[0]) - int(x.rest[1]) for name_lines in lines.values() for x in name_lines
                       if x.tag == "end") + len(numbers) - len(set(numbers))
    kill.doubled = (max(0, len(study.complete) - NUM_TRIALS)
                    + len(study.complete) - len({(x, y) for _, x, y, _ in study.complete})
                    + sum(n - 1 for n in counted.values() if n > 1) + listed_twice)
    returned = Counter(x.number for name, name_lines in lines.items() for x in name_lines
                       if x.tag == "return" and not (name == "killed" and x.number == trial))  # its killed trial
    returned.update(ran)
    kill.ran_twice = sum(n > 1 for n in returned.values())
    kill.results_equal = study.complete == ref.complete
    kill.best_equal = (study.best == ref.best and ref.best is not None and tuner.best_value == ref.best[3]
                       and tuner.best_params == {"x": ref.best[1], "y": ref.best[2]})
    return kill


def run_tuner_kills(work: Path, num_kills: int, seed: int, rng: random.Random,
                    say: Callable[[str], None]) -> tuple[list[TunerKill], Study]:
    """The unkilled study, then ``num_kills`` killed ones (the modes in turn, each in both arms in turn); the kills
    and the unkilled study."""
    ref, spans = reference(work, seed)
    say(f"unkilled tuner study: {NUM_TRIALS} trials in two processes, {ref.seconds:.1f} s; a trial takes "
        f"{1000 * spans['trial']:.0f} ms, writing its start {1000 * spans['in-start']:.0f} ms, a report "
        f"{1000 * spans['in-report']:.0f} ms, its result {1000 * spans['in-result']:.0f} ms (medians)")
    plan = [TunerKill(ARMS[i % len(ARMS)], MODES[(i // len(ARMS)) % len(MODES)]) for i in range(num_kills)]
    done = []
    for number, kill in enumerate(plan):
        done.append(kill_study(work, number, kill, ref, spans, seed, rng))
        k = done[-1]
        say(f"tuner kill {number + 1}/{len(plan)}: {k.arm} {k.mode}: trial {k.trial or '-'}, {k.phase} -> "
            + (k.error if k.error else f"run again by {k.rerun_by or '-'}, {k.complete} complete, lost {k.lost}, "
               f"doubled {k.doubled}, results {'equal' if k.results_equal else 'DIFFER'}, "
               f"best {'equal' if k.best_equal else 'DIFFERS'}"))
    return done, ref


def kill_rows(kills: list[TunerKill], first: int = 1) -> tuple[list[str], list[list[object]]]:
    """The per-kill table: headers and rows (numbered from ``first``)."""
    headers = ["#", "arm", "kill", "trial", "into trial (ms)", "phase at the kill", "killed trial run again by",
               "complete", "lost", "doubled", "ran twice", "next search ran", "results", "best", "error"]
    flag = {True: "equal", False: "DIFFER", None: ""}
    rows: list[list[object]] = [
        [first + i, k.arm, k.mode, k.trial, "" if k.into_ms is None else f"{k.into_ms:.0f}", k.phase, k.rerun_by,
         k.complete, "" if k.lost is None else k.lost, "" if k.doubled is None else k.doubled, k.ran_twice, k.left,
         flag[k.results_equal], flag[k.best_equal], k.error]
        for i, k in enumerate(kills)]
    return headers, rows


def summary_rows(kills: list[TunerKill]) -> list[list[object]]:
    """One row per arm, as faults.py's summary table has them: arm, processes, kills, studies that ended as the
    unkilled one, studies with a lost or doubled trial or an error, phases hit."""
    rows: list[list[object]] = []
    for arm in ARMS:
        group = [k for k in kills if k.arm == arm and k.phase != "ended before the kill"]
        if not group:
            continue
        phases = Counter(k.phase.rstrip("0123456789 ") for k in group)
        failed = sum(bool(k.error or k.lost or k.doubled) for k in group)
        rows.append([f"tuner, {arm}", 2, len(group), f"{sum(k.exact for k in group)}/{len(group)}", failed,
                     ", ".join(f"{p} {n}" for p, n in sorted(phases.items()))])
    return rows


def target_line(kills: list[TunerKill]) -> str:
    """The segment's target and whether the kills met it."""
    group = [k for k in kills if k.phase != "ended before the kill"]
    met = bool(group) and all(k.exact for k in group)
    lost = sum(k.lost or 0 for k in group)
    doubled = sum(k.doubled or 0 for k in group)
    return (f"target: 0 tuner trials lost or doubled ({lost} lost, {doubled} doubled), each study's trials and best "
            f"those of the unkilled study: {'met' if met else 'missed'} ({sum(k.exact for k in group)}/{len(group)})")

