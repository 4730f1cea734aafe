"""Does ``GeoMuon`` reach tuned AdamW's final loss in fewer optimizer steps on a long run?

``python benchmarks/muon.py [--models demo,llama] [--steps 1600] [--seeds 0,1,2] [--lrs 0.002,0.004,0.008]
[--tune-steps 400] [--arms adamw,geo_muon,geo_muon-adamw-embedding] [--parallel 2] [--quick]``

The claim is about the optimizer alone, so everything else is held fixed and the run is counted in optimizer
steps, not seconds: the same model, data order, batch (32 windows of 128 BPE tokens of the demo's corpus, this
Python's standard library), precision (bf16 autocast where the CPU has bf16 instructions, else fp32), gradient
clipping 1.0 and schedule (linear warmup over 5% of the steps, cosine to 10% of the peak) in every arm. 1,600
steps is 16x the demo's 30-second budget (about 100 steps).

Models: ``demo``, the demo's GPT-2-shaped LM (4 blocks, width 128, untied head), and ``llama``, a Hugging Face
``LlamaForCausalLM`` built from a config (4 layers, hidden 128, 4 heads, intermediate 344, RoPE, untied head):
a model this project did not write.

Arms:

- ``adamw``: ``torch.optim.AdamW`` (betas 0.9/0.95, weight decay 0.1 on matrices, none on embeddings, norms,
  biases): the baseline, the control the Muon literature compares against;
- ``geo_muon``: ``GeoMuon(model, lr)``: Muon for the hidden matrices, the row rule for the token embedding, AdamW
  for the rest, ``adjust_lr_fn="match_rms_adamw"`` so that the same ``lr`` scale serves every group;
- ``geo_muon-adamw-embedding``: ``GeoMuon(model, lr, embedding_rule="adamw")``: what ``torch.optim.Muon`` plus a
  hand split gives (the row rule's share of the gain).

Learning rates: each arm tries every rate of ``--lrs`` for ``--tune-steps`` steps (seed 0; the same number of
trials for every arm) and keeps the one with the lowest final validation loss for its seeds. Every run validates
16 times on 256 held-out windows.

Figures, per model and seed: the target is that seed's ``adamw`` run's final validation loss; ``steps x`` =
AdamW's steps to it / the arm's (interpolated linearly between validations); ``final`` the arm's final loss /
AdamW's. Median over seeds and the spread (min..max). ``cpu s/step`` is each arm's CPU seconds per training step
(one thread per run; arms run ``--parallel`` at a time, so background load hits them alike), and ``NS share`` the
part of a GeoMuon step spent in Newton-Schulz, timed on the same matrices.

Targets: ``geo_muon`` >= 1.3x fewer steps to AdamW's final loss on the demo LM (median), final loss lower on every
seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "muon_cpu.txt"
ARMS: tuple[str, ...] = ("adamw", "geo_muon", "geo_muon-adamw-embedding")
MODELS: tuple[str, ...] = ("demo", "llama")
BATCH, SEQ_LEN, VAL_WINDOWS, VAL_POINTS = 32, 128, 256, 16


def build_model(name: str, vocab_size: int) -> Any:
    """The model ``name`` for ``vocab_size`` tokens: a ``(B, T)`` ids -> ``(B, T, vocab)`` logits module."""
    import torch
    from torch import nn

    if name == "demo":
        from lightning_geo.demo.model import CharGPT, GPTConfig

        return CharGPT(GPTConfig(vocab_size=vocab_size, seq_len=SEQ_LEN, n_layer=4, n_head=4, n_embd=128))
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=SEQ_LEN, tie_word_embeddings=False,
    )

    class Llama(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = LlamaForCausalLM(config)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=idx).logits

    return Llama()


def build_optimizer(arm: str, model: Any, lr: float) -> Any:
    """The optimizer of ``arm`` over ``model``'s parameters at peak learning rate ``lr``."""
    import torch

    from lightning_geo.optim import GeoMuon

    if arm == "adamw":
        decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "emb" not in n and "wte" not in n
                 and "wpe" not in n]
        other = [p for p in model.parameters() if all(p is not q for q in decay)]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    if arm == "geo_muon":
        return GeoMuon(model, lr=lr)
    if arm == "geo_muon-adamw-embedding":
        return GeoMuon(model, lr=lr, embedding_rule="adamw")
    raise ValueError(f"unknown arm {arm!r}; the arms are {list(ARMS)}")


def newton_schulz_seconds(optimizer: Any, repeats: int = 3) -> float:
    """CPU seconds of one step's Newton-Schulz iterations over ``optimizer``'s Muon matrices (0 without any)."""
    import torch

    from lightning_geo.optim.geo_muon import newton_schulz_dtype, orthogonalize

    groups = [g for g in getattr(optimizer, "param_groups", []) if g.get("rule") == "muon"]
    work = [(torch.randn_like(p), g) for g in groups for p in g["params"]]
    start = time.process_time()
    for _ in range(repeats):
        for matrix, g in work:
            dtype = newton_schulz_dtype(g["ns_dtype"], matrix.device)
            orthogonalize(matrix, g["ns_coefficients"], g["ns_steps"], g["eps"], dtype)
    return (time.process_time() - start) / repeats


