"""The loop the quality benchmarks share: arms x seeds, each arm at its best LR of a grid.

An arm's LR is tuned on seed 0: every LR of its grid runs, then, while the best one sits at an edge of the LRs
run so far, the next value of the LR ladder beyond it runs, at most ``widen`` times. Every arm gets a grid of the
same size and the same ``widen``, so the same budget of tuning runs. Seeds ``0..N-1`` then run at the chosen LR
(the seed-0 run is reused), arms interleaved seed by seed, so that a slow phase of a shared machine hits every
arm alike. The harness only calls ``run(arm, lr, seed)`` and keeps what it returns: each script builds its own
runs and measures what it needs::

    result = sweep(ARMS, bench.run, grids=task.grids, score=lambda run: run.accuracy, seeds=3, widen=2)
    result.runs["AdamW"]  # the runs at AdamW's chosen LR, by seed
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from lightning_geo.utils.table import format_table

R = TypeVar("R")  # one run, as the script's ``run`` returns it
T = TypeVar("T")


def ladder(lr: float, *, up: bool) -> float:
    """The neighbour of ``lr`` on the LR ladder ..., 0.01, 0.03, 0.1, 0.3, ... (steps of ~3.16x)."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    ones = lr / 10**exponent < 2  # 1e-k rather than 3e-k
    if up:
        value = 3 * 10**exponent if ones else 10 ** (exponent + 1)
    else:
        value = 10**exponent if not ones else 3 * 10 ** (exponent - 1)
    return float(f"{value:.3g}")


@dataclass
class Tuned(Generic[R]):
    """One arm's LR tuning: the chosen LR, every run by LR (in the order they ran), and whether the chosen LR
    still sat at an edge when the widenings ran out."""

    best: float
    runs: dict[float, R]
    at_edge: bool


def tune_lr(
    run: Callable[[float], R],
    grid: Sequence[float],
    *,
    score: Callable[[R], float],
    widen: int = 0,
    bounds: tuple[float, float] = (0.0, math.inf),
    on_round: Callable[[dict[float, R], float], None] | None = None,
) -> Tuned[R]:
    """Runs ``grid``, then widens it along the :func:`ladder` while the best LR is at an edge.

    Args:
        run: one run at an LR.
        grid: the LRs to run first.
        score: higher is better; give a failed run ``-inf``. On a tie the lowest LR wins.
        widen: how many more LRs may run, one at a time, beyond the edge the best LR sits at (the lower edge
            first when the grid holds one LR).
        bounds: the lowest and highest LR a widening may reach; at a bound the best LR no longer counts as at
            the edge.
        on_round: called with the runs so far and the best LR after each round (the grid, then each widening).
    """
    if widen < 0:
        raise ValueError(f"widen must be >= 0, got {widen}")
    runs: dict[float, R] = {}
    pending = list(grid)
    best = math.nan
    for _ in range(widen + 1):
        for lr in pending:
            if lr not in runs:
                runs[lr] = run(lr)
        lrs = sorted(runs)
        best = max(lrs, key=lambda lr: score(runs[lr]))
        if on_round is not None:
            on_round(runs, best)
        beyond = [ladder(best, up=False)] if best == lrs[0] else []
        beyond += [ladder(best, up=True)] if best == lrs[-1] else []
        beyond = [lr for lr in beyond if bounds[0] <= lr <= bounds[1]]
        if not beyond:
            return Tuned(best, runs, at_edge=False)
        pending = beyond[:1]
    return Tuned(best, runs, at_edge=True)


def rotated(items: Sequence[T], k: int) -> tuple[T, ...]:
    """``items`` rotated left by ``k`` (modulo their number): an arm order that changes with the seed."""
    k %= len(items)
    return (*items[k:], *items[:k])


