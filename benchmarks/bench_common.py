"""Small pieces every benchmark script shares: the code version and machine it measured, steadier CPU timings,
medians and spreads, verdicts, the results file.

The scripts run as ``python benchmarks/<name>.py``, which puts this folder on ``sys.path``, so they
import it as ``from bench_common import ...``. The loop over arms, seeds and LRs is in ``bench_harness``.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def code_version() -> str:
    """``lightning_geo <commit>`` (``+ local changes`` when its files differ from the commit), if git knows."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "lightning_geo"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "lightning_geo (commit unknown)"
    return f"lightning_geo {commit}" + (" + local changes" if dirty else "")


def free_port() -> int:
    """A TCP port free on the loopback interface now (for a server or torchrun's rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def machine() -> str:
    """The CPU model and count, torch's version and the GPU, if any: ``Intel(R) Xeon(R) ... (2 CPUs), torch
    2.5.1, no GPU``."""
    import torch  # here, not at the top: not every script that imports this module needs torch

    cpu = platform.processor() or platform.machine() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu} ({os.cpu_count()} CPUs), torch {torch.__version__}, {gpu}"


def command_line(script: str) -> str:
    """How this benchmark was started, ``python benchmarks/<name>.py <arguments>``; pass the script's ``__file__``."""
    return " ".join([f"python benchmarks/{Path(script).name}", *sys.argv[1:]])


def write_results(path: Path, report: str, *, version: str) -> None:
    """Writes ``report`` to ``path`` with a last line that stamps the code version and the machine, and says so.

    Pass the :func:`code_version` taken when the run started (the code it measured).
    """
    text = report.strip("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{text}\n\nmeasured with {version} on {machine()}\n")
    print(f"\nwritten to {path}")


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS after every step.

    By default each step's large temporaries (an LM's logits) are unmapped when freed and page-faulted
    back in the next step: on the test machine that was a third of a word-LM step's wall time, all of it
    system time, and a large part of its step-time noise. It applies to every arm alike. Does nothing
    where glibc is not the C library.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # the documented maximum on 64-bit systems
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def median(values: Iterable[float], *, skip_nan: bool = False) -> float:
    """The median; NaN when there are no values or one of them is NaN (a failed seed makes the median
    meaningless), or with ``skip_nan`` the median of the others."""
    values = list(values)
    if skip_nan:
        values = [v for v in values if not math.isnan(v)]
    elif any(math.isnan(v) for v in values):
        return math.nan
    return statistics.median(values) if values else math.nan


def spread(values: Sequence[float], fmt: Callable[[float], str] = "{:.4f}".format) -> str:
    """``min..max`` of ``values``, each written by ``fmt``."""
    return f"{fmt(min(values))}..{fmt(max(values))}"


def by_seed(values: Iterable[Any], fmt: Callable[[Any], str] = str) -> str:
    """``a/b/c``: one value per seed, each written by ``fmt``."""
    return "/".join(fmt(v) for v in values)


def worse_by(value: float, reference: float, *, higher_is_better: bool, relative: bool = True) -> float:
    """How much worse ``value`` is than ``reference`` (negative: better), as a share of ``reference`` or, with
    ``relative=False``, in the metric's own units (accuracy points, say)."""
    worse = reference - value if higher_is_better else value - reference
    return worse / abs(reference) if relative else worse


def verdict(met: bool | None, claim: str, details: list[str]) -> list[str]:
    """``[MET]``, ``[MISSED]`` or (``met=None``, the tasks it needs did not run) ``[NOT RUN]`` + the claim,
    then the detail lines indented."""
    label = "NOT RUN" if met is None else ("MET" if met else "MISSED")
    return [f"[{label}] {claim}", *(f"  {line}" for line in details)]


def quiet_lightning(*messages: str) -> None:
    """Keep Lightning's and GEO's banners out of a benchmark's output: their loggers at ERROR, and the warnings
    every benchmark's short runs trigger ignored, plus ``messages`` (regular expressions of more warnings)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_geo"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in (
        ".*does not have many workers.*",
        ".*smaller than the logging interval.*",
        ".*LeafSpec.*",
        *messages,
    ):
        warnings.filterwarnings("ignore", message)


QUIET_TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}
"""What every benchmark's Trainer shares: one CPU device, no logger, checkpoint, bar, summary or sanity check."""


def quiet_trainer(**kwargs: Any) -> Any:
    """A ``lightning.pytorch.Trainer`` with :data:`QUIET_TRAINER` and ``kwargs`` (which win), so each benchmark
    writes only what its arm is about (steps, callbacks, precision, validation)."""
    import lightning.pytorch as pl

    return pl.Trainer(**{**QUIET_TRAINER, **kwargs})


class Transcript:
    """Prints a benchmark's lines as they come and keeps them, so the report part can go to its results file.

    Call it like ``print`` (one line); ``mark()`` where the report starts, ``since(mark)`` for its text.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def mark(self) -> int:
        """The number of lines so far: pass it to :meth:`since`."""
        return len(self.lines)

    def since(self, mark: int) -> str:
        """The lines from ``mark`` on, joined by newlines."""
        return "\n".join(self.lines[mark:])
