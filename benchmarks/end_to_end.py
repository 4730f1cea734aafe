"""Does ``lightning_geo.recipe()`` train faster than plain Lightning, end to end, on wall-clock time?

``python benchmarks/end_to_end.py [--budgets 30s,120s,480s] [--seeds 0,1,2] [--corpora stdlib,kjv]
[--ablation-budget 30s] [--ablation-corpora stdlib] [--long-seeds 0,1,2] [--long-corpora stdlib,kjv]
[--limit kjv:120s:0] [--reuse]``

The model is the demo's (``lightning-geo demo``): a GPT-2-shaped LM (4 blocks, width 128, 4 heads, untied head,
context 128, batch 32) on a byte-level BPE of 4,096 tokens learned on each corpus, AdamW (betas 0.9/0.95, weight
decay 0.1), warmup (5% of the budget) + cosine to 10% over the budget, gradient clipping 1.0, ``bf16-mixed`` on
the CPU. Every run is budgeted in seconds spent in training batches (validation is not counted; see
``lightning_geo.demo.budget``) and validates 12 times over its budget on 256 held-out windows.

Corpora: ``stdlib`` (the demo's: this Python's standard library sources, 8.9 M tokens) and ``kjv`` (the King
James Bible as printed by Debian's ``bible`` command, ``apt-get install bible-kjv``; the last 5% held out).

Arms (each its own ``python`` process, one after the other, so that neither warms the other's caches):

- ``plain``: plain Lightning (Lightning's ``MixedPrecision``), at its tuned learning rate;
- ``recipe``: ``L.Trainer(**lightning_geo.recipe())``, at its tuned learning rate;
- ablations, at the recipe's learning rate: ``-seq_len_warmup``, ``-sparsity``, the recipe without each part;
  ``+bf16-plugin``, the recipe with ``PredictiveScalingPrecision("bf16-mixed")`` in place of Lightning's own
  ``bf16-mixed`` (the recipe uses the plugin in ``16-mixed`` only; this arm is why); ``-strategy`` is not run: on
  one device ``geo_hybrid`` is a single-device run, nothing to remove;
- ``random-order``: the curriculum's control: the same sequence lengths as the recipe's linear warmup, drawn in
  random order over the warmup instead of shortest first (so the same tokens, not the same order);
- ``deadline=0.15``, ``deadline=0.5``: the pacing sweep: the recipe with its warmup over 15% or 50% of the budget
  instead of 30% (``--pacing-budgets`` runs ``deadline=0.5`` at more budgets).

Learning rates and LR warmups: ``DEMO_LEARNING_RATES`` and ``DEMO_WARMUP_SHARES`` (each arm tuned with the same
budget of ``GeoTuner`` trials at the demo's budget: ``python benchmarks/tune_demo_lr.py``), or ``--lr-plain`` /
``--lr-recipe`` / ``--warmup-plain`` / ``--warmup-recipe``.

Figures, per corpus, budget and seed: the target is that seed's plain run's final validation loss;
``time x`` = plain's seconds to reach it / the arm's (1.3 = the arm needs 1/1.3 of the time), read off each
curve with linear interpolation between validations; ``tokens x`` the same in training tokens; ``final``: the
arm's final loss / plain's at the same seconds. Median over seeds and the spread (min-max). Targets (issue 23):
at the demo's budget ``time x`` >= 1.3 (median) and >= 1.1 on every seed, final lower on every seed; at 16x the
demo's budget, final within 0.5% of plain's.

``--reuse`` keeps the run files of earlier invocations (``build/end_to_end/``) whose settings match, so that a long
sweep can be run in pieces; the table says how many runs it reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "build" / "end_to_end"
RESULTS = ROOT / "benchmarks" / "results" / "end_to_end_cpu.txt"
ABLATIONS: tuple[str, ...] = ("-seq_len_warmup", "-sparsity", "+bf16-plugin", "random-order", "deadline=0.15",
                              "deadline=0.5")
PACING_ARM = "deadline=0.5"
"""The pacing arm also run at ``--pacing-budgets`` (the recipe's own deadline against the runner-up's)."""


@dataclass(frozen=True)
class RunSpec:
    """One training run: what a worker process needs."""

    arm: str  # plain, recipe, -<part>, random-order
    corpus: str  # stdlib or kjv
    budget: str
    seed: int
    lr: float
    warmup_share: float = 0.05
    val_points: int = 12
    val_samples: int = 256

    def effective(self) -> dict[str, Any]:
        """What the arm trains with: two arm names that mean the same run share one run file."""
        from lightning_geo.recipes import SEQ_LEN_WARMUP_DEADLINE

        deadline = float(self.arm.split("=")[1]) if self.arm.startswith("deadline=") else SEQ_LEN_WARMUP_DEADLINE
        exclude = self.arm[1:] if self.arm.startswith("-") else ""
        return {"geo": self.arm != "plain", "exclude": exclude,
                "deadline": deadline if self.arm != "plain" and exclude != "seq_len_warmup" else None,
                "random_order": self.arm == "random-order", "bf16_plugin": self.arm == "+bf16-plugin"}

    def key(self) -> str:
        fields = {**asdict(self), **self.effective()}
        fields.pop("arm")
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def corpus_path(name: str) -> str | None:
    """The corpus argument of ``name``: None for the stdlib; the KJV written once to the cache."""
    if name == "stdlib":
        return None
    if name != "kjv":
        raise ValueError(f"unknown corpus {name!r}; expected stdlib or kjv")
    cache = Path(os.environ.get("LIGHTNING_GEO_CACHE", Path.home() / ".cache" / "lightning_geo")) / "kjv.txt"
    if not cache.is_file():
        if shutil.which("bible") is None:
            sys.exit("the kjv corpus needs the `bible` command: apt-get install bible-kjv")
        text = subprocess.run(["bible", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(text)
    return str(cache)


def _worker(spec: RunSpec, out: Path) -> None:
    """Train one run (in this process) and write its DemoResult JSON to ``out``."""
    import logging
    import random

    from lightning_geo.callbacks import DynamicCurriculum
    from lightning_geo.demo.config import DemoConfig
    from lightning_geo.demo.run import load_demo_corpus, run_demo

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    class RandomOrderWarmup(DynamicCurriculum):
        """The control: each batch's length drawn at random from the linear warmup's lengths while it lasts."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._rng = random.Random(spec.seed)

        def _length_for(self, threshold: float) -> int:
            if threshold >= 1.0:
                return super()._length_for(1.0)
            return super()._length_for(self._start + (1.0 - self._start) * self._rng.random())

    effective = spec.effective()
    geo = effective["geo"]
    exclude = (effective["exclude"],) if effective["exclude"] else ()
    config = DemoConfig(
        seq_len_warmup=effective["deadline"] or 0.3,
        corpus=corpus_path(spec.corpus), tokenizer="bpe", max_train_chars=None, budget=spec.budget, geo=geo,
        exclude=exclude, lr=spec.lr, warmup_share=spec.warmup_share, seed=spec.seed, val_points=spec.val_points,
        val_samples=spec.val_samples,
        precision="bf16-mixed", out=str(RUNS / "logs"), name=f"{spec.corpus}_{spec.arm}_{spec.budget}_{spec.seed}",
        progress_bar=False, sample_chars=0,
    )
    plugins = []
    if effective["bf16_plugin"]:
        from lightning_geo.precision import PredictiveScalingPrecision

        plugins.append(PredictiveScalingPrecision("bf16-mixed"))
    callbacks = []
    if effective["random_order"]:
        from lightning_geo.demo.run import seq_len_warmup_deadline

        callbacks.append(RandomOrderWarmup(mode="seq_len", pacing="linear", deadline=seq_len_warmup_deadline(config)))
    result = run_demo(config, load_demo_corpus(config), callbacks=callbacks, plugins=plugins)
    assert result is not None
    out.write_text(result.to_json())


