"""``lightning-geo demo --compare``: the plain Lightning run and the GEO run of the demo on the same budget.

Each arm runs as its own ``lightning-geo demo`` process, one after the other, so that its peak memory is its
own and neither warms the other's caches. Both get the same steps, wall-clock cap, seed, data order, model
and precision (``--geo``'s default unless ``--precision`` says otherwise: ``16-mixed`` on a GPU, ``bf16-mixed``
on a CPU; Lightning's ``MixedPrecision`` for the baseline, ``PredictiveScalingPrecision`` for GEO).
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lightning_geo.demo.config import DemoConfig
from lightning_geo.demo.run import DemoResult
from lightning_geo.utils.table import format_table

ARMS: tuple[tuple[str, bool], ...] = (("Lightning", False), ("GEO", True))
"""``(label, geo)`` of the two arms, baseline first."""


def first_reach(xs: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """The ``x`` (seconds, tokens) at which a validation curve first reaches ``target``, or None if it never does.

    Between two validations the loss is taken as linear in ``x``; a curve at or below the target at its first
    validation gives that validation's ``x``.

    Args:
        xs: Where each validation ran, increasing.
        losses: The validation losses, one per ``x``.
        target: The loss to reach, e.g. the baseline's final validation loss.
    """
    previous: tuple[float, float] | None = None
    for x, loss in zip(xs, losses, strict=True):
        if loss <= target:
            if previous is None or previous[1] == loss:
                return float(x)
            x0, l0 = previous
            return x0 + (l0 - target) / (l0 - loss) * (x - x0)
        previous = (x, loss)
    return None


def reach_and_stay(xs: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """The ``x`` (seconds, tokens) from which a validation curve is at or below ``target`` for the rest of the run.

    Unlike [`first_reach`][lightning_geo.demo.compare.first_reach], a curve that dips under the target and climbs
    back over it (a loss spike) has not reached it yet: the answer is where it last crosses the target, between
    its last validation above it and the next (taken as linear in ``x``), or None if it ends above it. A curve at
    or below the target from its first validation on gives that validation's ``x``.

    Args:
        xs: Where each validation ran, increasing.
        losses: The validation losses, one per ``x``.
        target: The loss to reach and stay at or below, e.g. the baseline's final validation loss.
    """
    xs, losses = list(xs), list(losses)
    if len(xs) != len(losses):
        raise ValueError(f"xs and losses must have one entry each per validation, got {len(xs)} and {len(losses)}")
    above = [i for i, loss in enumerate(losses) if not loss <= target]  # NaN counts as above
    if not above:
        return float(xs[0]) if xs else None
    last = above[-1]
    if last == len(xs) - 1:
        return None
    (x0, l0), (x1, l1) = (xs[last], losses[last]), (xs[last + 1], losses[last + 1])
    if not math.isfinite(l0):
        return float(x1)
    return x0 + (l0 - target) / (l0 - l1) * (x1 - x0)


def tokens_to_reach(val_curve: Sequence[tuple[int, int, float]], target: float) -> float | None:
    """Training tokens after which a validation curve first reaches ``target`` (nats), or None if it never does.

    Args:
        val_curve: ``(steps, tokens, val loss)`` per validation, in order (``DemoResult.val_curve``).
        target: The loss to reach, e.g. the baseline's final validation loss.
    """
    return first_reach([t for _, t, _ in val_curve], [loss for _, _, loss in val_curve], target)


def seconds_to_reach(result: DemoResult, target: float) -> float | None:
    """Seconds of training (see ``demo.budget``) after which a budgeted run first reaches ``target``, or None."""
    if not result.val_seconds:
        return None
    return first_reach(result.val_seconds, [loss for _, _, loss in result.val_curve], target)


def tokens_to_stay(val_curve: Sequence[tuple[int, int, float]], target: float) -> float | None:
    """Training tokens from which a validation curve stays at or below ``target`` (see
    [`reach_and_stay`][lightning_geo.demo.compare.reach_and_stay]), or None if it ends above it.

    Args:
        val_curve: ``(steps, tokens, val loss)`` per validation, in order (``DemoResult.val_curve``).
        target: The loss to reach and stay at or below.
    """
    return reach_and_stay([t for _, t, _ in val_curve], [loss for _, _, loss in val_curve], target)


def seconds_to_stay(result: DemoResult, target: float) -> float | None:
    """Seconds of training from which a budgeted run stays at or below ``target``, or None (see
    [`reach_and_stay`][lightning_geo.demo.compare.reach_and_stay])."""
    if not result.val_seconds:
        return None
    return reach_and_stay(result.val_seconds, [loss for _, _, loss in result.val_curve], target)


@dataclass
class CompareResult:
    """Both arms' results, baseline first, and the PNG of their validation curves."""

    baseline: DemoResult
    geo: DemoResult
    plot_path: Path

    def speedups(self) -> tuple[float | None, float | None]:
        """GEO's time-to-target and tokens-to-target speed-ups: the baseline's seconds (tokens) to its own final
        validation loss over GEO's, counted from where GEO's curve reaches that loss *and stays* at or below it
        (see [`reach_and_stay`][lightning_geo.demo.compare.reach_and_stay]: a curve that dips under it and spikes
        back over has not reached it). None where GEO ends above it, or the runs were not budgeted in time."""
        target = self.baseline.final_val_loss
        out: list[float | None] = []
        for reach in (seconds_to_stay, lambda r, t: tokens_to_stay(r.val_curve, t)):
            base, geo = reach(self.baseline, target), reach(self.geo, target)
            out.append(base / geo if base and geo else None)
        return out[0], out[1]

    def first_reach_speedup(self) -> float | None:
        """The time speed-up counted from where GEO's curve *first* reaches the baseline's final validation loss,
        whether or not it stays there (at least the time figure of ``speedups``), or None."""
        target = self.baseline.final_val_loss
        base, geo = seconds_to_reach(self.baseline, target), seconds_to_reach(self.geo, target)
        return base / geo if base and geo else None

    def table(self) -> str:
        """One row per arm and a GEO / Lightning row (ratios; for the time and tokens to the baseline's final
        validation loss, the speed-up: Lightning's over GEO's), then a legend; at most 120 columns wide."""
        target = self.baseline.final_val_loss
        rows = []
        for (label, _), result in zip(ARMS, (self.baseline, self.geo), strict=True):
            timed = bool(result.val_seconds)
            first, stays = seconds_to_reach(result, target), seconds_to_stay(result, target)
            tokens = tokens_to_stay(result.val_curve, target)
            rows.append([
                label,
                f"{first:,.1f}" if first is not None else "not reached" if timed else "-",
                f"{stays:,.1f}" if stays is not None else "not reached" if timed else "-",
                f"{tokens:,.0f}" if tokens is not None else "not reached",
                f"{result.final_val_loss:.4f}",
                f"{result.tokens_per_second:,.0f}",
                f"{result.peak_memory_bytes / 2**20:,.0f}",
                str(result.skipped_steps),
                f"{result.steps:,}" + (" (capped)" if result.stopped_early else ""),
            ])
        b, g = self.baseline, self.geo
        time_speedup, token_speedup = self.speedups()
        first_speedup = self.first_reach_speedup()
        rows.append([
            "GEO vs Lightning",
            f"{first_speedup:.2f}x faster" if first_speedup else "-",
            f"{time_speedup:.2f}x faster" if time_speedup else "-",
            f"{token_speedup:.2f}x fewer" if token_speedup else "-",
            _ratio(g.final_val_loss, b.final_val_loss),
            _ratio(g.tokens_per_second, b.tokens_per_second),
            _ratio(g.peak_memory_bytes, b.peak_memory_bytes),
            f"{g.skipped_steps - b.skipped_steps:+d}",
            _ratio(g.steps, b.steps),
        ])
        unit = "token" if b.tokenizer != "char" else "char"
        header = ["arm", "reached (s)", "stays (s)", "tokens to stay", "final loss", "tokens/s", "peak MiB",
                  "skipped", "steps"]
        legend = [
            f"reached (s): training seconds until a validation first reaches Lightning's final val loss "
            f"({target:.4f} nats/{unit})",
            "stays (s), tokens to stay: from when on every later validation stays at or below it (a spike back over "
            "it resets",
            "  the clock); the GEO vs Lightning row gives Lightning's time over GEO's: the headline speed-up is "
            "'stays'",
            f"final loss in nats/{unit}; peak MiB: peak memory ({b.memory_kind}); skipped: optimizer steps a loss "
            "scaler skipped",
        ]
        return format_table(header, rows) + "\n\n" + "\n".join(legend)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0 or not math.isfinite(value) or not math.isfinite(base):
        return "-"
    return f"x{value / base:.3f}"


