"""Tune the demo's learning rate and warmup for each arm (plain Lightning, ``lightning_geo.recipe()``) with the same
budget.

``python benchmarks/tune_demo_lr.py [--trials 10] [--budget 30s] [--corpus stdlib] [--seed 0]``

Each arm gets its own ``GeoTuner`` study over the peak learning rate (log-uniform in [1e-3, 1.5e-2]) and the LR
warmup (a share of the budget in [0, 0.3]) with the same number of trials; a trial is one demo run of that arm at
the demo's budget (its own process, see ``benchmarks/end_to_end.py``) and reports its final validation loss. The
best values of each arm are what ``lightning_geo.demo.config.DEMO_LEARNING_RATES`` and ``DEMO_WARMUP_SHARES`` ship.
Prints both studies' trials and writes ``benchmarks/results/tune_demo_lr.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from bench_common import Transcript, code_version
from end_to_end import ROOT, RunSpec, run

from lightning_geo.tuning import Float, GeoTuner, SearchSpace, Trial

RESULTS = ROOT / "benchmarks" / "results" / "tune_demo_lr.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--budget", default="30s")
    parser.add_argument("--corpus", default="stdlib")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    log = Transcript()
    log(f"# benchmarks/tune_demo_lr.py: {' '.join(sys.argv[1:]) or '(defaults)'}; code {code_version()}")
    space = SearchSpace({"lr": Float(1e-3, 1.5e-2, log=True), "warmup_share": Float(0.0, 0.3)})
    best = {}
    with tempfile.TemporaryDirectory(prefix="tune_demo_lr_") as scratch:
        for arm in ("plain", "recipe"):
            log(f"\n{arm}: {args.trials} trials at {args.budget} on {args.corpus}, seed {args.seed}")

            def train(config: dict[str, float], trial: Trial, arm: str = arm) -> float:
                spec = RunSpec(arm, args.corpus, args.budget, args.seed, float(config["lr"]),
                               warmup_share=round(float(config["warmup_share"]), 4))
                return float(run(spec, reuse=True, log=log)["final_val_loss"])

            tuner = GeoTuner(space, monitor="val/loss", max_trials=args.trials, pruner=None, log_dir=scratch,
                             study_name=arm, seed=args.seed, verbose=False)
            tuner.search(train)
            best[arm] = tuner.best_params
            log(f"{arm}: best {json.dumps(best[arm])}")
    log(f"\nDEMO_LEARNING_RATES = {{'plain': {best['plain']['lr']:.3g}, 'geo': {best['recipe']['lr']:.3g}}}")
    log(f"DEMO_WARMUP_SHARES = {{'plain': {best['plain']['warmup_share']:.3g}, "
        f"'geo': {best['recipe']['warmup_share']:.3g}}}")
    RESULTS.write_text("\n".join(log.lines) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