def run_seeds(
    arms: Sequence[str],
    seeds: Iterable[int],
    run: Callable[[str, int], R],
    *,
    order: Callable[[int], Sequence[str]] | None = None,
    on_seed: Callable[[int, dict[str, R]], None] | None = None,
) -> dict[str, list[R]]:
    """Every arm on every seed, arms interleaved seed by seed; returns each arm's runs by seed.

    Args:
        arms: the arms, in the order of the result.
        seeds: the seeds, in the order they run.
        run: one run of an arm on a seed.
        order: the order of the arms on a seed (default: ``arms``), e.g. ``lambda seed: rotated(arms, seed)``.
        on_seed: called after each seed with its runs, in the order of ``arms``.
    """
    runs: dict[str, list[R]] = {arm: [] for arm in arms}
    for seed in seeds:
        for arm in arms if order is None else order(seed):
            runs[arm].append(run(arm, seed))
        if on_seed is not None:
            on_seed(seed, {arm: runs[arm][-1] for arm in arms})
    return runs


@dataclass
class Sweep(Generic[R]):
    """What :func:`sweep` ran, by arm."""

    chosen: dict[str, float]  # the LR each arm's seed-0 tuning chose
    at_edge: dict[str, bool]  # whether that LR still sat at an edge of the widened grid
    tuning: dict[str, dict[float, R]]  # the seed-0 runs by LR
    runs: dict[str, list[R]]  # the runs at the chosen LR, by seed (seed 0's from the tuning)

    def tuning_table(
        self,
        metric: str,
        value: Callable[[R], str],
        *,
        lr_text: Callable[[float], str] = "{:.3g}".format,
        edge_mark: str = "",
    ) -> str:
        """One row per arm: ``value`` of each seed-0 run by LR, and the chosen LR (``edge_mark`` appended when
        it sits at an edge)."""
        rows = []
        for arm, runs in self.tuning.items():
            cells = "  ".join(f"{lr_text(lr)}: {value(run)}" for lr, run in sorted(runs.items()))
            rows.append([arm, cells, lr_text(self.chosen[arm]) + (edge_mark if self.at_edge[arm] else "")])
        return format_table(["arm", f"LR: seed-0 final {metric}", "chosen"], rows)


def sweep(
    arms: Sequence[str],
    run: Callable[[str, float, int], R],
    *,
    grids: Mapping[str, Sequence[float]],
    score: Callable[[R], float],
    seeds: int,
    widen: int = 0,
    bounds: tuple[float, float] = (0.0, math.inf),
    on_round: Callable[[str, dict[float, R], float], None] | None = None,
) -> Sweep[R]:
    """Tunes every arm's LR on seed 0 (arm by arm, see :func:`tune_lr`), then runs seeds ``1..seeds-1`` at it.

    Args:
        arms: the arms, in the order they run.
        run: one run of an arm at an LR on a seed.
        grids: each arm's first LRs; all of the same size, so that every arm gets the same tuning budget.
        score, widen, bounds: as in :func:`tune_lr`.
        seeds: seeds per arm at the chosen LR, seed 0 included.
        on_round: as in :func:`tune_lr`, with the arm first.

    Raises:
        ValueError: if the arms' grids differ in size.
    """
    sizes = {arm: len(grids[arm]) for arm in arms}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"every arm needs a grid of the same size (the same tuning budget), got {sizes}")
    tuned = {arm: _tune_arm(arm, run, grids[arm], score, widen, bounds, on_round) for arm in arms}

    def at_chosen(arm: str, seed: int) -> R:
        best = tuned[arm].best
        return tuned[arm].runs[best] if seed == 0 else run(arm, best, seed)

    return Sweep(
        chosen={arm: t.best for arm, t in tuned.items()},
        at_edge={arm: t.at_edge for arm, t in tuned.items()},
        tuning={arm: t.runs for arm, t in tuned.items()},
        runs=run_seeds(arms, range(seeds), at_chosen),
    )


def _tune_arm(
    arm: str,
    run: Callable[[str, float, int], R],
    grid: Sequence[float],
    score: Callable[[R], float],
    widen: int,
    bounds: tuple[float, float],
    on_round: Callable[[str, dict[float, R], float], None] | None,
) -> Tuned[R]:
    return tune_lr(
        lambda lr: run(arm, lr, 0),
        grid,
        score=score,
        widen=widen,
        bounds=bounds,
        on_round=None if on_round is None else (lambda runs, best: on_round(arm, runs, best)),
    )