def _arm_argv(config: DemoConfig, summary: Path) -> list[str]:
    """The ``lightning-geo demo`` command line of one arm."""
    argv = [sys.executable, "-m", "lightning_geo", "demo", "--arm", "geo" if config.geo else "plain",
            "--summary-json", str(summary)]
    flags: dict[str, Any] = {
        "corpus": config.corpus, "batch_size": config.batch_size, "seq_len": config.seq_len,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
        "lr": config.geo_lr if config.geo and config.geo_lr is not None else config.lr,
        "precision": config.resolved_precision, "accelerator": config.accelerator, "devices": config.devices,
        "out": config.out, "name": config.name, "seed": config.seed, "tokenizer": config.tokenizer,
        "vocab_size": config.vocab_size, "val_samples": config.val_samples,
        "max_train_chars": config.max_train_chars if config.max_train_chars is not None else 0,
        "sample_chars": 0,  # the comparison shows the table, not samples
    }
    if config.budget is not None:
        warmup = config.geo_warmup_share if config.geo and config.geo_warmup_share is not None else config.warmup_share
        flags.update(budget=config.budget, warmup_share=warmup, val_points=config.val_points)
    else:
        flags.update(steps=config.steps, max_minutes=config.max_minutes, val_every=config.val_every)
    if config.geo:
        flags.update(seq_len_warmup=config.seq_len_warmup)
        if config.exclude:
            flags.update(exclude=",".join(config.exclude))
    for name, value in flags.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    if not config.progress_bar:
        argv.append("--no-progress-bar")
    return argv


