"""One command for one CUDA GPU: what GEO gains and costs there, in under 8 minutes.

``python benchmarks/gpu_check.py [--budget 60s] [--steps 150] [--precision 16-mixed] [--out PATH] [--dry-run]``

Prints three tables, each against plain Lightning measured in the same run, and writes them to
``benchmarks/results/gpu_check.txt`` (or ``--out``):

(a) **plain vs recipe**: the demo LM (``lightning-geo demo``: a GPT-2-shaped LM, 4 blocks of width 128, a BPE of
    4,096 tokens on the Python standard library, batch 32 x 128) trained plain (Lightning's ``MixedPrecision``,
    AdamW) and with ``lightning_geo.recipe()`` for ``--budget`` seconds of training each, in ``16-mixed`` and in
    ``bf16-mixed``, each arm at its tuned learning rate (``DEMO_LEARNING_RATES``): seconds and tokens to plain's final
    validation loss and their ratio (``time x`` 1.3 = the recipe needs 1/1.3 of plain's time), final loss ratio,
    throughput, skipped steps.
(b) **step time per part**: the same model for ``--steps`` optimizer steps per arm, arms interleaved over ``--reps``
    repetitions, the first 20% of the steps not timed; each training batch timed between CUDA synchronisations:
    plain, then each part alone: ``PredictiveScalingPrecision``, ``SparsityAwareLR``, the sequence-length curriculum
    (``DynamicCurriculum(mode="seq_len")``, timed at full length only), ``BatchSizeSchedule`` (its optimizer steps
    hold several micro-batches: compare ms per micro-batch), ``GeoMuon`` and ``GeoAdamW`` in place of AdamW. Median
    ms per optimizer step and per micro-batch, and the ratio to plain's.
(c) **GeoMuon's step**: one more GeoMuon run with its optimizer step and each Newton-Schulz call timed between CUDA
    synchronisations, in ``16-mixed``: ms per optimizer step, ms in Newton-Schulz, its share of the optimizer step
    and of the training step, and the FLOP rate it reaches (``GeoMuon.newton_schulz_flops()`` per step).

Without CUDA it says "no CUDA device: nothing measured" and exits with 0. ``--dry-run`` runs every code path on the
CPU with a tiny model, a synthetic corpus, a 1 s budget and a few steps (the figures mean nothing; it is what the
test runs), writing a file only with ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.txt"
PRECISIONS: tuple[str, ...] = ("16-mixed", "bf16-mixed")
STEP_ARMS: tuple[str, ...] = ("plain", "precision", "sparsity", "curriculum", "batch-schedule", "GeoMuon", "GeoAdamW")
UNTIMED_SHARE = 0.2
"""Share of each step-time run's first optimizer steps left out (allocator, autotuning, the curriculum's warmup)."""


@dataclass(frozen=True)
class Settings:
    """Sizes of a check: the real one on a GPU, or the dry run's on the CPU."""

    accelerator: str  # "gpu" or "cpu"
    budget: str  # (a): training seconds per arm
    steps: int  # (b), (c): optimizer steps per run
    reps: int  # (b): repetitions, arms interleaved
    seq_len: int = 128
    batch_size: int = 32
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    val_points: int = 12
    val_samples: int = 256


def dry_run_settings() -> Settings:
    return Settings(accelerator="cpu", budget="1s", steps=6, reps=1, seq_len=16, batch_size=4, n_layer=1, n_head=2,
                    n_embd=16, val_points=2, val_samples=8)


def _sync(settings: Settings) -> None:
    if settings.accelerator == "gpu":
        import torch

        torch.cuda.synchronize()


def load_corpus(settings: Settings, *, dry_run: bool) -> Any:
    """The demo's BPE corpus (trained once, then cached), or a synthetic one for the dry run."""
    if dry_run:
        from step_overhead import synthetic_corpus

        return synthetic_corpus(256)
    from lightning_geo.demo.config import DemoConfig
    from lightning_geo.demo.run import load_demo_corpus

    return load_demo_corpus(DemoConfig(tokenizer="bpe"))


