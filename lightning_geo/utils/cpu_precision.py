"""Whether this CPU computes bf16 matrix products natively, and so whether ``bf16-mixed`` pays on it.

bf16 autocast on a CPU is only fast where the processor has bf16 instructions (x86 ``avx512_bf16`` or AMX, Arm's
``bf16`` extension). Elsewhere torch converts every operand and the products run many times slower than in fp32:
on a 2-core AMD EPYC with AVX2 only, a training step of the demo's model took 12x the CPU time of fp32 under
``torch.autocast("cpu", dtype=torch.bfloat16)``. GEO's defaults (``recipe()``, the demo) therefore train a CPU
run in bf16 only where this says it is native, and in fp32 otherwise.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

BF16_CPU_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""``/proc/cpuinfo`` flags (x86 ``flags``, Arm ``Features``) that mean native bf16 arithmetic."""


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor listed in ``cpuinfo`` (the text of ``/proc/cpuinfo``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True where this CPU has bf16 instructions (read from ``/proc/cpuinfo``; Apple silicon counts as having
    them), False where it has none or they cannot be read (then fp32 is the safe choice)."""
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(cpu_flags(text) & BF16_CPU_FLAGS)


def default_cpu_precision() -> str:
    """``"bf16-mixed"`` where the CPU has native bf16 (see ``cpu_has_native_bf16``), else ``"32-true"``."""
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
