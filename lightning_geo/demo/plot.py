"""Read logged scalars back from TensorBoard event files and plot loss curves to a PNG.

Reading the event files (rather than values kept in memory) means the plot shows exactly what
TensorBoard shows, and it works for any finished run folder.
"""

from __future__ import annotations

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


def plot_loss_curves(runs: Mapping[str, str | os.PathLike[str]], path: str | os.PathLike[str]) -> Path:
    """Plot train (raw and smoothed) and validation bits per character of one or more runs into a PNG.

    Args:
        runs: ``{label: run folder}``; each folder's ``train/bpc`` and ``val/bpc`` series are drawn.
        path: Where to write the PNG (its folder must exist).

    Returns:
        The PNG's path.
    """
    import matplotlib
    from matplotlib.figure import Figure

    # A bare Figure draws to a file without pyplot, so the caller's backend (a notebook's) is left alone.
    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.subplots()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, (label, log_dir) in zip(itertools.cycle(colors), runs.items()):
        series = read_scalars(log_dir, ["train/bpc", "val/bpc"])
        if train := series.get("train/bpc"):
            steps, values = zip(*train, strict=True)
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, _smooth(list(values)), color=color, label=f"{label} train (smoothed)")
        if val := series.get("val/bpc"):
            steps, values = zip(*val, strict=True)
            ax.plot(steps, values, color=color, linestyle="--", marker="o", markersize=4, label=f"{label} validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("bits per character")
    ax.set_title("Character language model: loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    return out
