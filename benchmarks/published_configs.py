"""Published, measured training configurations of large models on real clusters, each with its source.

What is encoded
---------------
:data:`PUBLISHED` holds one :class:`PublishedConfig` per row of a published performance table: the cluster (GPU model,
GPU count, GPUs per node, intra- and inter-node links as the source describes them), the model's shape, the parallel
layout as published (data-parallel replicate / shard degree, tensor, pipeline and context parallel degrees, pipeline
schedule, micro and global batch, activation checkpointing, precision) and the measured figure(s) exactly as the
source gives them (tokens per second per GPU, MFU as a fraction, achieved TFLOP/s per GPU; ``None`` where the source
gives none). :data:`PUBLISHED_BANDWIDTHS` holds a few measured or maintainer-stated collective / link bandwidths of
8-GPU H100 and A100 nodes and of one large A100 cluster, as a separate small table.

The planner's calibration wants several layouts of the *same* model on the *same* cluster (so that a rank correlation
between predicted and measured throughput can be computed); :func:`groups` returns the entries keyed by
``(cluster, gpus, model)``. The sources, in order:

- torchtitan ``benchmarks/llama3_h100_202412_torchtitan.md`` (Dec 2024; same tables as ``docs/performance.md`` at
  d4c86e3): Llama 3.1 8B / 70B / 405B on 8 to 512 H100s, FSDP, CP, TP, PP, async TP, Float8.
- torchtitan ``benchmarks/asyncTP_llama3_h100_2025-06_torchtitan.md``: vanilla vs async TP x bf16 / float8
  tensorwise / float8 rowwise, Llama 3.1 70B on 256 H100s and 8B on 64 H100s.
- torchtitan ``benchmarks/llama3-8b_h200_202506_trainy-whitefiber.md``: Llama 3.1 8B FSDP on 32 and 64 H200s.
- torchtitan ``docs/performance.md`` as of Aug 2024 (405B on 128 H100s) and Apr 2024 (Llama 2 / 3 on 64 A100s).
- Megatron-LM README (Megatron-Core r0.8.0 weak scaling on H100, 1.7B to 462B) and, from the 2021 README / paper,
  Narayanan et al. 2021 (SC21, arXiv:2104.04473) Table 1 (weak scaling 1.7B to 1T on Selene) and Table 2 (PTD-P vs
  ZeRO-3 for 175B and 530B GPT at equal GPU counts).
- The Llama 3 Herd of Models paper (arXiv:2407.21783) Table 4: 405B pre-training on 8,192 / 16,384 H100s.
- llm-foundry ``scripts/train/benchmarking/README.md``: MPT-7B and MPT-13B, FSDP on 8 H100s, several sequence
  lengths / micro batches each.
- Megatron-Bridge ``docs/performance-summary-archive.md`` (NeMo 25.11 container, DGX-H100 rows).

Conventions
-----------
- ``dp_shard`` is the FSDP / ZeRO-3 (or Megatron-FSDP) sharding degree; ``dp_replicate`` the plain (DDP) replica
  count. A ZeRO stage other than 3, or a distributed optimizer, goes in ``notes``. A degree the source does not give
  is ``None``; one computed from others (e.g. DP = GPUs / (TP * PP)) is given and the derivation is said in
  ``notes``.
- ``global_batch`` and ``micro_batch`` are in sequences. ``mfu`` is a fraction (0.43 for "43%"), computed by the
  source with its own peak-FLOPs convention (see notes). ``parameters`` is the parameter count in billions, as the
  source states it (nominal, e.g. 8.0, unless the source gives an exact count).
- Model-shape fields not in the source come from the model's official/reference config, said in ``notes``.
- Numbers are copied as published; anything ambiguous in the source is said in ``notes``. Never estimate a figure.

How to add an entry
-------------------
Read the source text itself (a GitHub file at a fixed commit, a paper's table), then append a
``PublishedConfig(...)`` to the list of its source below (or a new list, added to :data:`PUBLISHED`), filling every
field; give ``url`` pinned to the commit read, put the version/date in ``source``, and say in ``notes`` how the
measured figure was taken (which step, averaged or not, which features were on). ``PublishedConfig.__post_init__``
checks that at least one measured figure is given, that an MFU is a fraction and that fully known parallel degrees
multiply to the GPU count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "PUBLISHED",
    "PUBLISHED_BANDWIDTHS",
    "PublishedBandwidth",
    "PublishedConfig",
    "groups",
]


@dataclass(frozen=True)
class PublishedConfig:
    """One measured training configuration, as published."""

    # Where it comes from.
    source: str
    url: str
    # The cluster.
    cluster: str
    gpus: int
    gpus_per_node: int | None
    intra_node: str | None
    inter_node: str | None
    # The model.
    model: str
    parameters: float | None
    layers: int | None
    hidden: int | None
    heads: int | None
    kv_heads: int | None
    ffn: int | None
    vocab: int | None
    seq_len: int | None
    # The layout, as published.
    dp_replicate: int | None
    dp_shard: int | None
    tp: int | None
    pp: int | None
    cp: int
    pp_schedule: str | None
    micro_batch: int | None
    global_batch: int | None
    activation_checkpointing: str | None
    precision: str | None
    # The measured figure(s).
    tokens_per_second_per_gpu: float | None
    mfu: float | None
    tflops_per_gpu: float | None
    notes: str

    def __post_init__(self) -> None:
        if self.tokens_per_second_per_gpu is None and self.mfu is None and self.tflops_per_gpu is None:
            raise ValueError(f"{self.source}: {self.model}: no measured figure")
        if self.mfu is not None and not 0.0 < self.mfu <= 1.0:
            raise ValueError(f"{self.source}: {self.model}: mfu {self.mfu} is not a fraction")
        if self.activation_checkpointing not in (None, "full", "selective", "none"):
            raise ValueError(f"{self.source}: activation_checkpointing {self.activation_checkpointing!r}")
        dims = (self.dp_replicate, self.dp_shard, self.tp, self.pp, self.cp)
        if all(d is not None for d in dims):
            product = 1
            for d in dims:
                product *= d  # type: ignore[operator]
            if product != self.gpus:
                raise ValueError(f"{self.source}: {self.model}: degrees {dims} multiply to {product}, not {self.gpus}")

    @property
    def key(self) -> tuple[str, int, str]:
        """``(cluster, gpus, model)``: the grouping :func:`groups` uses."""
        return (self.cluster, self.gpus, self.model)


@dataclass(frozen=True)
class PublishedBandwidth:
    """One measured (or maintainer-stated) communication bandwidth, as published."""

    source: str
    url: str
    cluster: str
    gpus: int
    gpus_per_node: int | None
    scope: str  # "intra_node" or "inter_node" (or "cluster" for a whole-job effective figure)
    operation: str  # e.g. "all_reduce (nccl-tests all_reduce_perf)"
    metric: str  # "busbw", "algbw", "p2p unidirectional", "effective bisection", ...
    bandwidth_gb_s: float  # GB/s
    notes: str


# --------------------------------------------------------------------------------------------------------------------
# Shared model shapes (with where they come from).

_LLAMA31_8B = {"model": "Llama 3.1 8B", "parameters": 8.0, "layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 8,
               "ffn": 14336, "vocab": 128256}
_LLAMA31_70B = {"model": "Llama 3.1 70B", "parameters": 70.0, "layers": 80, "hidden": 8192, "heads": 64, "kv_heads": 8,
                "ffn": 28672, "vocab": 128256}
_LLAMA31_405B = {"model": "Llama 3.1 405B", "parameters": 405.0, "layers": 126, "hidden": 16384, "heads": 128,
                 "kv_heads": 8, "ffn": 53248, "vocab": 128256}
_TT_SHAPE_NOTE = (
    "Model shape from torchtitan's llama3 ModelArgs (dim/n_layers/n_heads/n_kv_heads, ffn from ffn_dim_multiplier and "
    "multiple_of: 14336 / 28672 / 53248), equal to the official Llama 3.1 config; vocab 128256 = 128,000 base + 256 "
    "reserved special tokens (torchtitan tiktoken.py). "
)

# --------------------------------------------------------------------------------------------------------------------
# torchtitan, Dec 2024 tables (benchmarks/llama3_h100_202412_torchtitan.md).

_TT_2412_SOURCE = (
    "torchtitan benchmarks/llama3_h100_202412_torchtitan.md (PyTorch team, end of 2024; torch 1963fc8 2024/12/23, "
    "torchao eab345c, torchtitan 9dec370 2024/12/26); identical tables in docs/performance.md at d4c86e3 (2025-01-30)"
)
_TT_2412_URL = (
    "https://github.com/pytorch/torchtitan/blob/820504e20d1149fbf0b98c567af24c4b0433b22d/benchmarks/"
    "llama3_h100_202412_torchtitan.md"
)
_TT_H100 = "H100 SXM 96GB HBM2e (500W, Meta Grand Teton)"
_TT_H100_LINKS = {
    "gpus_per_node": 8,
    "intra_node": "NVLink, 8 GPUs fully connected",
    "inter_node": "backend RDMA network, 400 Gb/s per GPU",
}
_TT_2412_NOTE = (
    "TPS/GPU read at the (arbitrarily chosen) 90th iteration (logged every 10 iterations); memory is the max over all "
    "GPUs. Source does not report MFU (Float8 makes it ill-defined); it says 1D 8B on 8 or 128 GPUs without Float8 "
    "reaches 33%-39% MFU (with/without torch.compile), computed against SXM H100 peak although these are lower-TDP "
    "HBM2e parts. Float8 = torchao float8 on nn.Linear (attention stays bf16). "
)


def _tt_2412(**kw: object) -> PublishedConfig:
    base: dict[str, object] = {
        "source": _TT_2412_SOURCE,
        "url": _TT_2412_URL,
        "cluster": _TT_H100,
        **_TT_H100_LINKS,
        "dp_replicate": 1,
        "cp": 1,
        "pp_schedule": None,
        "micro_batch": None,
        "mfu": None,
        "tflops_per_gpu": None,
    }
    base.update(kw)
    return PublishedConfig(**base)  # type: ignore[arg-type]


_SEQ_8K_NOTE = (
    "seq_len not stated in the table: 8192 is the llama3 train config default at the torchtitan commit used (9dec370). "
)

TORCHTITAN_2412: tuple[PublishedConfig, ...] = (
    # Table 1: 1D FSDP, 8B, 8 GPUs, local batch 2, global 16, selective AC.
    _tt_2412(**_LLAMA31_8B, gpus=8, seq_len=8192, dp_shard=8, tp=1, pp=1, global_batch=16,
             activation_checkpointing="selective", precision="bf16", tokens_per_second_per_gpu=5762,
             notes="Table 1 row 'FSDP' (eager). Local batch 2. Memory 82.4 GiB. " + _SEQ_8K_NOTE
             + "Precision bf16 is torchtitan's FSDP2 default mixed precision, not stated in the table. "
             + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_8B, gpus=8, seq_len=8192, dp_shard=8, tp=1, pp=1, global_batch=16,
             activation_checkpointing="selective", precision="bf16", tokens_per_second_per_gpu=6667,
             notes="Table 1 row 'FSDP + torch.compile'. Local batch 2. Memory 77.0 GiB. " + _SEQ_8K_NOTE
             + "Precision bf16 is torchtitan's FSDP2 default mixed precision, not stated in the table. "
             + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_8B, gpus=8, seq_len=8192, dp_shard=8, tp=1, pp=1, global_batch=16,
             activation_checkpointing="selective", precision="fp8", tokens_per_second_per_gpu=8532,
             notes="Table 1 row 'FSDP + torch.compile + Float8'. Local batch 2. Memory 76.8 GiB. " + _SEQ_8K_NOTE
             + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    # Table 2: FSDP + CP + torch.compile + Float8, 8B, 8 GPUs, local batch 1, full AC.
    _tt_2412(**_LLAMA31_8B, gpus=8, seq_len=32768, dp_shard=8, tp=1, pp=1, cp=1, global_batch=8,
             activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=3890,
             notes="Table 2 row 'FSDP 8, CP 1', seq 32768; torch.compile + Float8. Local batch 1; global_batch "
             "derived = local batch x FSDP degree. Memory 83.9 GiB. " + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_8B, gpus=8, seq_len=65536, dp_shard=4, tp=1, pp=1, cp=2, global_batch=4,
             activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=2540,
             notes="Table 2 row 'FSDP 4, CP 2', seq 65536; torch.compile + Float8. Local batch 1; global_batch "
             "derived = local batch x FSDP degree. Memory 84.2 GiB. " + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_8B, gpus=8, seq_len=131072, dp_shard=2, tp=1, pp=1, cp=4, global_batch=2,
             activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=1071,
             notes="Table 2 row 'FSDP 2, CP 4', seq 131072; torch.compile + Float8. Local batch 1; global_batch "
             "derived = local batch x FSDP degree. Memory 84.0 GiB. " + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_8B, gpus=8, seq_len=262144, dp_shard=1, tp=1, pp=1, cp=8, global_batch=1,
             activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=548,
             notes="Table 2 row 'FSDP 1, CP 8', seq 262144; torch.compile + Float8. Local batch 1; global_batch "
             "derived = local batch x FSDP degree. Memory 84.5 GiB. " + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    # Table 3: 1D FSDP, 8B, 128 GPUs, local batch 2, global 256, selective AC.
    _tt_2412(**_LLAMA31_8B, gpus=128, seq_len=8192, dp_shard=128, tp=1, pp=1, global_batch=256,
             activation_checkpointing="selective", precision="bf16", tokens_per_second_per_gpu=5605,
             notes="Table 3 row 'FSDP' (eager). Local batch 2. Memory 67.0 GiB. " + _SEQ_8K_NOTE
             + "Precision bf16 is torchtitan's FSDP2 default mixed precision, not stated in the table. "
             + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_8B, gpus=128, seq_len=8192, dp_shard=128, tp=1, pp=1, global_batch=256,
             activation_checkpointing="selective", precision="bf16", tokens_per_second_per_gpu=6514,
             notes="Table 3 row 'FSDP + torch.compile'. Local batch 2. Memory 62.0 GiB. " + _SEQ_8K_NOTE
             + "Precision bf16 is torchtitan's FSDP2 default mixed precision, not stated in the table. "
             + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_8B, gpus=128, seq_len=8192, dp_shard=128, tp=1, pp=1, global_batch=256,
             activation_checkpointing="selective", precision="fp8", tokens_per_second_per_gpu=8380,
             notes="Table 3 row 'FSDP + torch.compile + Float8'. Local batch 2. Memory 61.8 GiB. " + _SEQ_8K_NOTE
             + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    # Table 4: 2D FSDP + TP + torch.compile + Float8, 70B, 256 GPUs (FSDP 32, TP 8), local 16, global 512, full AC.
    _tt_2412(**_LLAMA31_70B, gpus=256, seq_len=8192, dp_shard=32, tp=8, pp=1, global_batch=512,
             activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=829,
             notes="Table 4 row '2D' (FSDP 32 x TP 8, torch.compile + Float8, no async TP). Local batch 16. "
             "Memory 71.9 GiB. " + _SEQ_8K_NOTE + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_70B, gpus=256, seq_len=8192, dp_shard=32, tp=8, pp=1, global_batch=512,
             activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=876,
             notes="Table 4 row '2D + AsyncTP' (FSDP 32 x TP 8, torch.compile + Float8 + async TP). Local batch 16. "
             "Memory 67.6 GiB. " + _SEQ_8K_NOTE + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    # Table 5: 3D FSDP 8 + TP 8 + PP 8, 405B, 512 GPUs, local 32, global 256, full AC; compile + Float8 + AsyncTP.
    _tt_2412(**_LLAMA31_405B, gpus=512, seq_len=8192, dp_shard=8, tp=8, pp=8, pp_schedule="1F1B", global_batch=256,
             activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=100,
             notes="Table 5 row '1F1B'; torch.compile + Float8 + AsyncTP. Local batch 32 (per DP rank; microbatch "
             "count not stated). Memory 82.5 GiB (max over PP ranks). " + _SEQ_8K_NOTE + _TT_2412_NOTE
             + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_405B, gpus=512, seq_len=8192, dp_shard=8, tp=8, pp=8, pp_schedule="Interleaved 1F1B",
             global_batch=256, activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=128,
             notes="Table 5 row 'Interleaved 1F1B'; torch.compile + Float8 + AsyncTP. Local batch 32 (per DP rank; "
             "microbatch count and virtual stages not stated). Memory 72.7 GiB (max over PP ranks). " + _SEQ_8K_NOTE
             + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    # Table 6: 4D FSDP + TP 8 + PP 8 + CP, 405B, 512 GPUs, local batch 8, full AC, compile + Float8 + AsyncTP + 1F1B.
    _tt_2412(**_LLAMA31_405B, gpus=512, seq_len=32768, dp_shard=8, tp=8, pp=8, cp=1, pp_schedule="1F1B",
             global_batch=64, activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=76,
             notes="Table 6 row 'FSDP 8, CP 1', seq 32768; torch.compile + Float8 + AsyncTP + 1F1B. Local batch 8; "
             "global_batch derived = local batch x FSDP degree. Memory 75.3 GiB. " + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_405B, gpus=512, seq_len=65536, dp_shard=4, tp=8, pp=8, cp=2, pp_schedule="1F1B",
             global_batch=32, activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=47,
             notes="Table 6 row 'FSDP 4, CP 2', seq 65536; torch.compile + Float8 + AsyncTP + 1F1B. Local batch 8; "
             "global_batch derived = local batch x FSDP degree. Memory 75.9 GiB. " + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_405B, gpus=512, seq_len=131072, dp_shard=2, tp=8, pp=8, cp=4, pp_schedule="1F1B",
             global_batch=16, activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=31,
             notes="Table 6 row 'FSDP 2, CP 4', seq 131072; torch.compile + Float8 + AsyncTP + 1F1B. Local batch 8; "
             "global_batch derived = local batch x FSDP degree. Memory 77.1 GiB. " + _TT_2412_NOTE + _TT_SHAPE_NOTE),
    _tt_2412(**_LLAMA31_405B, gpus=512, seq_len=262144, dp_shard=1, tp=8, pp=8, cp=8, pp_schedule="1F1B",
             global_batch=8, activation_checkpointing="full", precision="fp8", tokens_per_second_per_gpu=16,
             notes="Table 6 row 'FSDP 1, CP 8', seq 262144; torch.compile + Float8 + AsyncTP + 1F1B. Local batch 8; "
             "global_batch derived = local batch x FSDP degree. Memory 84.9 GiB. " + _TT_2412_NOTE + _TT_SHAPE_NOTE),
)

# --------------------------------------------------------------------------------------------------------------------
# torchtitan, June 2025 async TP benchmarks (benchmarks/asyncTP_llama3_h100_2025-06_torchtitan.md).

_TT_ATP_SOURCE = (
    "torchtitan benchmarks/asyncTP_llama3_h100_2025-06_torchtitan.md (PyTorch team, June 2025; torch 38410cf9 "
    "2025/06/14, torchao 6243040, torchtitan 820504e)"
)
_TT_ATP_URL = (
    "https://github.com/pytorch/torchtitan/blob/2887250bbd9103d0bc997ea2efb3a525b5e5dbc0/benchmarks/"
    "asyncTP_llama3_h100_2025-06_torchtitan.md"
)
_TT_ATP_NOTE = (
    "Column header says 'tokens/sec' (not explicitly per GPU); read as torchtitan's per-GPU TPS, consistent with the "
    "Dec 2024 table (829 TPS/GPU for the same 70B layout). seq_len not stated (llama3 configs default 8192). "
    "Source notes the low vanilla-TP float8 rowwise baseline is being addressed (torchtitan GitHub thread 1207). "
    "Software differs from the Dec 2024 table (same 70B layout, Float8, vanilla / async TP: 829 / 876 there). "
)


def _tt_atp(**kw: object) -> PublishedConfig:
    base: dict[str, object] = {
        "source": _TT_ATP_SOURCE,
        "url": _TT_ATP_URL,
        "cluster": _TT_H100,
        **_TT_H100_LINKS,
        "seq_len": 8192,
        "dp_replicate": 1,
        "pp": 1,
        "cp": 1,
        "pp_schedule": None,
        "micro_batch": None,
        "mfu": None,
        "tflops_per_gpu": None,
    }
    base.update(kw)
    return PublishedConfig(**base)  # type: ignore[arg-type]


def _atp_70b(tps: float, precision: str, what: str) -> PublishedConfig:
    return _tt_atp(**_LLAMA31_70B, gpus=256, dp_shard=32, tp=8, global_batch=512, activation_checkpointing="full",
                   precision=precision, tokens_per_second_per_gpu=tps,
                   notes=f"70B table: FSDP=32, TP=8, torch.compile, full AC, local batch size 16 (global_batch derived "
                   f"16 x 32); {what}. " + _TT_ATP_NOTE + _TT_SHAPE_NOTE)


def _atp_8b(tps: float, precision: str, what: str) -> PublishedConfig:
    return _tt_atp(**_LLAMA31_8B, gpus=64, dp_shard=8, tp=8, global_batch=96, activation_checkpointing="selective",
                   precision=precision, tokens_per_second_per_gpu=tps,
                   notes=f"8B table: FSDP=8, TP=8, torch.compile, per-op SAC, local batch size 12 (global_batch "
                   f"derived 12 x 8); {what}. " + _TT_ATP_NOTE + _TT_SHAPE_NOTE)


TORCHTITAN_ASYNC_TP_2506: tuple[PublishedConfig, ...] = (
    _atp_70b(597.3, "bf16", "quantization None (bfloat16), vanilla TP"),
    _atp_70b(652.4, "bf16", "quantization None (bfloat16), async TP (speedup 1.09)"),
    _atp_70b(809.8, "fp8", "float8 tensorwise, vanilla TP"),
    _atp_70b(942.4, "fp8", "float8 tensorwise, async TP (speedup 1.16)"),
    _atp_70b(599.6, "fp8", "float8 rowwise, vanilla TP"),
    _atp_70b(624.8, "fp8", "float8 rowwise, async TP (speedup 1.04)"),
    _atp_8b(4378, "bf16", "quantization None (bfloat16), vanilla TP"),
    _atp_8b(4809.4, "bf16", "quantization None (bfloat16), async TP (speedup 1.10)"),
    _atp_8b(5078.1, "fp8", "float8 tensorwise, vanilla TP"),
    _atp_8b(5570.1, "fp8", "float8 tensorwise, async TP (speedup 1.10)"),
    _atp_8b(3708.5, "fp8", "float8 rowwise, vanilla TP"),
    _atp_8b(3914.9, "fp8", "float8 rowwise, async TP (speedup 1.06)"),
)

# --------------------------------------------------------------------------------------------------------------------
# torchtitan community benchmark: Trainy on WhiteFiber H200s, June 2025.

_TRAINY_SOURCE = (
    "torchtitan benchmarks/llama3-8b_h200_202506_trainy-whitefiber.md (Trainy team on WhiteFiber, June 2025; torch "
    "2.8.0a0+5228986c39 (NGC 25.05), torchao 0afa4c1, torchtitan e7c0cae); numbers unchanged through 4a61bd8 (2026)"
)
_TRAINY_URL = (
    "https://github.com/pytorch/torchtitan/blob/cbccb387871a5e1f522c1e222c51ab88b03c0392/benchmarks/"
    "llama3-8b_h200_202506_trainy-whitefiber.md"
)
_TRAINY_NOTE = (
    "Command: llama3_8b.toml + local_batch_size=2, torch.compile, float8 linear converter with FSDP float8 all-gather, "
    "precomputed float8 dynamic scale for FSDP and force_recompute_fp8_weight_in_bwd. TPS/GPU sampled at the 100th "
    "iteration. Layout, seq_len 8192 and selective (per-op) AC are the llama3_8b.toml defaults at e7c0cae "
    "(data_parallel_shard_degree=-1, i.e. FSDP over all GPUs); global_batch derived = 2 x GPUs. " + _TT_SHAPE_NOTE
)

TORCHTITAN_TRAINY_H200: tuple[PublishedConfig, ...] = tuple(
    PublishedConfig(
        source=_TRAINY_SOURCE, url=_TRAINY_URL, cluster="H200 (WhiteFiber)", gpus=gpus, gpus_per_node=8,
        intra_node="NVLink", inter_node="backend RDMA fabric, 400 Gb/s per GPU (Mellanox CX-7)", **_LLAMA31_8B,
        seq_len=8192, dp_replicate=1, dp_shard=gpus, tp=1, pp=1, cp=1, pp_schedule=None, micro_batch=None,
        global_batch=2 * gpus, activation_checkpointing="selective", precision="fp8",
        tokens_per_second_per_gpu=tps, mfu=None, tflops_per_gpu=None,
        notes=f"NUM_NODES={gpus // 8}; memory {mem} GiB. " + _TRAINY_NOTE,
    )
    for gpus, tps, mem in ((32, 10938, 47.96), (64, 10753, 46.97))
)

# --------------------------------------------------------------------------------------------------------------------
# torchtitan docs/performance.md, Aug 2024 (405B on 128 H100s) and Apr 2024 (64 A100s).

_TT_2408_SOURCE = "torchtitan docs/performance.md at 3faaa1a (2024-08-23, 'Fix the performance number for 405B')"
_TT_2408_URL = (
    "https://github.com/pytorch/torchtitan/blob/3faaa1a0dee68ce028400e3dafd1735d152cb4f8/docs/performance.md"
)
_TT_2408_NOTE = (
    "Llama 3.1 405B on 128 H100 (94GB) with 2D FSDP2 + TP: FSDP 16 ('number of FSDP ranks 16'), TP 8 = 128 / 16, "
    "matching tensor_parallel_degree = 8 in llama3_405b.toml at this commit; local batch 2, global 32; full AC. "
    "WPS is tokens/s per GPU (torchtitan divides by model-parallel size). MFU footnote: "
    "HBM2e lower-TDP SXM H100 (95GB), computed against SXM peak so lower than actual; for Float8 the MFU is against "
    "the bf16 peak and attention is not in Float8. The previous commit 9515a14 showed 118 / 37.1%, 177 / 27.77%, "
    "185 / 29.03%, corrected here. seq_len 8192 and torch.compile=true are the llama3_405b.toml values at this commit "
    "(not restated in the table; whether the 'None' row ran compiled is not stated). " + _TT_SHAPE_NOTE
)


def _tt_405b_128(tps: float, mfu: float, precision: str, what: str) -> PublishedConfig:
    return PublishedConfig(
        source=_TT_2408_SOURCE, url=_TT_2408_URL, cluster="H100 SXM 94GB HBM2e (lower TDP, Meta)", gpus=128,
        gpus_per_node=8, intra_node=None, inter_node=None, **_LLAMA31_405B, seq_len=8192, dp_replicate=1,
        dp_shard=16, tp=8, pp=1, cp=1, pp_schedule=None, micro_batch=None, global_batch=32,
        activation_checkpointing="full", precision=precision, tokens_per_second_per_gpu=tps, mfu=mfu,
        tflops_per_gpu=None, notes=f"Optimizations: {what}. " + _TT_2408_NOTE,
    )


TORCHTITAN_405B_128_2408: tuple[PublishedConfig, ...] = (
    _tt_405b_128(109, 0.290, "bf16", "None"),
    _tt_405b_128(177, 0.2346, "fp8", "Float8"),
    _tt_405b_128(185, 0.2452, "fp8", "Float8 + Async TP"),
)

_TT_2404_SOURCE = "torchtitan docs/performance.md at 157a12c (2024-04-24)"
_TT_2404_URL = (
    "https://github.com/pytorch/torchtitan/blob/157a12c562288b3bccb077003a97f18a4ca657aa/docs/performance.md"
)
_TT_A100 = "A100 80GB"
_TT_2404_NOTE = (
    "1D FSDP2 over all 64 A100 (80GB) GPUs; global batch = local batch x 64 (stated). WPS = tokens/s per GPU; MFU as "
    "computed by torchtitan train.py against the bf16 peak. Cluster interconnect not stated. Precision not stated "
    "(torchtitan's FSDP2 default: bf16 params, fp32 reduce). 'selective layer' / 'selective op' = layer-wise / op-wise "
    "selective AC. "
)
_LLAMA3_8B_A100 = {**_LLAMA31_8B, "model": "Llama 3 8B"}
_LLAMA3_70B_A100 = {**_LLAMA31_70B, "model": "Llama 3 70B"}
_LLAMA2_13B = {"model": "Llama 2 13B", "parameters": 13.0, "layers": 40, "hidden": 5120, "heads": 40, "kv_heads": 40,
               "ffn": 13824, "vocab": 32000}
_LLAMA2_70B = {"model": "Llama 2 70B", "parameters": 70.0, "layers": 80, "hidden": 8192, "heads": 64, "kv_heads": 8,
               "ffn": 28672, "vocab": 32000}
_LLAMA2_SHAPE_NOTE = (
    "Llama 2 shape from torchtitan's llama2_configs at this commit (13B: dim 5120, 40 layers, 40 heads, FFN 13824 via "
    "multiple_of 256; 70B: dim 8192, 80 layers, 64 heads, 8 KV heads, FFN 28672); vocab 32000 per the official Llama 2 "
    "tokenizer. seq_len 4096 per the doc ('default sequence length in Llama 2 is 4096'). "
)
_LLAMA3_A100_NOTE = (
    "Llama 3 (not 3.1) shape as in torchtitan llama3_configs at this commit; seq_len 8192 per the doc / train config. "
)


def _tt_a100(shape: dict[str, object], seq: int, local: int, ac: str, tps: float, mfu: float, what: str,
             shape_note: str) -> PublishedConfig:
    return PublishedConfig(
        source=_TT_2404_SOURCE, url=_TT_2404_URL, cluster=_TT_A100, gpus=64, gpus_per_node=None, intra_node=None,
        inter_node=None, **shape, seq_len=seq, dp_replicate=1, dp_shard=64, tp=1, pp=1, cp=1,  # type: ignore[arg-type]
        pp_schedule=None, micro_batch=None, global_batch=local * 64, activation_checkpointing=ac, precision="bf16",
        tokens_per_second_per_gpu=tps, mfu=mfu, tflops_per_gpu=None,
        notes=f"Row: batch size {local}, activation checkpointing '{what}'. " + _TT_2404_NOTE + shape_note,
    )


TORCHTITAN_A100_2404: tuple[PublishedConfig, ...] = (
    _tt_a100(_LLAMA3_8B_A100, 8192, 1, "selective", 2904, 0.568, "selective layer", _LLAMA3_A100_NOTE + _TT_SHAPE_NOTE),
    _tt_a100(_LLAMA3_8B_A100, 8192, 1, "selective", 2973, 0.582, "selective op", _LLAMA3_A100_NOTE + _TT_SHAPE_NOTE),
    _tt_a100(_LLAMA3_70B_A100, 8192, 1, "full", 331, 0.517, "full", _LLAMA3_A100_NOTE + _TT_SHAPE_NOTE),
    _tt_a100(_LLAMA2_13B, 4096, 2, "none", 2162, 0.611, "no", _LLAMA2_SHAPE_NOTE),
    _tt_a100(_LLAMA2_13B, 4096, 2, "selective", 1914, 0.541, "selective layer", _LLAMA2_SHAPE_NOTE),
    _tt_a100(_LLAMA2_13B, 4096, 2, "selective", 1904, 0.538, "selective op", _LLAMA2_SHAPE_NOTE),
    _tt_a100(_LLAMA2_70B, 4096, 1, "selective", 355, 0.508, "selective op (batch 2 OOMs with selective AC)",
             _LLAMA2_SHAPE_NOTE),
    _tt_a100(_LLAMA2_70B, 4096, 2, "full", 353, 0.505, "full", _LLAMA2_SHAPE_NOTE),
)

# --------------------------------------------------------------------------------------------------------------------
# Megatron-LM README (Megatron-Core r0.8.0 weak scaling on H100; table image added in f2e5db4, 2024-07-15).

_MLM_2407_SOURCE = (
    "Megatron-LM README.md 'Performance Benchmarking' table (images/model_table.png, Megatron-Core r0.8.0 per the "
    "weak-scaling figure; added 2024-07-15 in f2e5db4, still in README at d98e8a6)"
)
_MLM_2407_URL = "https://github.com/NVIDIA/Megatron-LM/blob/f2e5db402c44ae309aa6448bcb4ae87e8ae0f5f4/images/model_table.png"
_MLM_2407_NOTE = (
    "Vocab 131,072 and seq 4,096 for all models; DP overlap (--overlap-grad-reduce, --overlap-param-gather), TP "
    "comm overlap (--tp-comm-overlap) and PP overlap on. Throughput is end-to-end (data loading, optimizer, "
    "communication, logging). Batch size read as global batch in sequences. Cluster interconnect, GPUs per node, "
    "precision, AC, FFN width and KV heads are not stated (precision presumably bf16; --overlap-param-gather implies "
    "Megatron's distributed optimizer, i.e. ZeRO-1-like sharding of optimizer state across the 48 DP ranks). "
    "Also in the README: a strong-scaling plot for a 177B GPT (96 to 4,608 H100s, batch 1,152, MFU 47% -> 42%) given "
    "only as a figure, not encoded."
)


def _mlm_2407(params: float, name: str, heads: int, hidden: int, layers: int, tp: int, pp: int, gpus: int,
              batch: int, tflops: float, mfu: float) -> PublishedConfig:
    return PublishedConfig(
        source=_MLM_2407_SOURCE, url=_MLM_2407_URL, cluster="H100 (Megatron-Core r0.8.0 benchmark cluster)",
        gpus=gpus, gpus_per_node=None, intra_node=None, inter_node=None,
        model=f"Megatron GPT {name} (2024 weak scaling)", parameters=params, layers=layers, hidden=hidden,
        heads=heads, kv_heads=None, ffn=None, vocab=131072,
        seq_len=4096, dp_replicate=48, dp_shard=1, tp=tp, pp=pp, cp=1, pp_schedule=None, micro_batch=None,
        global_batch=batch, activation_checkpointing=None, precision=None, tokens_per_second_per_gpu=None, mfu=mfu,
        tflops_per_gpu=tflops, notes=_MLM_2407_NOTE,
    )


MEGATRON_README_2407: tuple[PublishedConfig, ...] = (
    _mlm_2407(1.7, "1.7B", 16, 2048, 24, 1, 1, 48, 192, 408.8, 0.41),
    _mlm_2407(7.1, "7.1B", 32, 4096, 30, 2, 1, 96, 192, 465.9, 0.47),
    _mlm_2407(16.0, "16B", 48, 6144, 32, 4, 1, 192, 192, 489.1, 0.49),
    _mlm_2407(32.0, "32B", 56, 7168, 48, 8, 1, 384, 192, 459.6, 0.46),
    _mlm_2407(70.0, "70B", 64, 8192, 84, 8, 2, 768, 384, 419.7, 0.42),
    _mlm_2407(119.0, "119B", 80, 10240, 92, 8, 4, 1536, 768, 420.5, 0.43),
    _mlm_2407(177.0, "177B", 96, 12288, 96, 8, 6, 2304, 1152, 432.8, 0.44),
    _mlm_2407(314.0, "314B", 128, 16384, 96, 8, 8, 3072, 1536, 474.4, 0.48),
    _mlm_2407(462.0, "462B", 144, 18432, 112, 8, 16, 6144, 3072, 459.9, 0.47),
)

# --------------------------------------------------------------------------------------------------------------------
# Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM" (SC21).

_PTDP_SOURCE = "Narayanan et al., SC21 / arXiv:2104.04473 (2021), 'Efficient Large-Scale Language Model Training on " \
    "GPU Clusters Using Megatron-LM'"
_PTDP_URL = "https://arxiv.org/abs/2104.04473"
_SELENE = "A100 SXM 80GB (NVIDIA Selene, DGX A100)"
_SELENE_LINKS = {
    "gpus_per_node": 8,
    "intra_node": "NVLink + NVSwitch",
    "inter_node": "8x Mellanox 200 Gb/s HDR InfiniBand HCAs per node (plus 2 for storage), 3-level fat tree",
}
_PTDP_NOTE = (
    "'Mixed precision' on Selene (fp16 vs bf16 not stated); peak 312 TFLOP/s per A100 (16-bit). "
    "Throughput is end-to-end (data loading, "
    "optimizer, communication, logging). Vocab 51,200, seq 2048 for all models. FLOPs counted with the paper's eq. "
    "(3), which assumes activation recomputation (the runs' AC is otherwise not restated per row). GPT models: MHA "
    "(kv_heads = heads) and FFN = 4h, as implied by the paper's parameter formula eq. (2). "
)


def _ptdp_t1(params: float, heads: int, hidden: int, layers: int, tp: int, pp: int, gpus: int, batch: int,
             tflops: float, pct: float) -> PublishedConfig:
    return PublishedConfig(
        source=_PTDP_SOURCE + ", Table 1 (weak scaling)", url=_PTDP_URL, cluster=_SELENE, gpus=gpus, **_SELENE_LINKS,
        model=f"Megatron GPT {params}B (2021 weak scaling)", parameters=params, layers=layers, hidden=hidden,
        heads=heads, kv_heads=heads, ffn=4 * hidden, vocab=51200, seq_len=2048, dp_replicate=gpus // (tp * pp),
        dp_shard=1, tp=tp, pp=pp, cp=1, pp_schedule="interleaved 1F1B" if pp > 1 else None, micro_batch=None,
        global_batch=batch, activation_checkpointing=None, precision="16-bit mixed", tokens_per_second_per_gpu=None,
        mfu=pct, tflops_per_gpu=tflops,
        notes="dp_replicate derived = GPUs / (t * p). 'Percentage of theoretical peak FLOP/s' is stored as mfu. "
        "Interleaved schedule with scatter/gather optimization used for all Table 1 runs (Section 5.1); microbatch "
        "size and number of virtual stages not given. The same numbers (with model-parallel size t*p) are in the "
        "Megatron-LM README image images/cases_april2021.png (added 50a4b5f, 2021-04-08). " + _PTDP_NOTE,
    )


MEGATRON_PAPER_TABLE1: tuple[PublishedConfig, ...] = (
    _ptdp_t1(1.7, 24, 2304, 24, 1, 1, 32, 512, 137, 0.44),
    _ptdp_t1(3.6, 32, 3072, 30, 2, 1, 64, 512, 138, 0.44),
    _ptdp_t1(7.5, 32, 4096, 36, 4, 1, 128, 512, 142, 0.46),
    _ptdp_t1(18.4, 48, 6144, 40, 8, 1, 256, 1024, 135, 0.43),
    _ptdp_t1(39.1, 64, 8192, 48, 8, 2, 512, 1536, 138, 0.44),
    _ptdp_t1(76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140, 0.45),
    _ptdp_t1(145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148, 0.47),
    _ptdp_t1(310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155, 0.50),
    _ptdp_t1(529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163, 0.52),
    _ptdp_t1(1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163, 0.52),
)

_GPT3_175B = {"model": "GPT-3 175B (174.6B)", "parameters": 174.6, "layers": 96, "hidden": 12288, "heads": 96,
              "kv_heads": 96, "ffn": 4 * 12288, "vocab": 51200}
_GPT_530B = {"model": "Megatron GPT 529.6B (530B)", "parameters": 529.6, "layers": 105, "hidden": 20480,
             "heads": 128, "kv_heads": 128, "ffn": 4 * 20480, "vocab": 51200}
_PTDP_T2_NOTE = (
    "Table 2: PTD parallelism vs ZeRO-3 (DeepSpeed, without model parallelism) at fixed global batch. ZeRO-3 rows: "
    "dp_shard = GPUs, model-parallel size 1. 'Training time for 300B tokens (days)' in notes. 175B shape from "
    "Section 5.3.2 (96 layers, 96 heads, hidden 12288); 530B = the Table 1 model. Pipeline schedule not stated for "
    "Table 2 (Table 1 runs used the interleaved schedule). "
)


def _ptdp_t2(shape: dict[str, object], scheme: str, gpus: int, batch: int, micro: int, tflops: float, days: int,
             extra: str = "") -> PublishedConfig:
    if scheme == "zero3":
        dims: dict[str, object] = {"dp_replicate": 1, "dp_shard": gpus, "tp": 1, "pp": 1}
        what = "ZeRO-3 without model parallelism"
    elif shape is _GPT_530B:
        dims = {"dp_replicate": gpus // 280, "dp_shard": 1, "tp": 8, "pp": 35}
        what = ("PTD-P, model-parallel size 280 (t=8, p=35 as in Table 1 for this model); dp_replicate derived = "
                "GPUs / 280")
    else:
        dims = {"dp_replicate": gpus // 96, "dp_shard": 1, "tp": None, "pp": None}
        what = ("PTD-P, model-parallel size 96 (the t x p split is not given in Table 2); dp_replicate derived = "
                "GPUs / 96")
    return PublishedConfig(
        source=_PTDP_SOURCE + ", Table 2 (PTD-P vs ZeRO-3)", url=_PTDP_URL, cluster=_SELENE, gpus=gpus,
        **_SELENE_LINKS, **shape, seq_len=2048, **dims, cp=1,  # type: ignore[arg-type]
        pp_schedule=None, micro_batch=micro, global_batch=batch,
        activation_checkpointing=None, precision="16-bit mixed", tokens_per_second_per_gpu=None, mfu=None,
        tflops_per_gpu=tflops,
        notes=f"{what}. Microbatch {micro}; estimated training time for 300B tokens {days} days. {extra}"
        + _PTDP_T2_NOTE + _PTDP_NOTE,
    )


MEGATRON_PAPER_TABLE2: tuple[PublishedConfig, ...] = (
    _ptdp_t2(_GPT3_175B, "zero3", 384, 1536, 4, 144, 90),
    _ptdp_t2(_GPT3_175B, "zero3", 768, 1536, 2, 88, 74),
    _ptdp_t2(_GPT3_175B, "zero3", 1536, 1536, 1, 44, 74),
    _ptdp_t2(_GPT_530B, "zero3", 640, 2560, 4, 138, 169,
             "Marked * in the paper: 530B did not fit on 560 GPUs with microbatch 4 under ZeRO-3, so 640 GPUs and "
             "global batch 2560 were used to give a throughput estimate. "),
    _ptdp_t2(_GPT_530B, "zero3", 1120, 2240, 2, 98, 137),
    _ptdp_t2(_GPT_530B, "zero3", 2240, 2240, 1, 48, 140),
    _ptdp_t2(_GPT3_175B, "ptdp", 384, 1536, 1, 153, 84),
    _ptdp_t2(_GPT3_175B, "ptdp", 768, 1536, 1, 149, 43),
    _ptdp_t2(_GPT3_175B, "ptdp", 1536, 1536, 1, 141, 23),
    _ptdp_t2(_GPT_530B, "ptdp", 560, 2240, 1, 171, 156),
    _ptdp_t2(_GPT_530B, "ptdp", 1120, 2240, 1, 167, 80),
    _ptdp_t2(_GPT_530B, "ptdp", 2240, 2240, 1, 159, 42),
)

# --------------------------------------------------------------------------------------------------------------------
# The Llama 3 Herd of Models (arXiv:2407.21783), Table 4.

_LLAMA3_PAPER_SOURCE = "Llama Team, 'The Llama 3 Herd of Models', arXiv:2407.21783 (2024), Section 3.3.2, Table 4"
_LLAMA3_PAPER_URL = "https://arxiv.org/abs/2407.21783"
_LLAMA3_PAPER_NOTE = (
    "405B pre-training stages; 16M tokens per batch in all rows; global_batch derived = DP x 'Batch size/DP'. DP is "
    "FSDP that shards optimizer states and gradients but does not reshard parameters after forward (ZeRO-2-like). "
    "Parallel order [TP, CP, PP, DP]; PP uses an interleaved schedule with a tunable number of consecutive "
    "micro-batches N, first/last stage one layer shorter; CP is all-gather based. 8K-sequence pre-training ran without "
    "activation checkpointing (Section 3.3.2). BF16 MFU per the paper (38-43%). Cluster: H100 80GB HBM3 at 700W, "
    "Grand Teton servers of 8 GPUs on NVLink; RoCE fabric (Arista 7800 / Minipack2), 400 Gbps between GPUs, 3-layer "
    "Clos: 16 GPUs per ToR rack, 3,072-GPU pods at full bisection, 1:7 oversubscribed above the pod. Shape from Table "
    "3 (vocab listed as 128,000; the released config has 128,256). "
)
_LLAMA3_405B_PAPER = {**_LLAMA31_405B, "model": "Llama 3 405B", "vocab": 128000}


_LLAMA3_DP_NOTE = (
    "DP of this long-context row: most transcriptions of Table 4 show 8 (8 x 16 x 16 x 8 = 16,384 GPUs and 8 x 16 x "
    "131,072 = 16M tokens per batch); one transcription seen shows 4, so 8 is used. AC for this row is not stated. "
)


def _llama3_paper(gpus: int, cp: int, dp: int, seq: int, per_dp: int, tflops: float, mfu: float,
                  ac: str | None, extra: str = "") -> PublishedConfig:
    return PublishedConfig(
        source=_LLAMA3_PAPER_SOURCE, url=_LLAMA3_PAPER_URL, cluster="H100 SXM 80GB HBM3 (700W, Meta Grand Teton)",
        gpus=gpus, gpus_per_node=8, intra_node="NVLink",
        inter_node="RoCE, 400 Gbps per GPU, 3-layer Clos (pods of 3,072 GPUs at full bisection, 1:7 above)",
        **_LLAMA3_405B_PAPER, seq_len=seq, dp_replicate=1, dp_shard=dp, tp=8, pp=16, cp=cp,  # type: ignore[arg-type]
        pp_schedule="interleaved (Llama 3 modified, tunable N)", micro_batch=None, global_batch=dp * per_dp,
        activation_checkpointing=ac, precision="bf16", tokens_per_second_per_gpu=None, mfu=mfu, tflops_per_gpu=tflops,
        notes=f"Row: {gpus:,} GPUs, TP 8, CP {cp}, PP 16, DP {dp}, seq {seq:,}, batch size/DP {per_dp}. {extra}"
        + _LLAMA3_PAPER_NOTE,
    )


LLAMA3_PAPER_TABLE4: tuple[PublishedConfig, ...] = (
    _llama3_paper(8192, 1, 64, 8192, 32, 430, 0.43, "none"),
    _llama3_paper(16384, 1, 128, 8192, 16, 400, 0.41, "none"),
    _llama3_paper(16384, 16, 8, 131072, 16, 380, 0.38, None, _LLAMA3_DP_NOTE),
)

# --------------------------------------------------------------------------------------------------------------------
# llm-foundry MPT training benchmarks (scripts/train/benchmarking/README.md, 'H100 80GB BF16' table).

_FOUNDRY_SOURCE = (
    "mosaicml/llm-foundry scripts/train/benchmarking/README.md, table 'H100 80GB BF16' (tables from 5e85bd6, "
    "2024-01-06; file last changed 4952183, 2024-04-22, unchanged at 8c8dd48)"
)
_FOUNDRY_URL = (
    "https://github.com/mosaicml/llm-foundry/blob/495218376830947dce625efabc4d86be7c47cc45/scripts/train/"
    "benchmarking/README.md"
)
_FOUNDRY_NOTE = (
    "MosaicML platform, 8x H100 80GB, Composer FSDP FULL_SHARD over the 8 GPUs, amp_bf16, flash attention, MP mode "
    "DEFAULT, no activation CPU offload; 'Activation Checkpointing True' = FSDP block-level (full) checkpointing. "
    "Throughput measured over a short run (sweep runs 12 steps); MFU = (3*flops_per_seq + 3*attn_flops_per_seq) * "
    "seq/s / (GPUs * available bf16 FLOPS), in the table as a percentage. parameters = the table's NumParams (varies "
    "with seq_len). Shape from the repo's scripts/train/yamls/pretrain/mpt-*.yaml (MHA, expansion_ratio 4, vocab "
    "50368, ALiBi). Interconnect not stated for the H100 tables. "
)


def _foundry(name: str, layers: int, hidden: int, heads: int, seq: int, mfu_pct: float, hfu_pct: float,
             tflop: float, micro: int, accum: int, batch: int, tps: float, ac: bool,
             num_params: int) -> PublishedConfig:
    return PublishedConfig(
        source=_FOUNDRY_SOURCE, url=_FOUNDRY_URL, cluster="H100 80GB (MosaicML platform)", gpus=8, gpus_per_node=8,
        intra_node=None, inter_node=None, model=name, parameters=num_params / 1e9, layers=layers, hidden=hidden,
        heads=heads, kv_heads=heads, ffn=4 * hidden, vocab=50368, seq_len=seq, dp_replicate=1, dp_shard=8, tp=1,
        pp=1, cp=1, pp_schedule=None, micro_batch=micro, global_batch=batch,
        activation_checkpointing="full" if ac else "none", precision="bf16", tokens_per_second_per_gpu=tps,
        mfu=round(mfu_pct / 100, 6), tflops_per_gpu=tflop,
        notes=f"Row: seq {seq}, MFU {mfu_pct}%, HFU {hfu_pct}%, Model TFLOP {tflop}, micro batch {micro}, grad accum "
        f"{accum}, global batch {batch}, NumParams {num_params}. " + _FOUNDRY_NOTE,
    )


LLM_FOUNDRY_H100: tuple[PublishedConfig, ...] = (
    _foundry("MPT-7B", 32, 4096, 32, 65536, 28.59, 38.13, 282, 1, 2, 16, 1956, True, 6918905856),
    _foundry("MPT-7B", 32, 4096, 32, 32768, 30.94, 41.25, 306, 2, 2, 32, 3318, True, 6784688128),
    _foundry("MPT-7B", 32, 4096, 32, 8192, 37.14, 49.52, 367, 8, 2, 128, 6935, True, 6684024832),
    _foundry("MPT-7B", 32, 4096, 32, 4096, 40.42, 53.9, 399, 16, 2, 256, 8611, True, 6667247616),
    _foundry("MPT-7B", 32, 4096, 32, 2048, 46.44, 46.44, 459, 6, 1, 48, 10643, False, 6658859008),
    _foundry("MPT-7B", 32, 4096, 32, 1024, 42.83, 57.11, 423, 64, 2, 1024, 10203, True, 6654664704),
    _foundry("MPT-13B", 40, 5120, 40, 32768, 31.68, 42.24, 313, 1, 3, 24, 1976, True, 13011240960),
    _foundry("MPT-13B", 40, 5120, 40, 16384, 35.55, 47.4, 351, 3, 3, 72, 2985, True, 12927354880),
    _foundry("MPT-13B", 40, 5120, 40, 4096, 41.6, 55.47, 411, 10, 3, 240, 4717, True, 12864440320),
    _foundry("MPT-13B", 40, 5120, 40, 2048, 39.79, 39.79, 393, 2, 1, 16, 4792, False, 12853954560),
    _foundry("MPT-13B", 40, 5120, 40, 1024, 44.27, 59.03, 438, 40, 3, 960, 5502, True, 12848711680),
)

# --------------------------------------------------------------------------------------------------------------------
# Megatron-Bridge performance summary archive, NeMo 25.11 container, DGX-H100 rows.

_MBRIDGE_SOURCE = (
    "NVIDIA-NeMo/Megatron-Bridge docs/performance-summary-archive.md, '25.11 NeMo Container', Pre-Training, System "
    "DGX-H100 (file at 4ab94df, 2026-08-11)"
)
_MBRIDGE_URL = (
    "https://github.com/NVIDIA-NeMo/Megatron-Bridge/blob/4ab94dfad36641cabdeb96452b21bf676aac4772/docs/"
    "performance-summary-archive.md"
)
_MBRIDGE_NOTE = (
    "Precision FP8-CS = FP8 current scaling. FSDP column: >0 = Megatron FSDP with sharding group #GPUs/(TP x PP), "
    "0 = DDP (Megatron distributed optimizer not stated). dp degree derived = GPUs / (TP x PP x CP) and consistent "
    "with GBS = DP x MBS x GA. DGX-H100 links (NVLink4/NVSwitch, IB) are not restated on the page. AC not stated. "
    "Shapes: official Llama 3 / 3.1 configs (vocab 128256). "
)


def _mbridge(shape: dict[str, object], gpus: int, gbs: int, mbs: int, fsdp: int, tp: int, pp: int, cp: int,
             vp: int | None, ga: int, tps: float, tflops: float) -> PublishedConfig:
    dp = gpus // (tp * pp * cp)
    return PublishedConfig(
        source=_MBRIDGE_SOURCE, url=_MBRIDGE_URL, cluster="DGX-H100", gpus=gpus, gpus_per_node=8, intra_node=None,
        inter_node=None, **shape, seq_len=8192, dp_replicate=1 if fsdp else dp,  # type: ignore[arg-type]
        dp_shard=dp if fsdp else 1, tp=tp, pp=pp, cp=cp,
        pp_schedule=f"interleaved 1F1B (VP={vp})" if vp else None, micro_batch=mbs, global_batch=gbs,
        activation_checkpointing=None, precision="fp8", tokens_per_second_per_gpu=tps, mfu=None, tflops_per_gpu=tflops,
        notes=f"Row: GBS {gbs}, MBS {mbs}, FSDP {fsdp}, TP {tp}, PP {pp}, CP {cp}, VP {vp or 'n/a'}, EP 1, GA {ga}. "
        + _MBRIDGE_NOTE,
    )


MEGATRON_BRIDGE_2511_H100: tuple[PublishedConfig, ...] = (
    _mbridge({**_LLAMA31_8B, "model": "Llama 3 8B"}, 8, 128, 1, 8, 1, 1, 1, None, 16, 14451, 744),
    _mbridge({**_LLAMA31_70B, "model": "Llama 3 70B"}, 64, 128, 1, 0, 4, 8, 1, 5, 64, 1602, 719),
    _mbridge(_LLAMA31_405B, 1024, 512, 1, 0, 8, 8, 2, 8, 64, 292, 737),
)

# --------------------------------------------------------------------------------------------------------------------

PUBLISHED: tuple[PublishedConfig, ...] = (
    *TORCHTITAN_2412,
    *TORCHTITAN_ASYNC_TP_2506,
    *TORCHTITAN_TRAINY_H200,
    *TORCHTITAN_405B_128_2408,
    *TORCHTITAN_A100_2404,
    *MEGATRON_README_2407,
    *MEGATRON_PAPER_TABLE1,
    *MEGATRON_PAPER_TABLE2,
    *LLAMA3_PAPER_TABLE4,
    *LLM_FOUNDRY_H100,
    *MEGATRON_BRIDGE_2511_H100,
)
"""Every published configuration, in source order."""


PUBLISHED_BANDWIDTHS: tuple[PublishedBandwidth, ...] = (
    PublishedBandwidth(
        source="NVIDIA/nccl-tests GitHub thread 212 'H100 all reduce performance is poor', reply by NCCL maintainer "
        "sjeaugey, 2024-05-06",
        url="https://github.com/NVIDIA/nccl-tests/issues/212",
        cluster="H100 SXM (8 GPUs, NVLink4 + NVSwitch)", gpus=8, gpus_per_node=8, scope="intra_node",
        operation="all_reduce (NVLink SHARP / NVLS, default)", metric="busbw", bandwidth_gb_s=480.0,
        notes="Maintainer-stated expected peak ('~480GB/s', algbw ~275GB/s) at large message sizes (256M is too "
        "small to reach it), not one measured run. With NVLS, busbw does not equal bytes on the wire.",
    ),
    PublishedBandwidth(
        source="NVIDIA/nccl-tests GitHub thread 212, reply by NCCL maintainer sjeaugey, 2024-05-06",
        url="https://github.com/NVIDIA/nccl-tests/issues/212",
        cluster="H100 SXM (8 GPUs, NVLink4 + NVSwitch)", gpus=8, gpus_per_node=8, scope="intra_node",
        operation="non-allreduce collectives, or all_reduce with NCCL_ALGO=RING", metric="busbw", bandwidth_gb_s=370.0,
        notes="Maintainer-stated effective NVLink bandwidth: 450 GB/s line rate minus ~20% protocol overhead.",
    ),
    PublishedBandwidth(
        source="NVIDIA/nccl GitHub thread 1264 'Only ~783GByte/s out of theoretical 900GB/s HGX H100 SXM Nvlink4' "
        "(user report, 2024-04-24)",
        url="https://github.com/NVIDIA/nccl/issues/1264",
        cluster="HGX H100 SXM (NVLink4)", gpus=8, gpus_per_node=8, scope="intra_node",
        operation="GPU-to-GPU copy (CUDA samples p2pBandwidthLatencyTest)", metric="p2p unidirectional",
        bandwidth_gb_s=380.0,
        notes="User-measured: unidirectional 380 GB/s of 450 theoretical; bidirectional 749 GB/s of 900 (matrix "
        "entries ~740-773 GB/s; the title says ~783). Not an nccl-tests figure.",
    ),
    PublishedBandwidth(
        source="NVIDIA/nccl-tests GitHub thread 149 'Expected bandwidth results? A100 GPUs over NVLink' (user report, "
        "2023-06-27; NCCL 2.18.1)",
        url="https://github.com/NVIDIA/nccl-tests/issues/149",
        cluster="A100 SXM4 80GB (HPE Apollo 6500, 8 GPUs, NVLink)", gpus=8, gpus_per_node=8, scope="intra_node",
        operation="all_reduce (all_reduce_perf -b 8 -e 1G -f 4 -g 1 -t 8)", metric="busbw", bandwidth_gb_s=200.0,
        notes="User states 'a busbw of ~200 GB/s' (approximate, up to 1 GB messages); the same user measured "
        "430-520 GB/s bidirectional GPU-GPU with p2pBandwidthLatencyTest.",
    ),
    PublishedBandwidth(
        source="NVIDIA/nccl-tests GitHub thread 100 'HGX A100 can not reach peak bandwidth on 2nd Gen NVSwitch ?' "
        "(user report, 2022-01-17)",
        url="https://github.com/NVIDIA/nccl-tests/issues/100",
        cluster="2x HGX A100 SXM 80GB, 4x ConnectX-6 200 Gb/s IB per node", gpus=16, gpus_per_node=8,
        scope="inter_node", operation="all_reduce (all_reduce_perf -b 1G -e 8G -f 2, 16 ranks)", metric="busbw",
        bandwidth_gb_s=91.0,
        notes="User: 'the testing result can reach 91GB/s in busbw' (peak over 1-8 GB messages).",
    ),
    PublishedBandwidth(
        source=_PTDP_SOURCE + ", Section 5.9", url=_PTDP_URL, cluster=_SELENE, gpus=3072, gpus_per_node=8,
        scope="cluster", operation="point-to-point between pipeline stages (1T model, 3072 GPUs)",
        metric="effective bisection", bandwidth_gb_s=892.0,
        notes="Measured on the trillion-parameter run (t=8, p=64, 384 DGX A100 nodes).",
    ),
    PublishedBandwidth(
        source=_PTDP_SOURCE + ", Section 5.9", url=_PTDP_URL, cluster=_SELENE, gpus=3072, gpus_per_node=8,
        scope="cluster", operation="all-reduce among data-parallel replicas (1T model, 3072 GPUs)",
        metric="effective bisection", bandwidth_gb_s=12900.0,
        notes="Measured on the trillion-parameter run; published as 12.9 TB/s.",
    ),
)
"""Measured or maintainer-stated communication bandwidths (GB/s), each with its source."""


def groups(entries: Iterable[PublishedConfig] = PUBLISHED) -> dict[tuple[str, int, str], tuple[PublishedConfig, ...]]:
    """The entries grouped by ``(cluster, gpus, model)``, groups and members in source order."""
    out: dict[tuple[str, int, str], list[PublishedConfig]] = {}
    for entry in entries:
        out.setdefault(entry.key, []).append(entry)
    return {key: tuple(members) for key, members in out.items()}
