"""What a study writes for people: TensorBoard runs (study curves, per-trial HParams), a progress line per
trial, the results table and a PNG of the optimisation history and parameter importance."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_geo.tuning.trial import TrialRecord, TrialState
from lightning_geo.utils.dashboard import add_geo_dashboard
from lightning_geo.utils.geo_logging import geo_tag
from lightning_geo.utils.table import format_table


def _hparam_value(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) else repr(value)


class StudyWriter:
    """Writes the study run ``<study dir>/study`` (``geo/tuning/*`` scalars against the trial number) and adds
    each finished trial's hyperparameters and result to its own run ``<study dir>/trial_NNNN`` (HParams tab).
    The study run also gets the ``GEO tuning`` section of the GEO dashboard (Custom Scalars tab).

    Args:
        study_dir: The study's folder.
        monitor: The monitored metric names (the HParams tab shows them as ``hparams/<name>``).
    """

    def __init__(self, study_dir: Path, monitor: Sequence[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.study_dir = study_dir
        self.monitor = tuple(monitor)
        self._writer = SummaryWriter(log_dir=str(study_dir / "study"))
        add_geo_dashboard(self._writer, ["tuning"])  # the "GEO tuning" section of the Custom Scalars tab

    def trial_finished(
        self,
        record: TrialRecord,
        *,
        best: float | None,
        trial_dir: Path,
        ask_seconds: float | None,
        counts: dict,
    ) -> None:
        """Log one finished trial (study curves and the trial's HParams entry); ``best`` is the study's best
        completed value so far, this trial and those replayed on a resume included."""
        step = record.number
        scalars: dict[str, float] = {"trial_seconds": record.seconds, **{f"num_{k}": v for k, v in counts.items()}}
        if ask_seconds is not None:
            scalars["ask_seconds"] = ask_seconds
        if record.values is not None:
            for name, v in zip(self.monitor, record.values, strict=True):
                scalars[f"value/{name}"] = v
        if best is not None:
            scalars["best_value"] = best
        for name, v in scalars.items():
            self._writer.add_scalar(geo_tag("tuning", name), v, global_step=step)
        self._writer.flush()
        if record.values is not None:
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(log_dir=str(trial_dir)) as writer:
                metrics = {f"hparams/{n}": v for n, v in zip(self.monitor, record.values, strict=True)}
                params = {k: _hparam_value(v) for k, v in record.params.items()}
                params["trial_state"] = record.state.value
                writer.add_hparams(params, metrics, run_name=".")

    def text(self, name: str, text: str) -> None:
        """Log Markdown text under ``geo/tuning/<name>`` in the study run."""
        self._writer.add_text(geo_tag("tuning", name), text)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the study run."""
        self._writer.close()


def progress_line(record: TrialRecord, *, total: int, best: TrialRecord | None, monitor: Sequence[str]) -> str:
    """One line per finished trial: number, state, value, best so far, seconds, config."""
    if record.values is None:
        reason = (record.error or "no value").splitlines()[0][:100]
        result = f"{record.state.value} ({reason})"
    else:
        values = " ".join(f"{n}={v:.5g}" for n, v in zip(monitor, record.values, strict=True))
        result = f"{record.state.value:<8} {values}"
    best_text = f"best {best.value:.5g} (#{best.number})" if best is not None and best.value is not None else "best -"
    params = ", ".join(f"{k}={_short(v)}" for k, v in record.params.items())
    return f"[trial {record.number + 1:>3}/{total}] {result} | {best_text} | {record.seconds:.1f} s | {params}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def results_table(records: Sequence[TrialRecord], monitor: Sequence[str]) -> str:
    """All finished trials as a text table, in trial order."""
    names = list(dict.fromkeys(k for r in sorted(records, key=lambda r: r.number) for k in r.params))
    headers = ["trial", "state", *monitor, "reports", "seconds", *names]
    rows = []
    for r in sorted(records, key=lambda r: r.number):
        values = [f"{v:.5g}" for v in r.values] if r.values is not None else ["-"] * len(monitor)
        rows.append([r.number, r.state.value, *values, len(r.reports), f"{r.seconds:.1f}",
                     *(_short(r.params.get(k, "-")) for k in names)])
    return format_table(headers, rows)


def plot_study(
    records: Sequence[TrialRecord], importance: dict[str, float] | None, *, monitor: str, mode: str, path: Path
) -> Path:
    """Save a PNG: the value of every trial with the best-so-far line, and the parameter importance bars."""
    from matplotlib.figure import Figure

    ordered = sorted(records, key=lambda r: r.number)
    fig = Figure(figsize=(11 if importance else 6, 4))  # no pyplot: the caller's backend is left alone
    axes = fig.subplots(1, 2 if importance else 1, squeeze=False)
    ax = axes[0][0]
    best, xs, bests = math.inf if mode == "min" else -math.inf, [], []
    for state, marker in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "x")):
        points = [(r.number, r.value) for r in ordered if r.state is state and r.value is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, label=state.value.lower(), alpha=0.7)
    for r in ordered:
        if r.state is TrialState.COMPLETE and r.value is not None:
            best = min(best, r.value) if mode == "min" else max(best, r.value)
        if math.isfinite(best):
            xs.append(r.number)
            bests.append(best)
    if xs:
        ax.step(xs, bests, where="post", color="black", label="best so far")
    failed = [r.number for r in ordered if r.state is TrialState.FAILED]
    for number in failed:
        ax.axvline(number, color="red", alpha=0.2)
    ax.set_xlabel("trial")
    ax.set_ylabel(monitor)
    ax.set_title("optimisation history" + (f" ({len(failed)} failed: red lines)" if failed else ""))
    ax.legend()
    if importance:
        names = sorted(importance, key=importance.__getitem__)
        axes[0][1].barh(names, [importance[n] for n in names])
        axes[0][1].set_xlabel("importance (share of the GP mean's variation)")
        axes[0][1].set_title("parameter importance")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
