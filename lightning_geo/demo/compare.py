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
from dataclasses import dataclass, replace
from pathlib import Path

from lightning_geo.demo.config import DemoConfig
from lightning_geo.demo.run import DemoResult
from lightning_geo.utils.table import format_table

ARMS: tuple[tuple[str, bool], ...] = (("Lightning", False), ("GEO", True))
"""``(label, geo)`` of the two arms, baseline first."""


def tokens_to_reach(val_curve: tuple[tuple[int, int, float], ...], target: float) -> float | None:
    """Training tokens after which a validation curve first reaches ``target`` (nats), or None if it never does.

    Between two validations the loss is taken as linear in tokens; a curve already at or below the target at
    its first validation gives that validation's tokens.

    Args:
        val_curve: ``(steps, tokens, val loss)`` per validation, in order (``DemoResult.val_curve``).
        target: The loss to reach, e.g. the baseline's final validation loss.
    """
    previous: tuple[int, float] | None = None
    for _, tokens, loss in val_curve:
        if loss <= target:
            if previous is None or previous[1] == loss:
                return float(tokens)
            t0, l0 = previous
            return t0 + (l0 - target) / (l0 - loss) * (tokens - t0)
        previous = (tokens, loss)
    return None


@dataclass
class CompareResult:
    """Both arms' results, baseline first, and the PNG of their loss curves."""

    baseline: DemoResult
    geo: DemoResult
    plot_path: Path

    def table(self) -> str:
        """One row per arm and a GEO / Lightning ratio row."""
        target = self.baseline.final_val_loss
        reach = [tokens_to_reach(r.val_curve, target) for r in (self.baseline, self.geo)]
        rows = []
        for (label, _), result, tokens in zip(ARMS, (self.baseline, self.geo), reach, strict=True):
            rows.append([
                label,
                f"{tokens:,.0f}" if tokens is not None else f"not reached (> {result.tokens:,})",
                f"{result.final_val_loss:.4f}",
                f"{result.tokens_per_second:,.0f}",
                f"{result.peak_memory_bytes / 2**20:,.0f}",
                str(result.skipped_steps),
                f"{result.steps:,}" + (" (capped)" if result.stopped_early else ""),
                f"{result.tokens:,}",
            ])
        b, g = self.baseline, self.geo
        rows.append([
            "GEO / Lightning",
            _ratio(reach[1], reach[0]),
            _ratio(g.final_val_loss, b.final_val_loss),
            _ratio(g.tokens_per_second, b.tokens_per_second),
            _ratio(g.peak_memory_bytes, b.peak_memory_bytes),
            f"{g.skipped_steps - b.skipped_steps:+d}",
            _ratio(g.steps, b.steps),
            _ratio(g.tokens, b.tokens),
        ])
        header = ["arm", "tokens to Lightning's final val loss", "final val loss (nats)", "tokens/s",
                  f"peak memory MiB ({b.memory_kind})", "skipped steps", "steps", "tokens"]
        return format_table(header, rows)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0 or not math.isfinite(value) or not math.isfinite(base):
        return "-"
    return f"x{value / base:.3f}"


def _arm_argv(config: DemoConfig, summary: Path) -> list[str]:
    """The ``lightning-geo demo`` command line of one arm."""
    argv = [sys.executable, "-m", "lightning_geo", "demo", "--summary-json", str(summary)]
    flags = {
        "corpus": config.corpus, "steps": config.steps, "max_minutes": config.max_minutes,
        "batch_size": config.batch_size, "seq_len": config.seq_len, "n_layer": config.n_layer,
        "n_head": config.n_head, "n_embd": config.n_embd, "lr": config.lr, "precision": config.resolved_precision,
        "accelerator": config.accelerator, "devices": config.devices, "val_every": config.val_every,
        "out": config.out, "name": config.name, "seed": config.seed,
    }
    for name, value in flags.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    if config.geo:
        argv.append("--geo")
    if not config.progress_bar:
        argv.append("--no-progress-bar")
    return argv


def run_compare(config: DemoConfig, *, quiet: bool = False) -> CompareResult:
    """Train the demo plain and with GEO on the same budget and plot both; returns both summaries.

    Args:
        config: The settings of both arms (``geo`` is ignored: one arm each). Logs go to
            ``<out>/<name>/lightning`` and ``<out>/<name>/geo``, the PNG to ``<out>/<name>/loss_curves.png``.
        quiet: Hide the arms' own output (progress bars, summaries); errors are shown either way.

    Raises:
        RuntimeError: if an arm fails; the message holds the end of its output.
    """
    from lightning_geo.demo.plot import plot_loss_curves

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
    plot = plot_loss_curves({label: r.log_dir for (label, _), r in zip(ARMS, results, strict=True)},
                            Path(config.out) / config.name / "loss_curves.png", x="tokens")
    return CompareResult(baseline=baseline, geo=geo_result, plot_path=plot)
