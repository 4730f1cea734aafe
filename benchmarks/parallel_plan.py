"""Which plan does the parallel planner choose on real topologies, and does its cost model rank plans as they run?

    python benchmarks/parallel_plan.py [--reps 5] [--steps 30] [--skip-measured] [--quick]
                                       [--out benchmarks/results/parallel_plan.txt]

**Part 1, the planner table** (pure, a second). For every ``nvidia-smi topo -m`` file in
``tests/data/topologies`` (``--topologies``; copies of the real outputs in ``shared/topologies``), read with
``topology_smi.read_topology_file``, on 1 node and on 2 nodes (``single_node(node, 2)``: the second node a
copy, joined by the default InfiniBand figure, ``Bandwidths().net`` = 25 GB/s per GPU), and for models of
125M, 1.3B, 7B and 70B parameters
(``ModelSize(parameters)`` at its defaults: fp32 weights and gradients, Adam's 8 bytes per parameter, no
activation estimate): ``plan_parallelism`` at its defaults, with the GPU's real memory (the files carry none;
:data:`GPU_MEMORY_GIB` reads it off each file's ``# machine:`` comment). Per row: the chosen plan, its
estimated communication per step, that over DDP's (``(world, 1, 1)``) and over FSDP's (``(1, world, 1)``)
estimate, both from ``estimate_plan``, or "does not fit" when the planner's report rules that mesh out for
memory, and the NVLink islands of the node.

**Part 2, measured on CPU** (slow, ~15 min on 2 cores). The demo char-level GPT (4 blocks of width 256, 3.2M
parameters; 2 random windows of 32 characters per data-parallel rank and step, so that communication is a
sizeable share of the step; a tensor-parallel group of size T reads 2T windows, so every arm trains the same
global batch) trained by ``GeoHybridStrategy`` with each mesh forced, on gloo: 2 processes DDP ``(2,1,1)``,
FSDP ``(1,2,1)`` and tensor parallel ``(1,1,2)``; 4 processes DDP ``(4,1,1)``, FSDP ``(1,4,1)``, HSDP
``(2,2,1)`` and TP2 inside DDP2 ``(2,1,2)`` (tensor parallel of the MLP pairs the strategy recognises; the
planner told their activation traffic by :func:`demo_model_size`). Each run is
``benchmarks/parallel_plan_worker.py`` under ``torch.distributed.run``, one torch thread per process;
rank 0 times every step after a barrier and reports the median over ``--steps`` steps after 5 warm-up steps.
Every repetition runs all the arms of a process count back to back (the order rotating with the repetition),
so each arm's *ratio* is its median step time over the DDP run of the same repetition; the table gives the
median ratio over repetitions and its min..max. Beside it, the planner's estimated communication of the same
meshes on ``cpu_node_topology(n)`` with the default ``Bandwidths()`` (gloo: 2 GB/s, 30 us per hop), as a ratio
to DDP's, and whether the planner's order of the plans is the measured order.

Caveat: on one machine every gloo "link" is the same loopback / shared memory, so part 2 checks the cost
model's traffic and latency accounting (how many bytes and collectives each plan moves), not its topology
awareness; and 4 processes share 2 cores, so compute is time-sliced. The planner estimates communication
only, and a step also computes, so its ratios are wider than step-time ratios: compare orders, and the
measured extra milliseconds over DDP with the estimated ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from bench_common import Transcript, code_version, free_port, verdict

from lightning_geo.strategies.bandwidth import Bandwidths
from lightning_geo.strategies.planner import ModelSize, estimate_plan, plan_parallelism
from lightning_geo.strategies.topology import NodeTopology, cpu_node_topology, single_node
from lightning_geo.strategies.topology_smi import read_topology_file
from lightning_geo.utils.table import format_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKER = Path(__file__).resolve().parent / "parallel_plan_worker.py"
TOPOLOGY_DIR = ROOT / "tests" / "data" / "topologies"  # copies of ../shared/topologies
SIZES = {"125M": 125e6, "1.3B": 1.3e9, "7B": 7e9, "70B": 70e9}
NODE_COUNTS = (1, 2)

# Memory per GPU in GiB, read off each file's "# machine:" comment (the product's "16GB" is 16 GiB of device
# memory: nvidia-smi reports 16160 MiB for a V100-SXM2-16GB, 81559 MiB for an H100 80GB).
GPU_MEMORY_GIB = {
    "01_dgx1_v100_hybrid_cube_mesh_2socket_1nic.txt": 16,  # Tesla V100-SXM2-16GB
    "02_v100_hybrid_cube_mesh_single_numa_old_legend.txt": 32,  # Tesla V100-SXM2-32GB
    "03_hgx_h100_8x_nv18_2socket_no_nic.txt": 80,  # H100 SXM 80GB
    "05_2gpu_consumer_pcie_phb_no_nvlink.txt": 24,  # "2 consumer GPUs": not stated; assumed 24 GB (TITAN RTX class)
    "06_4x_rtx6000ada_pcie_2socket_4nic.txt": 48,  # RTX 6000 Ada
    "07_2x_rtx6000ada_phb_threadripper_2nic.txt": 48,  # RTX 6000 Ada
    "08_v100_hybrid_cube_mesh_2socket_2nic_handedited_tabs.txt": 16,  # Tesla V100-SXM2-16GB
    "09_dgx1_v100_hybrid_cube_mesh_2socket_4nic.txt": 32,  # Tesla V100-SXM2-32GB
    "11_dgx_a100_8x_nv12_amd_nps4_10nic.txt": 40,  # A100-SXM4-40GB
    "12_hgx_h100_8x_nv18_2socket_8nic.txt": 80,  # H100 80GB HBM3
    "14_hgx_h800_8x_nv8_2socket_8nic.txt": 80,  # H800 80GB
    "16_8x_rtx4090_pcie_pix_groups_2socket.txt": 24,  # GeForce RTX 4090
    "18_8x_a10g_vm_all_phb.txt": 24,  # A10G
    "21_8x_a30_nv4_pairs_mixed_node_pix_2socket.txt": 24,  # A30
}

# Part 2: the demo model and the forced meshes per process count (DDP first: the baseline).
MODEL_ARGS = {"n_layer": 4, "n_embd": 256, "n_head": 4, "seq_len": 32, "batch": 2}
ARMS = {2: [(2, 1, 1), (1, 2, 1), (1, 1, 2)], 4: [(4, 1, 1), (1, 4, 1), (2, 2, 1), (2, 1, 2)]}


def demo_model_size(parameters: int, tensor: int) -> ModelSize:
    """The demo model as the planner sees it, on a mesh with tensor-parallel size ``tensor``.

    Tensor parallel splits each block's MLP pair (the pairs the strategy recognises; attention stays whole),
    which all-reduces the fp32 hidden state of the group's batch (``batch * tensor`` windows, so that every
    arm trains the same global batch) once in forward and once in backward per block.
    """
    hidden = MODEL_ARGS["batch"] * tensor * MODEL_ARGS["seq_len"] * MODEL_ARGS["n_embd"] * 4
    return ModelSize(parameters, num_blocks=MODEL_ARGS["n_layer"], tp_comm_bytes=2 * MODEL_ARGS["n_layer"] * hidden)


WARMUP = 5
RUN_TIMEOUT_S = 300


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _islands(node: NodeTopology) -> str:
    groups = [g for g in node.nvlink_islands() if len(g) > 1]
    return " ".join("{" + ",".join(map(str, g)) + "}" for g in groups) or "none"


def _mesh(shape: tuple[int, int, int]) -> str:
    return "x".join(map(str, shape))


# ------------------------------------------------------------------------------- part 1: the planner
@dataclass
class PlannerRow:
    topology: str
    nodes: int
    gpus: int
    memory_gib: float
    size: str
    chosen: str
    chosen_fits: bool
    comm: float
    ddp: tuple[float, bool]  # (comm seconds, fits)
    fsdp: tuple[float, bool]
    islands: str

    def cells(self) -> list[object]:
        def ratio(other: tuple[float, bool]) -> str:
            seconds, fits = other
            if not fits:
                return "does not fit"
            return f"{self.comm / seconds:.2f}" if seconds > 0 else "-"

        if not self.chosen_fits:
            return [self.topology, f"{self.nodes}x{self.gpus}", f"{self.memory_gib:g}", self.size, "none fits", "-",
                    "does not fit", "does not fit", self.islands]
        return [self.topology, f"{self.nodes}x{self.gpus}", f"{self.memory_gib:g}", self.size, self.chosen,
                _seconds(self.comm), ratio(self.ddp), ratio(self.fsdp), self.islands]


def planner_table(files: list[Path]) -> tuple[list[PlannerRow], dict[str, list[str]]]:
    """Every file x node count x model size: the chosen plan and how it compares with DDP and FSDP."""
    bandwidths = Bandwidths()
    rows: list[PlannerRow] = []
    warnings: dict[str, list[str]] = {}
    for path in files:
        node = read_topology_file(path)
        memory_gib = GPU_MEMORY_GIB[path.name]
        name = path.stem.split("_", 1)[0]
        for num_nodes in NODE_COUNTS:
            cluster = single_node(node, num_nodes)
            world = cluster.world_size
            for size, parameters in SIZES.items():
                model = ModelSize(parameters)
                report = plan_parallelism(cluster, model, bandwidths=bandwidths,
                                          gpu_memory_bytes=memory_gib * 2**30)
                fits = {c.plan.mesh_shape: c.fits for c in report.candidates if not c.plan.activation_checkpointing}
                ddp = estimate_plan(cluster, model, (world, 1, 1), bandwidths=bandwidths)
                fsdp = estimate_plan(cluster, model, (1, world, 1), bandwidths=bandwidths)
                chosen = report.chosen
                rows.append(PlannerRow(
                    topology=name, nodes=num_nodes, gpus=cluster.gpus_per_node, memory_gib=memory_gib, size=size,
                    chosen=chosen.name + (" +AC" if chosen.activation_checkpointing else ""),
                    chosen_fits=report.candidates[0].fits, comm=chosen.comm_seconds,
                    ddp=(ddp.comm_seconds, fits[ddp.mesh_shape]), fsdp=(fsdp.comm_seconds, fits[fsdp.mesh_shape]),
                    islands=_islands(node),
                ))
                for w in report.warnings:
                    if not w.startswith("no plan fits"):
                        warnings.setdefault(name, [])
                        if w not in warnings[name]:
                            warnings[name].append(w)
    return rows, warnings


PLANNER_HEADERS = ["topology", "nodes x GPUs", "GiB/GPU", "model", "chosen plan", "est comm/step", "x DDP",
                   "x FSDP", "NVLink islands"]


# ----------------------------------------------------------------------------- part 2: measured on CPU
@dataclass
class Arm:
    processes: int
    shape: tuple[int, int, int]
    name: str = ""
    median_s: list[float] = field(default_factory=list)  # per repetition
    ratio: list[float] = field(default_factory=list)  # per repetition, over that repetition's DDP run
    errors: list[str] = field(default_factory=list)
    strategy_est: float | None = None


def run_worker(processes: int, shape: tuple[int, int, int], *, steps: int, seed: int, workdir: Path) -> dict:
    """One torchrun launch of the worker; its rank-0 JSON, or ``{"error": ...}``."""
    out = workdir / f"n{processes}_{_mesh(shape)}_s{seed}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               f"--master_port={free_port()}", str(WORKER), "--out", str(out), "--mesh", ",".join(map(str, shape)),
               "--steps", str(steps), "--warmup", str(WARMUP), "--seed", str(seed),
               *(f"--{k.replace('_', '-')}={v}" for k, v in MODEL_ARGS.items())]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {RUN_TIMEOUT_S} s"}
    if done.returncode != 0 or not out.is_file():
        return {"error": f"exit {done.returncode}: {done.stderr[-3000:]}"}
    return json.loads(out.read_text())


def measure(reps: int, steps: int, workdir: Path) -> tuple[dict[int, list[Arm]], int | None]:
    arms = {n: [Arm(n, shape) for shape in shapes] for n, shapes in ARMS.items()}
    parameters = None
    for n, group in arms.items():
        for rep in range(reps):
            order = group[rep % len(group):] + group[: rep % len(group)]  # rotate, so no arm always runs first
            results: dict[tuple[int, int, int], dict] = {}
            for arm in order:
                started = time.perf_counter()
                result = run_worker(n, arm.shape, steps=steps, seed=rep, workdir=workdir)
                results[arm.shape] = result
                if "error" in result:
                    arm.errors.append(result["error"])
                    progress(f"  {n} proc {_mesh(arm.shape)} rep {rep}: FAILED ({time.perf_counter() - started:.0f} s)"
                             f"\n{result['error']}")
                    continue
                arm.name = result["plan"]
                arm.median_s.append(result["median_step_s"])
                arm.strategy_est = result["strategy_est_comm_s"]
                parameters = result["parameters"]
                progress(f"  {n} proc {_mesh(arm.shape)} {result['plan']:<8} rep {rep}: median step "
                         f"{result['median_step_s'] * 1e3:.1f} ms ({time.perf_counter() - started:.0f} s)")
            base = results[group[0].shape]
            for arm in group:
                if "error" not in base and "error" not in results[arm.shape]:
                    arm.ratio.append(results[arm.shape]["median_step_s"] / base["median_step_s"])
    return arms, parameters


def _order(values: dict[str, float]) -> list[str]:
    return sorted(values, key=lambda k: values[k])


def _spearman(a: list[str], b: list[str]) -> float:
    n = len(a)
    if n < 2:
        return float("nan")
    rank_b = {k: i for i, k in enumerate(b)}
    d2 = sum((i - rank_b[k]) ** 2 for i, k in enumerate(a))
    return 1 - 6 * d2 / (n * (n * n - 1))


def measured_report(arms: dict[int, list[Arm]], parameters: int | None, log: Transcript) -> list[bool | None]:
    """The measured table, the ranking comparison per process count; returns whether each ranking matched."""
    rows, matches, details = [], [], []
    for n, group in arms.items():
        cluster = single_node(cpu_node_topology(n))
        estimates = {arm.shape: estimate_plan(cluster, demo_model_size(parameters or 0, arm.shape[2]),
                                              arm.shape).comm_seconds for arm in group}
        auto = plan_parallelism(cluster, demo_model_size(parameters or 0, 1)).chosen
        base_est = estimates[group[0].shape]
        base_ms = statistics.median(group[0].median_s) * 1e3 if group[0].median_s else float("nan")
        for arm in group:
            if not arm.ratio:
                rows.append([n, arm.name or _mesh(arm.shape), _mesh(arm.shape), "failed", "-", "-", "-", "-",
                             _seconds(estimates[arm.shape]), "-", "-"])
                continue
            ms = statistics.median(arm.median_s) * 1e3
            ratio = statistics.median(arm.ratio)
            rows.append([
                n, arm.name, _mesh(arm.shape), f"{ms:.1f}",
                f"{min(arm.median_s) * 1e3:.0f}..{max(arm.median_s) * 1e3:.0f}",
                f"{ratio:.2f}", f"{min(arm.ratio):.2f}..{max(arm.ratio):.2f}",
                f"{ms - base_ms:+.1f}", _seconds(estimates[arm.shape]),
                f"{(estimates[arm.shape] - base_est) * 1e3:+.1f}", f"{estimates[arm.shape] / base_est:.2f}",
            ])
        complete = all(arm.ratio for arm in group)
        if not complete:
            matches.append(None)
            details.append(f"{n} processes: some arms failed, no ranking")
            continue
        measured = _order({arm.name: statistics.median(arm.ratio) for arm in group})
        planned = _order({arm.name: estimates[arm.shape] for arm in group})
        matches.append(measured == planned)
        rho = _spearman(measured, planned)
        details.append(f"{n} processes: planner {' < '.join(planned)}; measured {' < '.join(measured)}"
                       f" -> {'same order' if measured == planned else 'different order'}"
                       + (f" (Spearman rho {rho:.2f})" if len(group) > 2 else "")
                       + f"; plan='auto' would choose {auto.name}")
        mismatched = [arm for arm in group if arm.strategy_est is not None
                      and abs(arm.strategy_est - estimates[arm.shape]) > 1e-9 + 1e-6 * estimates[arm.shape]]
        for arm in mismatched:
            details.append(f"  note: the strategy's own estimate for {arm.name} was {_seconds(arm.strategy_est)}")
    log(format_table(["procs", "plan", "RxSxT", "step ms", "range", "x DDP", "x DDP range", "+ms vs DDP",
                      "est comm", "est +ms", "est x DDP"], rows))
    log()
    for line in verdict(None if None in matches else all(matches),
                        "the cost model ranks the plans in the order their step times really run (CPU, gloo)",
                        details):
        log(line)
    return matches


# -------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", default=str(TOPOLOGY_DIR), help="folder of nvidia-smi topo -m files")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per measured arm (default 5)")
    parser.add_argument("--steps", type=int, default=30, help=f"timed steps per run, after {WARMUP} warm-up steps")
    parser.add_argument("--skip-measured", action="store_true", help="part 1 only")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 repetition of 8 steps, nothing written")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/parallel_plan.txt; "
                        "with --quick or --skip-measured nothing is written unless --out is given)")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.steps = 1, 8
    if args.reps < 1 or args.steps < 1:
        parser.error("--reps and --steps must be >= 1")
    files = sorted(Path(args.topologies).glob("*.txt"))
    unknown = [f.name for f in files if f.name not in GPU_MEMORY_GIB]
    if not files or unknown:
        parser.error(f"no topology files in {args.topologies}" if not files
                     else f"no GPU memory known for {unknown}: add them to GPU_MEMORY_GIB")
    default_out = None if (args.quick or args.skip_measured) else RESULTS_DIR / "parallel_plan.txt"
    out = Path(args.out) if args.out else default_out

    started = time.perf_counter()
    log = Transcript()
    progress(f"part 1: planning {len(files)} topologies x {len(NODE_COUNTS)} node counts x {len(SIZES)} sizes")
    rows, warnings = planner_table(files)
    arms: dict[int, list[Arm]] = {}
    parameters = None
    if not args.skip_measured:
        progress(f"part 2: {args.reps} repetition(s) of {sum(len(v) for v in ARMS.values())} arms, {args.steps} "
                 "timed steps each")
        with tempfile.TemporaryDirectory() as workdir:
            arms, parameters = measure(args.reps, args.steps, Path(workdir))
    elapsed = time.perf_counter() - started

    command = " ".join(["python benchmarks/parallel_plan.py", *sys.argv[1:]])
    log(f"$ {command}")
    log(f"{code_version()}; torch {torch.__version__}, lightning {pl.__version__}; {os.cpu_count()} CPU cores; "
        f"whole run {elapsed / 60:.1f} min")
    log()
    log("Part 1: the planner on real `nvidia-smi topo -m` files (ModelSize defaults: fp32 weights + grads, Adam "
        "8 B/param, no activations; 2 nodes = two copies joined by InfiniBand at "
        f"{Bandwidths().net:g} GB/s per GPU; memory_fraction 0.9)")
    log()
    log(format_table(PLANNER_HEADERS, [row.cells() for row in rows]))
    log()
    log("x DDP / x FSDP: the chosen plan's estimated communication over that of DDP (world x 1 x 1) / FSDP "
        "(1 x world x 1) on the same GPUs; 'does not fit' = the planner rules that mesh out for memory. "
        "NVLink islands: largest all-NVLink cliques of one node (none = no NVLink).")
    if warnings:
        log("Planner warnings:")
        for name, ws in warnings.items():
            for w in ws:
                log(f"  {name}: {w}")
    matches: list[bool | None] = []
    if arms:
        log()
        n_params = f"{parameters / 1e6:.2f}M" if parameters else "?"
        log(f"Part 2: measured on CPU, gloo, 1 torch thread per process; demo GPT {MODEL_ARGS['n_layer']} blocks x "
            f"width {MODEL_ARGS['n_embd']} ({n_params} parameters, fp32), {MODEL_ARGS['batch']} windows of "
            f"{MODEL_ARGS['seq_len']} characters per rank and step (a TP group of T ranks reads T x as many: the "
            f"same global batch); {args.reps} repetition(s) x {args.steps} timed steps after {WARMUP} warm-up")
        log()
        matches = measured_report(arms, parameters, log)
        log()
        log("step ms = median over repetitions of rank 0's median step time (range = min..max over repetitions); "
            "x DDP = median over repetitions of the step-time ratio to the DDP run of the same repetition; "
            "+ms vs DDP = median step ms minus DDP's. est comm / est +ms / est x DDP = the planner's communication "
            "estimate for the same mesh on cpu_node_topology(n) with Bandwidths() defaults (gloo 2 GB/s, 30 us per "
            "hop). On one machine every gloo link is the same, so this checks traffic and latency accounting, "
            "not topology awareness; 4 processes share 2 cores.")
    log()
    log("What the numbers say:")
    for line in summary(rows, arms, matches):
        log(f"- {line}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(log.lines) + "\n")
        print(f"\nwritten to {out}")


def summary(rows: list[PlannerRow], arms: dict[int, list[Arm]], matches: list[bool | None]) -> list[str]:
    """A few sentences drawn from the tables (counts and ranges, not adjectives)."""
    lines = []
    fitting = [r for r in rows if r.chosen_fits]
    counts = {kind: sum(r.chosen.split(" ")[0] == kind for r in fitting) for kind in ("DDP", "FSDP", "HSDP")}
    lines.append(f"{len(rows)} planner rows: DDP chosen in {counts['DDP']}, FSDP in {counts['FSDP']}, HSDP in "
                 f"{counts['HSDP']}; no plan fits in {len(rows) - len(fitting)} (mostly 70B: 1.1 TB of fp32 state + "
                 "Adam needs more than 8-16 GPUs of <= 80 GiB).")
    whole = {r.gpus: "{" + ",".join(map(str, range(r.gpus))) + "}" for r in rows}  # one island of every GPU
    clique = [r for r in fitting if r.nodes == 1 and r.ddp[1] and r.islands == whole[r.gpus]]
    if clique:
        ddp = [r for r in clique if r.chosen == "DDP"]
        tops = sorted({r.topology for r in clique})
        lines.append(f"One NVLink clique (NVSwitch boards {', '.join(tops)}, 1 node), model fits replicated: DDP is "
                     f"chosen in {len(ddp)} of {len(clique)} rows. All links are equal, so nothing hybrid can save "
                     "traffic: plain DDP is already optimal there.")
    uneven = [r for r in fitting if r.ddp[1] and r.chosen != "DDP"]
    if uneven:
        where = sorted({f"{r.topology} {r.nodes}x{r.gpus}" for r in uneven})
        ratios = [r.comm / r.ddp[0] for r in uneven]
        lines.append(f"Uneven links, model fits replicated: a hybrid plan is chosen over DDP in {len(uneven)} rows "
                     f"({', '.join(where)}) at {min(ratios):.2f}-{max(ratios):.2f}x DDP's estimated communication: "
                     "2 nodes (the NVLink/PCIe domain shards, InfiniBand only all-reduces a 1/S shard), PCIe switch "
                     "groups joined by SYS (16), NVLink pairs joined by PCIe (21).")
    other = [r for r in fitting if r.chosen == "DDP" and r not in clique]
    if other:
        where = sorted({f"{r.topology} {r.nodes}x{r.gpus}" for r in other})
        lines.append(f"DDP also stays the choice in {len(other)} more rows ({', '.join(where)}): there the best ring "
                     "through every GPU has no slower tier for a hybrid to keep traffic off (the V100 hybrid "
                     "cube-mesh has an all-NVLink ring through its 8 GPUs; PCIe-only boxes and the flattened VM have "
                     "one tier).")
    pressure = [r for r in fitting if not r.ddp[1]]
    if pressure:
        hsdp = [r for r in pressure if r.chosen.startswith("HSDP")]
        text = (f"{len(hsdp)} of them choose HSDP at {min(r.comm / r.fsdp[0] for r in hsdp):.2f}-"
                f"{max(r.comm / r.fsdp[0] for r in hsdp):.2f}x FSDP's communication (it shards only as far as "
                "memory needs and all-reduces the rest), the others FSDP" if hsdp else "all choose FSDP")
        lines.append(f"Memory pressure (DDP does not fit) in {len(pressure)} rows that still fit sharded: {text}.")
    if arms:
        for (n, group), match in zip(arms.items(), matches, strict=True):
            ratios = ", ".join(f"{arm.name} x{statistics.median(arm.ratio):.2f}" for arm in group[1:] if arm.ratio)
            state = {True: "matches", False: "does not match", None: "could not be compared with"}[match]
            lines.append(f"CPU, {n} processes: step time vs DDP {ratios}; the planner's order {state} the measured "
                         "one.")
        lines.append("The CPU check covers the cost model's bytes-and-collectives accounting only: all gloo links are "
                     "equal, so it says nothing about topology awareness, and the estimate (communication only, "
                     "nothing overlapped) is not a step-time prediction.")
    return lines

if __name__ == "__main__":
    main()