def run(spec: RunSpec, reuse: bool, log: Any) -> dict[str, Any]:
    """The result of ``spec``: from its run file when ``reuse`` and it exists, else trained in a fresh process."""
    path = RUNS / f"{spec.key()}.json"
    if not (reuse and path.is_file()):
        RUNS.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--worker", json.dumps(asdict(spec)), str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{spec} failed:\n{done.stderr[-3000:]}")
        fresh = True
    else:
        fresh = False
    result = json.loads(path.read_text())
    result["fresh"] = fresh
    log(f"  {spec.corpus:6} {spec.budget:>6} seed {spec.seed} {spec.arm:15} lr {spec.lr:.3g} warmup "
        f"{spec.warmup_share:.3g}: final "
        f"{result['final_val_loss']:.4f}, {result['steps']} steps, {result['tokens']:,} tokens, "
        f"{result['tokens_per_second']:,.0f} tokens/s{'' if fresh else ' (reused)'}")
    return result


@dataclass
class Comparison:
    """One arm against the same seed's plain run."""

    time_x: float | None  # plain's seconds to its final loss / the arm's (None: not reached)
    tokens_x: float | None
    final_ratio: float  # the arm's final loss / plain's
    plain_final: float
    arm_final: float


def compare(plain: dict[str, Any], arm: dict[str, Any]) -> Comparison:
    from lightning_geo.demo.compare import first_reach as _reach

    target = plain["final_val_loss"]
    losses = {name: [point[2] for point in r["val_curve"]] for name, r in (("plain", plain), ("arm", arm))}
    seconds = _reach(arm["val_seconds"], losses["arm"], target)
    base_seconds = _reach(plain["val_seconds"], losses["plain"], target)
    tokens = _reach([p[1] for p in arm["val_curve"]], losses["arm"], target)
    base_tokens = _reach([p[1] for p in plain["val_curve"]], losses["plain"], target)
    return Comparison(
        time_x=base_seconds / seconds if seconds and base_seconds else None,
        tokens_x=base_tokens / tokens if tokens and base_tokens else None,
        final_ratio=arm["final_val_loss"] / target,
        plain_final=target,
        arm_final=arm["final_val_loss"],
    )


