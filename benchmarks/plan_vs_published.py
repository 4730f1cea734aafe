"""Does GEO's parallel planner agree with the layouts real clusters were measured with?

``python benchmarks/plan_vs_published.py [--efficiency auto|0.45] [--max-pipeline 16] [--out PATH]``

Each configuration of ``benchmarks/published_configs.py`` (torchtitan's Llama 3.1 tables, Megatron-LM's GPT
tables, llm-foundry's MPT tables, the Llama 3 paper: cluster, model shape, parallel degrees, micro and global
batch, activation checkpointing, the measured tokens/s, MFU or TFLOP/s per GPU, the source) becomes:

- a cluster for the planner: ``gpus / gpus_per_node`` alike nodes of 8 GPUs joined by NVSwitch (NVLink 4 on
  H100/H200, 3 on A100), the memory the cluster's name states (80 GB otherwise), the network at the stated rate per
  GPU (400 Gb/s = 50 GB/s; 25 GB/s for Selene's HDR; 50 GB/s where not stated);
- a model for the planner: ``ModelSize.from_shape`` of the published shape, the published micro-batch and global
  batch (bf16 compute, fp32 master weights and gradients, AdamW);
- the published layout estimated by the planner's step-time model (``estimate_plan``), and the planner's own
  choice on the same cluster and model (``plan_parallelism``, tensor parallel allowed up to 8, pipelines up to
  ``--max-pipeline``, activation checkpointing and offload when needed).

Figures: measured tokens/s per GPU (from the source's TFLOP/s or MFU with ``6N + 12 L h s`` FLOPs per token where
it gives no tokens/s), the estimate for the published layout and their ratio; whether the planner's choice equals
the published degrees (replicate, shard, tensor, pipeline) or those of another published layout of the same model,
cluster and batch, and the estimate of the choice against the best measured throughput of those layouts (the
target: equal degrees, or within 10%, on >= 80% of the configurations); per group of
one model on one cluster with >= 3 layouts the planner models apart, Spearman's rank correlation of estimated vs
measured throughput (target >= 0.8).

Out of scope, counted and listed: Float8 runs (the planner has no fp8 compute), context parallel (not in the plan
space), layouts whose degrees the source does not give. Where a table repeats one layout with features the planner
does not model (torch.compile, async TP), the first row (the table's baseline) stands for it. Selective activation
checkpointing is estimated as none (it recomputes a few cheap operations, not the forward). ``--efficiency auto``
fits the step-time model's one constant (the share of peak a step's compute reaches) to the median log ratio over
every configuration and prints, for each group of >= 3 layouts, the error with the constant fitted without it; a
number fixes it.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import Transcript, code_version  # noqa: E402
from published_configs import PUBLISHED, PublishedConfig  # noqa: E402

from lightning_geo.strategies import step_time  # noqa: E402
from lightning_geo.strategies.bandwidth import GB, Bandwidths  # noqa: E402
from lightning_geo.strategies.planner import ModelSize, Plan, estimate_plan, plan_parallelism  # noqa: E402
from lightning_geo.strategies.topology import GPU, SELF_LINK, Link, LinkKind, NodeTopology, single_node  # noqa: E402
from lightning_geo.strategies.transformer_shape import TransformerShape  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "plan_vs_published.txt"
SOURCE_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""The dense bf16 peak the sources compute their MFU against."""


@dataclass
class Row:
    """One published configuration and what the planner makes of it."""

    config: PublishedConfig
    measured: float
    published: Plan
    chosen: Plan

    @property
    def published_dims(self) -> tuple[int, int, int, int]:
        c = self.config
        assert None not in (c.dp_replicate, c.dp_shard, c.tp, c.pp)
        return c.dp_replicate, c.dp_shard, c.tp, c.pp  # type: ignore[return-value]

    @property
    def chosen_dims(self) -> tuple[int, int, int, int]:
        p = self.chosen
        return p.replicate, p.shard, p.tensor, p.pipeline

    def estimate(self, plan: Plan) -> float:
        assert plan.step is not None
        return plan.step.tokens_per_second_per_gpu