def run_compare(config: DemoConfig, *, quiet: bool = False) -> CompareResult:
    """Train the demo plain and with GEO on the same budget and plot both; returns both summaries.

    Args:
        config: The settings of both arms (``geo`` is ignored: one arm each; the GEO arm trains at ``geo_lr`` and
            ``geo_warmup_share`` where they are set). Logs go to
            ``<out>/<name>/lightning`` and ``<out>/<name>/geo``, the PNG to ``<out>/<name>/loss_curves.png``.
        quiet: Hide the arms' own output (progress bars, summaries); errors are shown either way.

    Raises:
        RuntimeError: if an arm fails; the message holds the end of its output.
    """
    from lightning_geo.demo.plot import plot_budget_curves, plot_loss_curves

    precision = replace(config, geo=True).resolved_precision  # both arms: GEO's default precision
    results = []
    with tempfile.TemporaryDirectory(prefix="geo_compare_") as scratch:
        for label, geo in ARMS:
            arm = replace(config, geo=geo, precision=precision, name=f"{config.name}/{label.lower()}")
            summary = Path(scratch) / f"{label}.json"
            argv = _arm_argv(arm, summary)
            print(f"--- {label} arm: {' '.join(argv[2:])}", flush=True)
            pipe = subprocess.PIPE if quiet else None
            done = subprocess.run(argv, text=True, stdout=pipe, stderr=pipe)
            if done.returncode != 0 or not summary.is_file():
                tail = (done.stderr or "")[-3000:] if quiet else "(see its output above)"
                raise RuntimeError(f"the {label} arm failed with exit status {done.returncode}: {tail}")
            results.append(DemoResult.from_json(summary.read_text()))
    baseline, geo_result = results
    path = Path(config.out) / config.name / "loss_curves.png"
    if config.budget is not None:
        curves = {label: (r.val_seconds, r.val_curve) for (label, _), r in zip(ARMS, results, strict=True)}
        plot = plot_budget_curves(curves, path, target=baseline.final_val_loss,
                                  unit="token" if config.tokenizer == "bpe" else "character")
    else:
        plot = plot_loss_curves({label: r.log_dir for (label, _), r in zip(ARMS, results, strict=True)}, path,
                                x="tokens")
    return CompareResult(baseline=baseline, geo=geo_result, plot_path=plot)
