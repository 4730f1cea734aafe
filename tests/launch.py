"""Run a worker script on N processes as ``torchrun`` would, forked from the tests' preloaded forkserver.

``torchrun --nproc_per_node=N script.py`` starts a fresh interpreter per rank (and one for itself): each imports
torch, Lightning and GEO again, about 7 s of CPU on the 2-core CI machine. Here every rank is forked from the
forkserver tests/conftest.py preloads with them (single-threaded, so a rank inherits no lock a thread held), gets
the environment torchrun gives (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``: Lightning's ``TorchElasticEnvironment`` is detected as under torchrun) and runs
the script as ``__main__``. As torchrun does, a rank that fails stops the others.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path


def _run_rank(script: str, argv: list[str], env: dict[str, str], log: str) -> None:
    with open(log, "w") as stream:  # the rank's stdout and stderr, both, as the test reads them back
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
    os.environ.update(env)
    import torch

    torch.set_num_threads(1)
    sys.argv = [script, *argv]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown of the forked copy (the forkserver's atexit handlers are not ours)


def launch_script(script: Path, nproc: int, argv: list[str], log_dir: Path, port: int,
                  timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``script`` with ``argv`` on ``nproc`` ranks (``0``: one plain process, no distributed environment).

    Returns:
        A ``CompletedProcess``: ``returncode`` 0 if every rank exited 0, else the first failing rank's (negative
        for a signal, as ``subprocess`` reports); ``stdout`` and ``stderr`` both hold every rank's output.

    Raises:
        subprocess.TimeoutExpired: if the ranks run longer than ``timeout`` seconds (they are killed).
    """
    context = multiprocessing.get_context("forkserver")
    log_dir.mkdir(parents=True, exist_ok=True)
    ranks = []
    for rank in range(max(nproc, 1)):
        env = {"OMP_NUM_THREADS": "1"}
        if nproc > 0:
            env |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "ROLE_RANK": str(rank),
                    "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "ROLE_WORLD_SIZE": str(nproc),
                    "GROUP_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                    "TORCHELASTIC_RUN_ID": "tests"}
        log = log_dir / f"rank{rank}.log"
        process = context.Process(target=_run_rank, args=(str(script), argv, env, str(log)))
        process.start()
        ranks.append((process, log))
    deadline = time.monotonic() + timeout
    failed: int | None = None
    while any(p.exitcode is None for p, _ in ranks):
        if time.monotonic() > deadline:
            _stop([p for p, _ in ranks])
            if failed is None:
                raise subprocess.TimeoutExpired([str(script), *argv], timeout)
            break
        bad = [p.exitcode for p, _ in ranks if p.exitcode not in (None, 0)]
        if bad and failed is None:
            failed = bad[0]
            deadline = min(deadline, time.monotonic() + 10)  # the others get 10 s to end, then are stopped
        time.sleep(0.05)
    codes = [p.exitcode for p, _ in ranks]
    output = "".join(f"--- rank {k} ---\n{log.read_text(errors='replace')}" for k, (_, log) in enumerate(ranks))
    code = failed if failed is not None else next((c for c in codes if c), 0)
    return subprocess.CompletedProcess([str(script), *argv], code, output, output)


def _stop(processes: list) -> None:
    for process in processes:
        if process.exitcode is None:
            process.kill()
    for process in processes:
        process.join(5)