# ----------------------------------------------------------------------------------------------- (a)
def plain_vs_recipe(settings: Settings, corpus: Any, logs: str, log: Callable[[str], None]) -> str:
    """Table (a): plain against the recipe at ``settings.budget``, in each of :data:`PRECISIONS`."""
    from lightning_geo.demo.compare import seconds_to_reach, tokens_to_reach
    from lightning_geo.demo.config import DEMO_LEARNING_RATES, DEMO_WARMUP_SHARES, DemoConfig
    from lightning_geo.demo.run import run_demo
    from lightning_geo.utils.table import format_table

    rows = []
    for precision in PRECISIONS:
        results = {}
        for arm, geo in (("plain", False), ("recipe", True)):
            config = DemoConfig(
                tokenizer="char" if isinstance(corpus.vocab, str) else "bpe", budget=settings.budget, geo=geo,
                precision=precision, accelerator=settings.accelerator, devices=1,
                lr=DEMO_LEARNING_RATES["geo" if geo else "plain"],
                warmup_share=DEMO_WARMUP_SHARES["geo" if geo else "plain"], seq_len=settings.seq_len,
                batch_size=settings.batch_size, n_layer=settings.n_layer, n_head=settings.n_head,
                n_embd=settings.n_embd, val_points=settings.val_points, val_samples=settings.val_samples, out=logs,
                name=f"{arm}_{precision}", progress_bar=False, sample_chars=0,
            )
            result = run_demo(config, corpus)
            assert result is not None
            results[arm] = result
            log(f"  (a) {precision} {arm}: final {result.final_val_loss:.4f}, {result.steps} steps, "
                f"{result.tokens_per_second:,.0f} tokens/s, {result.skipped_steps} skipped")
        plain, recipe = results["plain"], results["recipe"]
        target = plain.final_val_loss
        seconds = {arm: seconds_to_reach(r, target) for arm, r in results.items()}
        tokens = {arm: tokens_to_reach(r.val_curve, target) for arm, r in results.items()}

        def ratio(base: float | None, arm: float | None) -> str:
            return f"{base / arm:.2f}x" if base and arm else "not reached"

        rows.append([
            precision, f"{plain.final_val_loss:.4f}", f"{recipe.final_val_loss:.4f}",
            f"{recipe.final_val_loss / target:.4f}",
            "not reached" if seconds["recipe"] is None else f"{seconds['recipe']:.1f}",
            ratio(seconds["plain"], seconds["recipe"]), ratio(tokens["plain"], tokens["recipe"]),
            f"{plain.tokens_per_second:,.0f} / {recipe.tokens_per_second:,.0f}",
            f"{plain.skipped_steps} / {recipe.skipped_steps}",
        ])
    return format_table(["precision", "plain final", "recipe final", "final ratio", "recipe s to plain's final",
                         "time x", "tokens x", "tokens/s plain / recipe", "skipped plain / recipe"], rows)


# ----------------------------------------------------------------------------------------------- (b), (c)
def _step_clock(settings: Settings) -> Any:
    """A callback timing each training batch between synchronisations, by optimizer step and by micro-batch."""
    from lightning.pytorch.callbacks import Callback

    class StepClock(Callback):
        def __init__(self) -> None:
            self.step_ms: list[float] = []  # per timed optimizer step, all its micro-batches at full length
            self.batch_ms: list[float] = []  # per timed micro-batch at full length
            self._start = 0.0
            self._step = 0.0
            self._full = True
            self._last_step = 0

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            _sync(settings)
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            _sync(settings)
            ms = 1e3 * (time.perf_counter() - self._start)
            full = batch[0].shape[1] == settings.seq_len
            timed = trainer.global_step >= max(1, int(UNTIMED_SHARE * trainer.max_steps))
            if full and timed:
                self.batch_ms.append(ms)
            self._step += ms
            self._full &= full
            if trainer.global_step > self._last_step:
                if self._full and timed:
                    self.step_ms.append(self._step / (trainer.global_step - self._last_step))
                self._last_step, self._step, self._full = trainer.global_step, 0.0, True

    return StepClock()


