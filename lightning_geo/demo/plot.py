"""Read logged scalars back from TensorBoard event files and plot loss curves to a PNG.

Reading the event files (rather than values kept in memory) means the plot shows exactly what
TensorBoard shows, and it works for any finished run folder.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(
    log_dir: str | os.PathLike[str], tags: Sequence[str] | None = None
) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a TensorBoard run folder as ``{tag: [(step, value), ...]}``, sorted by step.

    Args:
        log_dir: A folder with ``events.out.tfevents.*`` files (e.g. ``runs/demo/version_0``).
        tags: Only these tags (missing ones are left out); default every scalar tag.
    """
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    available = accumulator.Tags()["scalars"]
    wanted = available if tags is None else [t for t in tags if t in available]
    return {tag: sorted((e.step, e.value) for e in accumulator.Scalars(tag)) for tag in wanted}


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """TensorBoard's smoothing: a debiased exponential moving average."""
    out, ema = [], 0.0
    for i, v in enumerate(values, start=1):
        ema = weight * ema + (1 - weight) * v
        out.append(ema / (1 - weight**i))
    return out


def _tokens_axis(series: dict[str, list[tuple[int, float]]]) -> dict[int, float] | None:
    """``{step: training tokens so far}`` from the logged ``train/tokens`` series (None if it was not logged)."""
    tokens = series.get("train/tokens")
    return {step: value for step, value in tokens} if tokens else None


def plot_loss_curves(
    runs: Mapping[str, str | os.PathLike[str]], path: str | os.PathLike[str], *, x: str = "step"
) -> Path:
    """Plot train (raw and smoothed) and validation bits per character of one or more runs into a PNG.

    Args:
        runs: ``{label: run folder}``; each folder's ``train/bpc`` and ``val/bpc`` series are drawn.
        path: Where to write the PNG (its folder is created if needed).
        x: ``"step"`` (default: optimizer steps) or ``"tokens"`` (training characters so far, from the
            ``train/tokens`` series the demo logs; use it when runs train on different tokens per step).

    Returns:
        The PNG's path.

    Raises:
        ValueError: for another ``x``, or ``x="tokens"`` with a run that did not log ``train/tokens``.
    """
    import matplotlib
    from matplotlib.figure import Figure

    if x not in ("step", "tokens"):
        raise ValueError(f"x={x!r}: expected 'step' or 'tokens'")
    # A bare Figure draws to a file without pyplot, so the caller's backend (a notebook's) is left alone.
    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.subplots()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, (label, log_dir) in zip(itertools.cycle(colors), runs.items()):
        series = read_scalars(log_dir, ["train/bpc", "val/bpc", "train/tokens"])
        axis = _tokens_axis(series) if x == "tokens" else None
        if x == "tokens" and axis is None:
            raise ValueError(f"x='tokens': the run {label!r} in {log_dir} has no train/tokens series")

        known = sorted(axis) if axis is not None else []

        def xs(steps: tuple[int, ...], axis: dict[int, float] | None = axis, known: list[int] = known) -> list[float]:
            if axis is None:
                return list(steps)
            # a step's tokens: those logged at the last step not after it
            return [axis[known[max(bisect.bisect_right(known, s) - 1, 0)]] for s in steps]

        if train := series.get("train/bpc"):
            steps, values = zip(*train, strict=True)
            ax.plot(xs(steps), values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs(steps), _smooth(list(values)), color=color, label=f"{label} train (smoothed)")
        if val := series.get("val/bpc"):
            steps, values = zip(*val, strict=True)
            ax.plot(xs(steps), values, color=color, linestyle="--", marker="o", markersize=4,
                    label=f"{label} validation")
    ax.set_xlabel("optimizer step" if x == "step" else "training tokens (characters)")
    ax.set_ylabel("bits per character")
    ax.set_title("Character language model: loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def plot_budget_curves(
    runs: Mapping[str, tuple[Sequence[float], Sequence[tuple[int, int, float]]]],
    path: str | os.PathLike[str],
    *,
    target: float | None = None,
    unit: str = "token",
) -> Path:
    """Plot the validation loss of budgeted runs against wall-clock seconds and against training tokens, side by side.

    Args:
        runs: ``{label: (seconds per validation, (steps, tokens, loss) per validation)}``, as a budgeted
            ``DemoResult`` holds them (``val_seconds``, ``val_curve``).
        path: Where to write the PNG (its folder is created if needed).
        target: A loss to draw as a horizontal line (e.g. the baseline's final validation loss). Default none.
        unit: What a loss is per, for the axis label. Default ``"token"``.

    Returns:
        The PNG's path.
    """
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    by_time, by_tokens = fig.subplots(1, 2, sharey=True)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, (label, (seconds, curve)) in zip(itertools.cycle(colors), runs.items()):
        losses = [loss for _, _, loss in curve]
        by_time.plot(list(seconds), losses, color=color, marker="o", markersize=3, label=label)
        by_tokens.plot([tokens for _, tokens, _ in curve], losses, color=color, marker="o", markersize=3, label=label)
    for ax, xlabel in ((by_time, "wall-clock seconds of fit (validation included)"), (by_tokens, "training tokens")):
        if target is not None:
            ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="baseline's final")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    by_time.set_ylabel(f"validation loss (nats/{unit})")
    by_time.legend()
    fig.suptitle("Validation loss against time and against tokens")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