def _summary(values: list[float | None]) -> str:
    reached = [v for v in values if v is not None]
    if not reached:
        return "not reached"
    text = f"{statistics.median(reached):.2f}x" if len(reached) == len(values) else "median n/a"
    spread = f" ({min(reached):.2f}-{max(reached):.2f})" if len(reached) > 1 else ""
    missing = f", {len(values) - len(reached)} not reached" if len(reached) < len(values) else ""
    return text + spread + missing


@dataclass
class Sweep:
    """Every comparison of a sweep, by (corpus, budget, arm)."""

    rows: dict[tuple[str, str, str], list[Comparison]] = field(default_factory=dict)

    def add(self, corpus: str, budget: str, arm: str, comparison: Comparison) -> None:
        self.rows.setdefault((corpus, budget, arm), []).append(comparison)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="30s,120s,480s", help="the demo's budget, 4x and 16x it")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--long-seeds", default=None, help="seeds at the largest budget (default: --seeds)")
    parser.add_argument("--long-corpora", default=None, help="corpora at the largest budget (default: --corpora)")
    parser.add_argument("--corpora", default="stdlib,kjv")
    parser.add_argument("--ablation-budget", default="30s", help="budget of the ablation arms ('' for none)")
    parser.add_argument("--ablation-corpora", default="stdlib")
    parser.add_argument("--limit", action="append", default=[], metavar="CORPUS:BUDGET:SEEDS",
                        help="run only these seeds at this corpus and budget, e.g. kjv:120s:0 (repeatable)")
    parser.add_argument("--pacing-budgets", default="", help=f"more budgets at which {PACING_ARM} runs")
    parser.add_argument("--lr-plain", type=float, default=None)
    parser.add_argument("--lr-recipe", type=float, default=None)
    parser.add_argument("--warmup-plain", type=float, default=None)
    parser.add_argument("--warmup-recipe", type=float, default=None)
    parser.add_argument("--reuse", action="store_true", help="keep matching run files of earlier invocations")
    parser.add_argument("--no-results-file", action="store_true", help="do not write benchmarks/results/")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(RunSpec(**json.loads(args.worker[0])), Path(args.worker[1]))
        return
    # here, not at the top: a worker process needs none of it
    from bench_common import Transcript, code_version, verdict

    from lightning_geo.demo.config import DEMO_LEARNING_RATES, DEMO_WARMUP_SHARES

    lrs = {"plain": args.lr_plain or DEMO_LEARNING_RATES["plain"],
           "recipe": args.lr_recipe or DEMO_LEARNING_RATES["geo"]}
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    long_seeds = [int(s) for s in args.long_seeds.split(",")] if args.long_seeds else seeds
    corpora = [c.strip() for c in args.corpora.split(",") if c.strip()]
    long_corpora = [c.strip() for c in args.long_corpora.split(",")] if args.long_corpora else corpora
    ablation_corpora = [c.strip() for c in args.ablation_corpora.split(",") if c.strip()]
    log = Transcript()
    log(f"# benchmarks/end_to_end.py: {' '.join(sys.argv[1:]) or '(defaults)'}; code {code_version()}")
    warmups = {"plain": DEMO_WARMUP_SHARES["plain"] if args.warmup_plain is None else args.warmup_plain,
               "recipe": DEMO_WARMUP_SHARES["geo"] if args.warmup_recipe is None else args.warmup_recipe}
    log(f"learning rates: plain {lrs['plain']:g}, recipe and ablations {lrs['recipe']:g}; LR warmup (share of the "
        f"budget): plain {warmups['plain']:g}, recipe and ablations {warmups['recipe']:g}")
    sweep = Sweep()
    limits = {tuple(item.split(":")[:2]): [int(s) for s in item.split(":")[2].split(",")] for item in args.limit}
    for corpus in corpora:
        for budget in budgets:
            longest = budget == budgets[-1] and len(budgets) > 1
            if longest and corpus not in long_corpora:
                continue
            arms = ["plain", "recipe"]
            if budget == args.ablation_budget and corpus in ablation_corpora:
                arms += list(ABLATIONS)
            elif budget in args.pacing_budgets.split(",") and corpus in ablation_corpora:
                arms.append(PACING_ARM)
            for seed in limits.get((corpus, budget), long_seeds if longest else seeds):
                results = {}
                for arm in arms:
                    tuned = "plain" if arm == "plain" else "recipe"
                    spec = RunSpec(arm, corpus, budget, seed, lrs[tuned], warmup_share=warmups[tuned])
                    results[arm] = run(spec, args.reuse, log)
                for arm in arms[1:]:
                    sweep.add(corpus, budget, arm, compare(results["plain"], results[arm]))
    mark = log.mark()
    log("")
    log("| corpus | budget | arm | seeds | time x (to plain's final loss) | tokens x | final loss / plain's | "
        "plain final (nats/token) |")
    log("|---|---|---|---|---|---|---|---|")
    for (corpus, budget, arm), comparisons in sweep.rows.items():
        finals = [c.final_ratio for c in comparisons]
        log(f"| {corpus} | {budget} | {arm} | {len(comparisons)} | {_summary([c.time_x for c in comparisons])} | "
            f"{_summary([c.tokens_x for c in comparisons])} | {statistics.median(finals):.4f} "
            f"({min(finals):.4f}-{max(finals):.4f}) | {statistics.median(c.plain_final for c in comparisons):.4f} |")
    log("")
    demo_budget, long_budget = budgets[0], budgets[-1]
    for corpus in corpora:
        main_rows = sweep.rows.get((corpus, demo_budget, "recipe"), [])
        times = [c.time_x for c in main_rows]
        met = (bool(times) and all(t is not None for t in times)
               and statistics.median(times) >= 1.3 and min(times) >= 1.1  # type: ignore[type-var]
               and all(c.final_ratio < 1.0 for c in main_rows))
        for line in verdict(met, f"{corpus}, {demo_budget}: recipe >= 1.3x time to plain's final loss (median), "
                            ">= 1.1x every seed, lower final loss every seed",
                            [f"time x per seed: {', '.join('-' if t is None else f'{t:.2f}' for t in times)}; final "
                             f"ratio per seed: {', '.join(f'{c.final_ratio:.4f}' for c in main_rows)}"]):
            log(line)
        if len(budgets) > 1 and corpus in long_corpora:
            long_rows = sweep.rows.get((corpus, long_budget, "recipe"), [])
            met = bool(long_rows) and all(c.final_ratio <= 1.005 for c in long_rows)
            times = ", ".join("-" if c.time_x is None else f"{c.time_x:.2f}" for c in long_rows)
            finals = ", ".join(f"{c.final_ratio:.4f}" for c in long_rows)
            for line in verdict(met, f"{corpus}, {long_budget}: recipe's final loss within 0.5% of plain's",
                                [f"final ratio per seed: {finals}; time x: {times}"]):
                log(line)
    for corpus in ablation_corpora:
        recipe_rows = sweep.rows.get((corpus, args.ablation_budget, "recipe"), [])
        for arm in ABLATIONS:
            rows = sweep.rows.get((corpus, args.ablation_budget, arm), [])
            if not rows or not recipe_rows:
                continue
            pairs = [(r.time_x, a.time_x) for r, a in zip(recipe_rows, rows, strict=True)]
            earns = all(a is None or (r is not None and r > a) for r, a in pairs)
            log(f"ablation {corpus} {args.ablation_budget} {arm}: time x "
                f"{', '.join('-' if a is None else f'{a:.2f}' for _, a in pairs)} vs the recipe's "
                f"{', '.join('-' if r is None else f'{r:.2f}' for r, _ in pairs)}: "
                + ("the recipe is faster on every seed" if earns else "the arm matches or beats it on some seed"))
    if not args.no_results_file:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(log.lines[:2]) + "\n" + log.since(mark) + "\n")
        log(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
