"""How long one optimizer step of a plan takes: compute from the model's FLOPs, the pipeline bubble, and the
communication a plan cannot hide behind compute.

The planner ranks plans by this estimate when it knows the work of a step (``ModelSize.tokens_per_step``);
without it, it ranks them by communication alone. The pieces:

- **compute**: ``flops_per_token x tokens`` per GPU over the GPU's dense bf16 peak (``PEAK_TFLOPS``) times
  ``efficiency``, the share of peak a well-tuned transformer step reaches (0.45 by default; published large runs
  report 38-55% MFU on H100s and A100s). ``flops_per_token = 6 N + 12 L h s`` (the weights' multiply-adds forward
  and backward, plus attention's scores, the convention of Megatron-LM, PaLM and torchtitan); activation
  checkpointing recomputes the forward, ``+2 N + 4 L h s``.
- **pipeline bubble**: a 1F1B schedule of ``p`` stages and ``m`` micro-batches idles ``(p - 1) / m`` of the
  compute (Narayanan et al. 2021); an interleaved one with ``v`` stages per rank ``(p - 1) / (v m)``.
- **exposed communication**: tensor-parallel all-reduces and pipeline sends sit on the critical path; data
  parallel traffic (DDP buckets, FSDP gathers and reduce-scatters) overlaps the backward and the forward, so
  only what exceeds the compute it can hide behind is exposed; CPU offload copies the shards over PCIe at
  ``Bandwidths.pcie_offload``-like rates and steps the optimizer on the host (``OFFLOAD_GBPS``), not overlapped.

It is a ranking model with one fitted constant, not a simulator: ``benchmarks/plan_vs_published.py`` checks it
against measured configurations of real clusters and prints where it is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

PEAK_TFLOPS: dict[str, float] = {
    "B200": 2250.0,
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "A30": 165.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "RTX 6000 Ada": 364.0,
    "4090": 165.0,
    "V100": 125.0,
}
"""Dense bf16 (fp16 for V100) tensor-core peak per GPU in TFLOP/s, from NVIDIA's data sheets (SXM parts), keyed by a
substring of the product name."""

DEFAULT_PEAK_TFLOPS = 312.0
"""Peak assumed for a GPU whose name is unknown (an A100's)."""

DEFAULT_EFFICIENCY = 0.45
"""Share of the peak a step's compute reaches (model FLOPs utilisation without bubbles and communication)."""

OFFLOAD_GBPS = 20.0
"""Host <-> GPU copy rate of CPU offload in GB/s (PCIe 4/5 x16 in practice), also taken for the host optimizer."""


def peak_tflops(name: str | None) -> float:
    """Dense bf16 peak of the GPU called ``name`` (``"NVIDIA H100 80GB HBM3"``), or ``DEFAULT_PEAK_TFLOPS``."""
    if name:
        for key in sorted(PEAK_TFLOPS, key=len, reverse=True):  # "A100" before "A10"
            if key.lower() in name.lower():
                return PEAK_TFLOPS[key]
    return DEFAULT_PEAK_TFLOPS


def flops_per_token(parameters: float, layers: int = 0, hidden: int = 0, seq_len: int = 0,
                    recompute: bool = False) -> float:
    """Training FLOPs per token: ``6 N + 12 L h s``, plus the recomputed forward ``2 N + 4 L h s`` with activation
    checkpointing. ``parameters`` should leave out the embedding table (a lookup, not a matrix product)."""
    forward = 2 * parameters + 4 * layers * hidden * seq_len
    return 3 * forward + (forward if recompute else 0.0)


def pipeline_bubble(stages: int, microbatches: int, interleave: int = 1) -> float:
    """Idle share of compute added by a pipeline: ``(p - 1) / (v m)`` (0 for one stage)."""
    if stages <= 1:
        return 0.0
    return (stages - 1) / (max(1, interleave) * max(1, microbatches))


@dataclass(frozen=True)
class StepTime:
    """Estimated seconds of one optimizer step of a plan, by cause.

    Args:
        compute: the GPU's matrix work (recomputation included).
        bubble: pipeline idle time.
        exposed_comm: communication not hidden behind compute.
        offload: host copies and the host optimizer step of CPU offload.
        tokens: tokens per step (the global batch).
        gpus: GPUs the step runs on.
    """

    compute: float
    bubble: float
    exposed_comm: float
    offload: float
    tokens: float
    gpus: int

    @property
    def seconds(self) -> float:
        """Total seconds per step."""
        return self.compute + self.bubble + self.exposed_comm + self.offload

    @property
    def tokens_per_second_per_gpu(self) -> float:
        """Throughput per GPU in tokens/s (0 for a step of no time)."""
        return self.tokens / self.seconds / self.gpus if self.seconds > 0 else 0.0


def estimate_step_time(*, flops: float, gpus: int, peak: float, efficiency: float, tokens: float,
                       critical_comm: float, overlapped_comm: float, bubble_share: float,
                       offload_seconds: float = 0.0) -> StepTime:
    """Combine the pieces: ``flops`` of the whole step spread over ``gpus`` at ``peak x efficiency`` FLOP/s,
    ``critical_comm`` seconds always exposed, ``overlapped_comm`` exposed beyond the compute it overlaps,
    ``bubble_share`` of the compute idle, ``offload_seconds`` added."""
    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency must be in (0, 1], got {efficiency!r}")
    compute = flops / gpus / (peak * efficiency)
    exposed = critical_comm + max(0.0, overlapped_comm - compute)
    return StepTime(compute, compute * bubble_share, exposed, offload_seconds, tokens, gpus)
