"""Keep BoTorch from compiling C++ at a multi-objective study's first ask.

BoTorch's hypervolume acquisition (``qLogNoisyExpectedHypervolumeImprovement``) compiles a fused C++ kernel with
``torch.utils.cpp_extension`` the first time a process builds one: about 30 s on a 2-core machine, a C++ compiler
and ``ninja`` needed (a warning otherwise), and a ``-march=native`` library cached under the home folder, which a
node of another CPU type sharing that home folder would then load. The kernel makes the acquisition's inner loop
1.5-3x faster, a fraction of a second per ask for the studies GEO runs (tens of trials, 128 samples), so GEO's
optimizer uses BoTorch's pure-PyTorch path unless the kernel is already importable (a prebuilt
``logei_fused_ext``) or ``LIGHTNING_GEO_BOTORCH_COMPILE=1`` asks for the compile.
"""

from __future__ import annotations

import importlib.util
import os

COMPILE_ENV = "LIGHTNING_GEO_BOTORCH_COMPILE"
"""Set to ``1`` to let BoTorch compile its fused hypervolume kernel (default: not compiled)."""


def skip_fused_kernel_compile() -> bool:
    """Mark BoTorch's fused-kernel load as done (without compiling it) unless the kernel can be imported as is or
    ``LIGHTNING_GEO_BOTORCH_COMPILE=1``. Returns whether the compile is skipped.

    A BoTorch without the fused kernel (older or newer layouts) is left alone.
    """
    if os.environ.get(COMPILE_ENV) == "1":
        return False
    from botorch.acquisition.multi_objective import logei

    # already decided (by an earlier ask, or loaded): no search of sys.path at every ask
    if getattr(logei, "_load_attempted", True) or getattr(logei, "_C", None) is not None:
        return False
    if importlib.util.find_spec("logei_fused_ext") is not None:
        return False
    logei._load_attempted = True
    return True