def gpu_kind(cluster: str) -> str:
    """``H100``, ``H200`` or ``A100`` from a cluster's description."""
    for kind in ("H200", "H100", "A100"):
        if kind in cluster:
            return kind
    if "DGX-H100" in cluster:
        return "H100"
    raise ValueError(f"unknown GPU in {cluster!r}")


@functools.cache
def cluster_topology(config: PublishedConfig):
    """The planner's view of the published cluster (built once per configuration: the efficiency fit asks often)."""
    kind = gpu_kind(config.cluster)
    per_node = config.gpus_per_node or 8
    memory = re.search(r"(\d+)\s*GB", config.cluster)
    memory_bytes = int(float(memory.group(1)) * GB) if memory else int(80 * GB)
    links = 18 if kind in ("H100", "H200") else 12
    version = 4 if kind in ("H100", "H200") else 3
    nvlink = Link(LinkKind.NVLINK, nvlinks=links, nvlink_version=version, nvswitch=True)
    node = NodeTopology(
        tuple(GPU(i, name=f"NVIDIA {kind}", memory_bytes=memory_bytes) for i in range(per_node)),
        tuple(tuple(SELF_LINK if i == j else nvlink for j in range(per_node)) for i in range(per_node)),
        source="published")
    net = 25.0 if "200 Gb/s HDR" in (config.inter_node or "") else 50.0
    return single_node(node, max(1, config.gpus // per_node)), Bandwidths(net=net)


@functools.cache
def model_for(config: PublishedConfig) -> ModelSize:
    """The published model and batch as the planner sees them."""
    dp = (config.dp_replicate or 1) * (config.dp_shard or 1) * config.cp
    micro = config.micro_batch
    if micro is None:
        micro = 1 if (config.pp or 1) > 1 or not config.global_batch else max(1, config.global_batch // dp)
    assert config.layers and config.hidden and config.heads and config.vocab and config.seq_len
    llama = "llama" in config.model.lower()
    shape = TransformerShape(
        layers=config.layers, hidden=config.hidden, heads=config.heads, ffn=config.ffn or 4 * config.hidden,
        vocab=config.vocab, seq_len=config.seq_len, micro_batch=micro, kv_heads=config.kv_heads,
        gated_mlp=llama, rms_norm=llama, bias=not llama)
    return ModelSize.from_shape(shape, global_batch=config.global_batch or micro * dp, compute_bytes=2.0)


def measured_tokens_per_second(config: PublishedConfig, model: ModelSize) -> float:
    """Tokens/s per GPU as published, or from the published TFLOP/s or MFU."""
    if config.tokens_per_second_per_gpu is not None:
        return float(config.tokens_per_second_per_gpu)
    sh = model.shape
    assert sh is not None
    matrix = model.parameters - (0 if sh.tied_embeddings else sh.vocab * sh.hidden)
    per_token = step_time.flops_per_token(matrix, sh.layers, sh.hidden, sh.seq_len)
    tflops = config.tflops_per_gpu
    if tflops is None:
        assert config.mfu is not None
        tflops = config.mfu * SOURCE_PEAK_TFLOPS[gpu_kind(config.cluster)]
    return tflops * 1e12 / per_token


def in_scope(config: PublishedConfig) -> str:
    """Why a configuration is left out, or ``""``."""
    if config.precision == "fp8":
        return "Float8"
    if config.cp > 1:
        return "context parallel"
    if None in (config.dp_replicate, config.dp_shard, config.tp, config.pp):
        return "degrees not given"
    if None in (config.layers, config.hidden, config.heads, config.vocab, config.seq_len):
        return "shape not given"
    return ""


def modelled_key(config: PublishedConfig) -> tuple:
    """What the planner can tell apart: cluster, model, degrees, batch, checkpointing."""
    return (config.cluster, config.gpus, config.model, config.dp_replicate, config.dp_shard, config.tp, config.pp,
            config.micro_batch, config.global_batch, config.seq_len, config.activation_checkpointing)


def published_plan(config: PublishedConfig, efficiency: float) -> tuple[Plan, ModelSize]:
    """The published layout as the planner estimates it."""
    topology, bandwidths = cluster_topology(config)
    model = model_for(config)
    assert config.dp_replicate and config.dp_shard and config.tp and config.pp
    plan = estimate_plan(topology, model, (config.dp_replicate, config.dp_shard, config.tp),
                         pipeline=config.pp, bandwidths=bandwidths, efficiency=efficiency,
                         activation_checkpointing=config.activation_checkpointing == "full")
    return plan, model


def evaluate(config: PublishedConfig, *, efficiency: float, max_pipeline: int) -> Row:
    """The published layout's estimate and the planner's choice for one configuration."""
    topology, bandwidths = cluster_topology(config)
    published, model = published_plan(config, efficiency)
    report = plan_parallelism(topology, model, bandwidths=bandwidths, allow_tensor_parallel=True,
                              max_pipeline=max_pipeline, efficiency=efficiency, memory_fraction=0.95)
    return Row(config, measured_tokens_per_second(config, model), published, report.chosen)


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when a side is constant."""
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if sx == 0 or sy == 0:
        return math.nan
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True)) / (sx * sy)


def fit_efficiency(configs: list[PublishedConfig]) -> float:
    """The efficiency whose estimates of the published layouts have a median log ratio nearest 0."""
    grid = [round(0.20 + 0.01 * k, 2) for k in range(61)]
    measured = [measured_tokens_per_second(c, model_for(c)) for c in configs]

    def error(eff: float) -> float:
        estimates = [published_plan(c, eff)[0].step.tokens_per_second_per_gpu for c in configs]  # type: ignore[union-attr]
        return abs(statistics.median(math.log(e / m) for e, m in zip(estimates, measured, strict=True)))

    return min(grid, key=error)


def compare(rows: list[Row], log: Transcript, label: str) -> float:
    """The table of published layouts against the planner's choices, and the agreement; returns its share."""
    header = ("| source | GPUs | model | published RxSxTxP | AC | measured tok/s/GPU | est. published | ratio | "
              "planner's choice | est. choice | choice / best measured | agrees |")
    log(header)
    log("|" + "---|" * (header.count("|") - 1))
    agree = 0
    peers: dict[tuple, list[Row]] = {}
    for row in rows:
        peers.setdefault((*row.config.key, row.config.global_batch, row.config.seq_len), []).append(row)
    for row in rows:
        c = row.config
        alike = peers[(*c.key, c.global_batch, c.seq_len)]
        best = max(peer.measured for peer in alike)
        est_pub, est_choice = row.estimate(row.published), row.estimate(row.chosen)
        same = any(row.chosen_dims == peer.published_dims for peer in alike)
        near = abs(est_choice / best - 1) <= 0.10
        agree += same or near
        chosen = row.chosen
        choice_text = "x".join(map(str, row.chosen_dims)) + (" +AC" if chosen.activation_checkpointing else "") + (
            " +offload" if chosen.cpu_offload else "")
        log(f"| {c.source.split(' (')[0].split(';')[0][:38]} | {c.gpus} | {c.model} | "
            f"{'x'.join(map(str, row.published_dims))} | {c.activation_checkpointing or '-'} | {row.measured:,.0f} | "
            f"{est_pub:,.0f} | {est_pub / row.measured:.2f} | {choice_text} | {est_choice:,.0f} | "
            f"{est_choice / best:.2f} | {'same' if same else 'within 10%' if near else 'no'} |")
    share = agree / len(rows)
    log("")
    log(f"[{'MET' if share >= 0.8 else 'MISSED'}] {label}: planner's choice equal to a published layout or estimated "
        f"within 10% of the best measured throughput: {agree}/{len(rows)} = {share:.0%} (target >= 80%)")
    ratios = [r.estimate(r.published) / r.measured for r in rows]
    log(f"estimate / measured for the published layouts: median {statistics.median(ratios):.2f}, "
        f"{sum(abs(x - 1) <= 0.1 for x in ratios)}/{len(ratios)} within 10%, range {min(ratios):.2f}-{max(ratios):.2f}")

    return share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--efficiency", default="auto", help="'auto' (fitted) or a share of peak in (0, 1]")
    parser.add_argument("--max-pipeline", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    log = Transcript()
    log(f"# benchmarks/plan_vs_published.py {' '.join(argv if argv is not None else sys.argv[1:])}; "
        f"code {code_version()}")

    skipped: dict[str, list[str]] = {}
    seen: set[tuple] = set()
    configs = []
    for config in PUBLISHED:
        why = in_scope(config)
        if not why and modelled_key(config) in seen:
            why = "repeats a layout (compile/async TP variant)"
        if why:
            skipped.setdefault(why, []).append(f"{config.model} on {config.gpus} ({config.source.split(' (')[0]})")
            continue
        seen.add(modelled_key(config))
        configs.append(config)

    if args.efficiency == "auto":
        efficiency = fit_efficiency(configs)
        how = "fitted to every configuration"
    else:
        efficiency = float(args.efficiency)
        how = "given"
    rows = [evaluate(c, efficiency=efficiency, max_pipeline=args.max_pipeline) for c in configs]
    log(f"{len(PUBLISHED)} published configurations, {len(rows)} in scope; step-time efficiency {efficiency:.2f} "
        f"({how}); peak per GPU: {step_time.PEAK_TFLOPS['H100']:g} TFLOP/s H100/H200, "
        f"{step_time.PEAK_TFLOPS['A100']:g} A100")
    log("")
    compare(rows, log, f"one efficiency ({efficiency:.2f}) for every source")

    log("")
    log("rank correlation per group (one model on one cluster, >= 3 layouts the planner tells apart):")
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.config.key, []).append(row)
    correlations = []
    for key, members in groups.items():
        if len(members) < 3:
            continue
        rho = spearman([m.estimate(m.published) for m in members], [m.measured for m in members])
        correlations.append(rho)
        log(f"  {key[2]} on {key[1]} x {key[0]}: {len(members)} layouts, Spearman {rho:.2f}")
    if correlations:
        ok = all(not math.isnan(r) and r >= 0.8 for r in correlations)
        log(f"[{'MET' if ok else 'MISSED'}] rank correlation >= 0.8 in every group: "
            + ", ".join(f"{r:.2f}" for r in correlations))

    if args.efficiency == "auto":
        log("")
        log("leave-one-group-out: the efficiency fitted without a group of >= 3 layouts, that group's median error:")
        for key, members in groups.items():
            if len(members) < 3:
                continue
            rest = [c for c in configs if c.key != key]
            eff = fit_efficiency(rest)
            errs = [abs(math.log(published_plan(m.config, eff)[0].step.tokens_per_second_per_gpu  # type: ignore[union-attr]
                                 / m.measured)) for m in members]
            error = math.exp(statistics.median(errs)) - 1
            log(f"  {key[2]} on {key[1]}: efficiency {eff:.2f}, median error {error:.0%}")

    if args.efficiency == "auto":
        log("")
        log("with the efficiency of each row's source fitted on the source's other rows (what a user who measured "
            "their own stack would pass as efficiency=; a source of one row keeps the overall one):")
        by_source: dict[str, list[PublishedConfig]] = {}
        for config in configs:
            by_source.setdefault(config.url, []).append(config)
        own_rows = []
        for config in configs:
            others = [c for c in by_source[config.url] if c is not config]
            own = fit_efficiency(others) if others else efficiency
            own_rows.append(evaluate(config, efficiency=own, max_pipeline=args.max_pipeline))
        for url, members in by_source.items():
            if len(members) > 1:
                log(f"  {url}: {len(members)} rows, efficiency {fit_efficiency(members):.2f} fitted on all of them")
        log("")
        compare(own_rows, log, "each source's own efficiency (leave-one-out)")

    log("")
    log("left out:")
    for why, names in skipped.items():
        log(f"  {why}: {len(names)} ({'; '.join(sorted(set(names)))})")
    log("")
    log("sources: " + "; ".join(sorted({c.url for c in PUBLISHED})))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(log.since(0) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