def fit_arm(arm: str, settings: Settings, corpus: Any, precision: str, *, callbacks: list[Any] | None = None) -> Any:
    """Train the demo model for ``settings.steps`` optimizer steps with the GEO part of ``arm``; the Trainer."""
    import lightning.pytorch as pl
    from end_to_end_models import DemoLM, batch_size_schedule_class
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lightning_geo.callbacks import DynamicCurriculum, SparsityAwareLR
    from lightning_geo.demo.data import CharDataModule
    from lightning_geo.precision import PredictiveScalingPrecision

    if arm not in STEP_ARMS:
        raise ValueError(f"arm={arm!r} is not one of {STEP_ARMS}")
    pl.seed_everything(0, verbose=False)
    data = CharDataModule(corpus, seq_len=settings.seq_len, batch_size=settings.batch_size, val_samples=8)
    model = DemoLM(corpus.vocab, seq_len=settings.seq_len, n_layer=settings.n_layer, n_head=settings.n_head,
                   n_embd=settings.n_embd, max_steps=settings.steps, warmup_steps=max(1, settings.steps // 10),
                   muon=arm == "GeoMuon", optimizer="geo_adamw" if arm == "GeoAdamW" else "adamw")
    device = "cuda" if settings.accelerator == "gpu" else "cpu"
    plugin = PredictiveScalingPrecision(precision) if arm == "precision" else MixedPrecision(precision, device)
    callbacks = list(callbacks or [])
    if arm == "sparsity":
        callbacks.append(SparsityAwareLR())
    elif arm == "curriculum":  # at full length after half the untimed steps
        callbacks.append(DynamicCurriculum(mode="seq_len", pacing="linear", deadline=UNTIMED_SHARE / 2))
    elif arm == "batch-schedule":
        callbacks.append(batch_size_schedule_class()())
    trainer = pl.Trainer(
        accelerator=settings.accelerator, devices=1, plugins=[plugin], max_steps=settings.steps, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=1.0, callbacks=callbacks,
    )
    trainer.fit(model, datamodule=data)
    return trainer


def step_times(settings: Settings, corpus: Any, precision: str, log: Callable[[str], None]) -> str:
    """Table (b): median ms per optimizer step and per micro-batch of each of :data:`STEP_ARMS`, and x plain."""
    from lightning_geo.utils.table import format_table

    steps: dict[str, list[float]] = {arm: [] for arm in STEP_ARMS}
    batches: dict[str, list[float]] = {arm: [] for arm in STEP_ARMS}
    for rep in range(settings.reps):
        for arm in STEP_ARMS:
            clock = _step_clock(settings)
            fit_arm(arm, settings, corpus, precision, callbacks=[clock])
            steps[arm] += clock.step_ms
            batches[arm] += clock.batch_ms
            log(f"  (b) rep {rep} {arm}: {len(clock.step_ms)} timed steps, median "
                f"{statistics.median(clock.step_ms) if clock.step_ms else float('nan'):.2f} ms")

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    base_step, base_batch = med(steps["plain"]), med(batches["plain"])
    rows = [[arm, f"{med(steps[arm]):.2f}", f"x{med(steps[arm]) / base_step:.3f}", f"{med(batches[arm]):.2f}",
             f"x{med(batches[arm]) / base_batch:.3f}", str(len(steps[arm]))] for arm in STEP_ARMS]
    return format_table(["arm", "ms/optimizer step", "x plain", "ms/micro-batch", "x plain", "steps timed"], rows)


@contextmanager
def timed_newton_schulz(settings: Settings, spent: list[float]) -> Iterator[bool]:
    """Times every Newton-Schulz call of torch's Muon (which GeoMuon runs) into ``spent`` (ms); yields whether it
    could (False where torch's private function is not there to wrap)."""
    from torch.optim import _muon

    original = getattr(_muon, "_zeropower_via_newtonschulz", None)
    if original is None:
        yield False
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        _sync(settings)
        start = time.perf_counter()
        out = original(*args, **kwargs)
        _sync(settings)
        spent.append(1e3 * (time.perf_counter() - start))
        return out

    _muon._zeropower_via_newtonschulz = timed
    try:
        yield True
    finally:
        _muon._zeropower_via_newtonschulz = original


def muon_share(settings: Settings, corpus: Any, log: Callable[[str], None]) -> str:
    """Table (c): GeoMuon's optimizer step, the Newton-Schulz part of it, and the FLOP rate it reaches; in
    ``16-mixed``, where Lightning's ``GradScaler`` runs forward and backward before ``optimizer.step()``, so that
    the step's hooks time the update alone."""
    from lightning.pytorch.callbacks import Callback

    from lightning_geo.utils.table import format_table

    class OptimizerClock(Callback):
        """Times each optimizer step (pre-hook to post-hook, synchronised) and the Newton-Schulz calls in it."""

        def __init__(self) -> None:
            self.step_ms: list[float] = []
            self.ns_ms: list[float] = []  # per timed step
            self.flops = 0
            self._calls: list[float] = []
            self._start = 0.0

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            optimizer = trainer.optimizers[0]
            self.flops = int(optimizer.newton_schulz_flops()) if hasattr(optimizer, "newton_schulz_flops") else 0
            optimizer.register_step_pre_hook(self._before)
            optimizer.register_step_post_hook(self._after)

        def _before(self, optimizer: Any, args: Any, kwargs: Any) -> None:
            _sync(settings)
            self._calls.clear()
            self._start = time.perf_counter()

        def _after(self, optimizer: Any, args: Any, kwargs: Any) -> None:
            _sync(settings)
            self.step_ms.append(1e3 * (time.perf_counter() - self._start))
            self.ns_ms.append(sum(self._calls))

    clock, optimizer_clock = _step_clock(settings), OptimizerClock()
    with timed_newton_schulz(settings, optimizer_clock._calls) as wrapped:
        fit_arm("GeoMuon", settings, corpus, "16-mixed", callbacks=[clock, optimizer_clock])
    skip = max(1, int(UNTIMED_SHARE * len(optimizer_clock.step_ms)))
    step_ms = statistics.median(optimizer_clock.step_ms[skip:] or optimizer_clock.step_ms)
    train_ms = statistics.median(clock.step_ms) if clock.step_ms else float("nan")
    rows = [["optimizer step (GeoMuon.step)", f"{step_ms:.3f} ms", f"{step_ms / train_ms:.1%} of the training step"]]
    if wrapped:
        ns_ms = statistics.median(optimizer_clock.ns_ms[skip:] or optimizer_clock.ns_ms)
        rate = optimizer_clock.flops / (ns_ms / 1e3) / 1e12 if ns_ms > 0 else float("nan")
        rows += [["Newton-Schulz", f"{ns_ms:.3f} ms", f"{ns_ms / step_ms:.1%} of the optimizer step, "
                  f"{ns_ms / train_ms:.1%} of the training step"],
                 ["Newton-Schulz work", f"{optimizer_clock.flops / 1e9:.3f} GFLOP/step", f"{rate:.3g} TFLOP/s"]]
    else:
        rows.append(["Newton-Schulz", "not timed", "torch.optim._muon._zeropower_via_newtonschulz not found"])
    rows.append(["training step (timed with the hooks above)", f"{train_ms:.3f} ms", ""])
    log(f"  (c) GeoMuon: {len(optimizer_clock.step_ms)} optimizer steps timed")
    return format_table(["GeoMuon", "median", "share"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="60s", help="(a): seconds of training per arm and precision")
    parser.add_argument("--steps", type=int, default=150, help="(b), (c): optimizer steps per run")
    parser.add_argument("--reps", type=int, default=2, help="(b): repetitions, arms interleaved")
    parser.add_argument("--precision", choices=PRECISIONS, default="16-mixed", help="(b), (c)")
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS.relative_to(ROOT)}; "
                        "none with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="every code path on the CPU, tiny; figures mean nothing")
    args = parser.parse_args(argv)

    import lightning.pytorch  # noqa: F401  (before quiet_lightning: its import sets its loggers' levels)
    import torch
    from bench_common import code_version, machine, quiet_lightning

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: nothing measured (python benchmarks/gpu_check.py --dry-run exercises it on the CPU)")
        return 0
    quiet_lightning(".*GradScaler.*", ".*TensorBoard.*", ".*val_dataloader.*", ".*training_step.*")
    warnings.filterwarnings("ignore", category=UserWarning)
    settings = (dry_run_settings() if args.dry_run else
                Settings(accelerator="gpu", budget=args.budget, steps=args.steps, reps=args.reps))
    started = time.perf_counter()
    lines: list[str] = []

    def log(line: str = "") -> None:
        print(line, flush=True)

    def report(line: str = "") -> None:
        log(line)
        lines.append(line)

    version = code_version()
    where = "CPU dry run (tiny model, synthetic corpus: the figures mean nothing)" if args.dry_run else machine()
    report(f"# python benchmarks/gpu_check.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    report(f"{version}; {where}")
    corpus = load_corpus(settings, dry_run=args.dry_run)
    log(f"  corpus ready after {time.perf_counter() - started:.0f} s")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as logs:
        table_a = plain_vs_recipe(settings, corpus, logs, log)
    report("")
    report(f"(a) plain vs recipe, demo LM, {settings.budget} of training per arm, time and tokens to plain's final "
           "validation loss")
    report(table_a)
    table_b = step_times(settings, corpus, args.precision, log)
    report("")
    report(f"(b) step time per GEO part, {args.precision}, {settings.steps} steps x {settings.reps} rep(s), first "
           f"{UNTIMED_SHARE:.0%} untimed, CUDA-synchronised per batch")
    report(table_b)
    table_c = muon_share(settings, corpus, log)
    report("")
    report("(c) GeoMuon's optimizer step and Newton-Schulz, 16-mixed, synchronised around each call")
    report(table_c)
    report("")
    report(f"total {time.perf_counter() - started:.0f} s")
    out = args.out if args.out is not None else (None if args.dry_run else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
