"""Find this node's topology: NVML first, then ``nvidia-smi topo -m``, then a flat guess.

Every source that fails leaves its reason in ``NodeTopology.warnings``, so ``lightning-geo topo`` and the
strategy's log say why a plan was made on less information.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace

from lightning_geo.strategies.topology import GPU, SELF_LINK, Link, LinkKind, NodeTopology, cpu_node_topology
from lightning_geo.strategies.topology_nvml import nvml_node_topology
from lightning_geo.strategies.topology_smi import parse_topo_matrix

_NVIDIA_SMI_TIMEOUT_S = 10.0
_DEVICE_TYPES = ("cuda", "cpu")


class NoGPUFoundError(RuntimeError):
    """No topology source worked and no CUDA device is visible.

    Attributes:
        reasons: why each source failed, e.g. ``("NVML: ...", "nvidia-smi topo -m: ...")``.
    """

    def __init__(self, reasons: list[str] | tuple[str, ...]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("detect_node_topology: no topology source worked and no CUDA device is visible; "
                         f"pass num_devices or a topology file. Reasons: {'; '.join(self.reasons)}")


def detect_node_topology(num_devices: int | None = None, device_type: str = "cuda") -> NodeTopology:
    """The topology of this node, from the best source that works.

    For ``device_type="cuda"``: NVML (``nvml_node_topology``, CUDA order, only the
    visible GPUs); else the text of ``nvidia-smi topo -m`` (PCI order; restricted to ``CUDA_VISIBLE_DEVICES``
    when it lists indices); else a node where every pair is ``PHB`` with a ``"no topology information: ..."``
    warning. The reasons earlier sources failed are the first ``warnings``.

    Args:
        num_devices: how many devices the run uses. Default ``None``: all the node has (for ``"cpu"``: 1; for
            the flat guess: ``torch.cuda.device_count()``). When smaller than the node, the first
            ``num_devices`` are kept (``subset(range(num_devices))``).
        device_type: ``"cuda"`` (default) or ``"cpu"`` (``cpu_node_topology(num_devices)``, gloo processes).

    Raises:
        ValueError: for an unknown ``device_type``, ``num_devices < 1``, or more devices than the node has.
        NoGPUFoundError: (a ``RuntimeError``) when no source works and the number of GPUs is unknown (no
            ``num_devices``, no CUDA); its ``reasons`` say why each source failed.

    Example:
        ```python
        node = detect_node_topology()
        node.warnings  # () on a healthy GPU node
        ```
    """
    if device_type not in _DEVICE_TYPES:
        raise ValueError(f"detect_node_topology: device_type must be one of {_DEVICE_TYPES}, got {device_type!r}")
    if num_devices is not None and num_devices < 1:
        raise ValueError(f"detect_node_topology: num_devices must be >= 1, got {num_devices}")
    if device_type == "cpu":
        return cpu_node_topology(num_devices or 1)
    failures: list[str] = []
    node = _from_nvml(failures) or _from_nvidia_smi(failures) or _flat_guess(num_devices, failures)
    node = replace(node, warnings=(*failures, *node.warnings))
    if num_devices is None or num_devices == node.num_gpus:
        return node
    if num_devices > node.num_gpus:
        raise ValueError(f"detect_node_topology: num_devices={num_devices} but the node has {node.num_gpus} GPUs "
                         f"(source: {node.source})")
    return node.subset(list(range(num_devices)))


def _from_nvml(failures: list[str]) -> NodeTopology | None:
    try:
        return nvml_node_topology()
    except RuntimeError as err:
        failures.append(f"NVML: {err}")
        return None


def _from_nvidia_smi(failures: list[str]) -> NodeTopology | None:
    try:
        node = parse_topo_matrix(_run_nvidia_smi_topo())
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        failures.append(f"nvidia-smi topo -m: {err}")
        return None
    return _visible_subset(node, os.environ.get("CUDA_VISIBLE_DEVICES"), failures)


def _run_nvidia_smi_topo(timeout_s: float = _NVIDIA_SMI_TIMEOUT_S) -> str:
    """The text of ``nvidia-smi topo -m``.

    Args:
        timeout_s: seconds to wait for ``nvidia-smi`` (default 10).

    Raises:
        FileNotFoundError: when ``nvidia-smi`` is not on ``PATH``.
        subprocess.TimeoutExpired: when it runs longer than ``timeout_s``.
        subprocess.SubprocessError: when it exits non-zero (no driver, no GPU); its output is in the message.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise FileNotFoundError("nvidia-smi is not on PATH")
    result = subprocess.run([exe, "topo", "-m"], capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())[:200]
        raise subprocess.SubprocessError(f"nvidia-smi exited with status {result.returncode}: {output}")
    return result.stdout


def _visible_subset(node: NodeTopology, visible: str | None, failures: list[str]) -> NodeTopology:
    """Keep the GPUs ``CUDA_VISIBLE_DEVICES`` lists by index (``nvidia-smi`` shows them all)."""
    if visible is None:
        return node
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if not all(entry.isdigit() for entry in entries) or any(int(e) >= node.num_gpus for e in entries):
        failures.append(f"nvidia-smi lists all {node.num_gpus} GPUs and CUDA_VISIBLE_DEVICES={visible!r} cannot be "
                        "mapped onto them; GPU indices may not match cuda:<i>")
        return node
    return node.subset([int(entry) for entry in entries])


def _flat_guess(num_devices: int | None, failures: list[str]) -> NodeTopology:
    """Every pair ``PHB``: no better guess exists without NVML or ``nvidia-smi``."""
    if num_devices is None:
        import torch

        num_devices = torch.cuda.device_count()
    if num_devices < 1:
        raise NoGPUFoundError(failures)
    gpus = tuple(GPU(index=i) for i in range(num_devices))
    links = tuple(tuple(SELF_LINK if i == j else Link(LinkKind.PHB) for j in range(num_devices))
                  for i in range(num_devices))
    warning = (f"no topology information: assuming every pair of the {num_devices} GPUs is PHB (PCIe through "
               "the CPU); NVLink and NUMA placement are ignored")
    return NodeTopology(gpus, links, source="fallback", warnings=(warning,))