def train(spec: dict[str, Any]) -> dict[str, Any]:
    """One run (in its own process, one thread): the validation curve, CPU and wall seconds."""
    import torch
    import torch.nn.functional as F

    from lightning_geo.demo.bpe import load_bpe_corpus
    from lightning_geo.demo.model import warmup_cosine

    torch.set_num_threads(1)
    corpus = load_bpe_corpus()
    train_ids, val_ids = corpus.train.long(), corpus.val.long()
    torch.manual_seed(spec["seed"])
    model = build_model(spec["model"], corpus.vocab_size)
    optimizer = build_optimizer(spec["arm"], model, spec["lr"])
    steps = spec["steps"]
    for group in optimizer.param_groups:
        group["peak_lr"] = group["lr"]
    windows = (len(train_ids) - 1) // SEQ_LEN
    order = torch.Generator().manual_seed(spec["seed"])  # the same data order in every arm of a seed
    picks = torch.linspace(0, (len(val_ids) - 1) // SEQ_LEN - 1, VAL_WINDOWS).long()
    val_x = torch.stack([val_ids[i * SEQ_LEN:(i + 1) * SEQ_LEN] for i in picks])
    val_y = torch.stack([val_ids[i * SEQ_LEN + 1:(i + 1) * SEQ_LEN + 1] for i in picks])

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["precision"] == "bf16"):
            logits = model(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    def validate() -> float:
        model.eval()
        with torch.no_grad():
            total = sum(loss_of(val_x[i:i + 64], val_y[i:i + 64]).item() for i in range(0, VAL_WINDOWS, 64))
        model.train()
        return total / math.ceil(VAL_WINDOWS / 64)

    every = max(1, steps // VAL_POINTS)
    curve: list[tuple[int, float]] = []
    train_cpu = 0.0
    wall = time.time()
    for step in range(steps):
        start = time.process_time()
        factor = warmup_cosine(step, warmup_steps=max(1, steps // 20), total_steps=steps)
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * factor
        idx = torch.randint(0, windows, (BATCH,), generator=order)
        x = torch.stack([train_ids[i * SEQ_LEN:(i + 1) * SEQ_LEN] for i in idx])
        y = torch.stack([train_ids[i * SEQ_LEN + 1:(i + 1) * SEQ_LEN + 1] for i in idx])
        loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_cpu += time.process_time() - start
        if (step + 1) % every == 0 or step + 1 == steps:
            value = validate()
            curve.append((step + 1, value if math.isfinite(value) else float("inf")))
    return {**spec, "curve": curve, "cpu_per_step": train_cpu / steps, "wall": time.time() - wall,
            "ns_seconds": newton_schulz_seconds(optimizer)}


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Steps at which ``curve`` first reaches ``target`` (linear between validations), or None."""
    prev_step, prev_loss = 0, math.inf
    for step, loss in curve:
        if loss <= target:
            if not math.isfinite(prev_loss):
                return float(step)
            return prev_step + (step - prev_step) * (prev_loss - target) / (prev_loss - loss)
        prev_step, prev_loss = step, loss
    return None


def run_all(specs: list[dict[str, Any]], parallel: int, cache: Path) -> list[dict[str, Any]]:
    """Run ``specs`` as worker processes, ``parallel`` at a time; runs already in ``cache`` are reused."""
    cache.mkdir(parents=True, exist_ok=True)

    def one(spec: dict[str, Any]) -> dict[str, Any]:
        key = "_".join(str(spec[k]) for k in ("model", "arm", "lr", "steps", "seed", "precision"))
        path = cache / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, check=True,
                             capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        path.write_text(json.dumps(result))
        print(f"  done: {key} final {result['curve'][-1][1]:.4f} ({result['wall']:.0f} s)", flush=True)
        return result

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, specs))


def report(args: argparse.Namespace, tuned: dict[tuple[str, str], dict[float, float]],
           runs: list[dict[str, Any]]) -> str:
    """The results table and verdict for ``runs`` (the seeds at each arm's tuned rate)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import command_line, median, spread, verdict

    from lightning_geo.utils.table import format_table

    lines = [command_line(__file__), "",
             f"{args.steps} optimizer steps (16x the demo's budget is about 1,600), batch {BATCH} x {SEQ_LEN} tokens, "
             f"{args.precision}, one thread per run, {args.parallel} runs at a time", ""]
    lines.append("learning-rate trials (final val loss after --tune-steps steps, seed 0):")
    rows = [[m, a, *(f"{tuned[m, a].get(lr, math.nan):.4f}" for lr in args.lrs)] for (m, a) in tuned]
    lines += format_table(["model", "arm", *(f"lr {lr:g}" for lr in args.lrs)], rows).splitlines()
    lines.append("")
    headers = ["model", "arm", "lr", "steps x (median)", "spread", "final loss ratio", "spread", "final val loss",
               "cpu s/step", "x AdamW", "NS share"]
    rows, verdicts = [], []
    for model in args.models:
        base = {r["seed"]: r for r in runs if r["model"] == model and r["arm"] == "adamw"}
        base_cpu = median(r["cpu_per_step"] for r in base.values())
        for arm in args.arms:
            mine = [r for r in runs if r["model"] == model and r["arm"] == arm]
            ratios, finals = [], []
            for r in mine:
                target = base[r["seed"]]["curve"][-1][1]
                reached = steps_to_reach(r["curve"], target)
                base_steps = steps_to_reach(base[r["seed"]]["curve"], target) or args.steps
                ratios.append(base_steps / reached if reached else math.nan)
                finals.append(r["curve"][-1][1] / target)
            cpu = median(r["cpu_per_step"] for r in mine)
            ns = median(r["ns_seconds"] for r in mine) / cpu if cpu else math.nan
            rows.append([model, arm, f"{mine[0]['lr']:g}", f"{median(ratios, skip_nan=True):.2f}x",
                         spread(ratios, "{:.2f}".format), f"{median(finals):.4f}", spread(finals, "{:.4f}".format),
                         f"{median(r['curve'][-1][1] for r in mine):.4f}", f"{cpu:.3f}", f"{cpu / base_cpu:.2f}",
                         f"{ns:.1%}" if ns else "-"])
            if model == "demo" and arm == "geo_muon":
                met = median(ratios, skip_nan=True) >= 1.3 and all(f < 1 for f in finals)
                details = [f"steps x per seed: {', '.join(f'{x:.2f}' for x in ratios)}",
                           f"final loss ratio per seed: {', '.join(f'{x:.4f}' for x in finals)}"]
                claim = ("GeoMuon >= 1.3x fewer steps to AdamW's final loss on the demo LM, final loss lower on every "
                         "seed")
                verdicts += verdict(met, claim, details)
    lines += format_table(headers, rows).splitlines()
    return "\n".join([*lines, "", *verdicts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", default="demo", help="comma-separated, of demo,llama (default demo)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--tune-steps", type=int, default=400)
    parser.add_argument("--lrs", default="0.002,0.004,0.008")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast where the CPU has bf16 instructions, else fp32 (bf16 is emulated, "
                        "~12x slower, on CPUs without them)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 12 steps, one rate, one seed")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(train(json.loads(args.worker))))
        return
    args.models = [m for m in args.models.split(",") if m]
    args.arms = [a for a in args.arms.split(",") if a]
    for value, allowed, flag in ((args.models, MODELS, "--models"), (args.arms, ARMS, "--arms")):
        bad = sorted(set(value) - set(allowed))
        if bad:
            parser.error(f"{flag}: unknown {bad}; choose from {list(allowed)}")
    if "adamw" not in args.arms:
        parser.error("--arms must include adamw: every figure is a ratio to it")
    if args.precision == "auto":
        from lightning_geo.utils.cpu_precision import cpu_has_native_bf16

        args.precision = "bf16" if cpu_has_native_bf16() else "fp32"
    args.lrs = [float(x) for x in args.lrs.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    if args.quick:
        args.steps, args.tune_steps, args.lrs, args.seeds = 16, 16, args.lrs[:1], args.seeds[:1]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import code_version, write_results

    version = code_version()
    cache = ROOT / "build" / "muon"
    trials = [{"model": m, "arm": a, "lr": lr, "steps": args.tune_steps, "seed": 0, "precision": args.precision}
              for m in args.models for a in args.arms for lr in args.lrs]
    print(f"{len(trials)} learning-rate trials of {args.tune_steps} steps", flush=True)
    tuned: dict[tuple[str, str], dict[float, float]] = {}
    for r in run_all(trials, args.parallel, cache):
        tuned.setdefault((r["model"], r["arm"]), {})[r["lr"]] = r["curve"][-1][1]
    best = {key: min(losses, key=losses.__getitem__) for key, losses in tuned.items()}
    specs = [{"model": m, "arm": a, "lr": best[m, a], "steps": args.steps, "seed": s, "precision": args.precision}
             for s in args.seeds for m in args.models for a in args.arms]
    print(f"{len(specs)} runs of {args.steps} steps", flush=True)
    text = report(args, tuned, run_all(specs, args.parallel, cache))
    print(text)
    if not args.quick:
        write_results(args.out, text, version=version)


if __name__ == "__main__":
    main()
