"""Small pieces every benchmark script shares: the code version it measured, steadier CPU timings, verdicts.

The scripts run as ``python benchmarks/<name>.py``, which puts this folder on ``sys.path``, so they
import it as ``from bench_common import ...``.
"""

from __future__ import annotations

import ctypes
import logging
import subprocess
import warnings
from pathlib import Path

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
