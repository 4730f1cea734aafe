"""Parse the text of ``nvidia-smi topo -m`` into a [`NodeTopology`][lightning_geo.strategies.NodeTopology].

The matrix printed by ``nvidia-smi topo -m`` names the path between every pair of devices (``X``, ``NV#``,
``PIX``, ``PXB``, ``PHB``, ``NODE``, ``SYS``; drivers before ~418 print ``SOC`` for ``SYS``), followed by
optional ``CPU Affinity``, ``NUMA Affinity`` and ``GPU NUMA ID`` columns, a legend and, on newer drivers, a
``NIC Legend``. Columns are separated by tabs or by runs of spaces, depending on the driver and on how the
text was copied; the parser splits on any whitespace and relies on the ``X`` diagonal and the header.

What the text cannot tell: the NVLink generation (``nvlink_version`` stays ``None``), whether NVLinks go
through an NVSwitch (guessed, see ``parse_topo_matrix``), NVLink between nodes (GB200 NVL72), GPU
names, UUIDs and memory. GPUs are numbered as ``nvidia-smi`` numbers them (PCI bus order), which is CUDA's
order only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (or on nodes of identical GPUs).

Example:
    ```python
    node = read_topology_file("dgx1.txt")
    node.nvlink_islands()  # [[0, 1, 2, 3], [4, 5, 6, 7]]
    ```
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from lightning_geo.strategies.topology import GPU, SELF_LINK, Link, LinkKind, NodeTopology

_EXTRA_COLUMNS = ("CPU Affinity", "NUMA Affinity", "GPU NUMA ID")
_EXTRA_FIRST_WORDS = {"CPU", "NUMA", "GPU"}  # a bare "GPU" (no number) starts "GPU NUMA ID"
_PCIE_TOKENS = {
    "PIX": LinkKind.PIX,
    "PXB": LinkKind.PXB,
    "PHB": LinkKind.PHB,
    "NODE": LinkKind.NODE,
    "SYS": LinkKind.SYS,
    "SOC": LinkKind.SYS,  # old legend: "path traverses a socket-level link (e.g. QPI)"
}
_GPU_LABEL = re.compile(r"GPU(\d+)")
_NVLINK_TOKEN = re.compile(r"NV(\d+)")
_NIC_LEGEND_LINE = re.compile(r"\s*(NIC\d+)\s*:\s*(\S+)\s*")
_MAX_NVLINKS_PER_GPU = 18  # V100 6, A100 12, H100/B200 18: more NVLink peers x links than this needs a switch
_NVSWITCH_MIN_NVLINKS = 12  # NV12 (A100) / NV18 (H100, B200) to every peer: an HGX/DGX NVSwitch board
_VM_MIN_GPUS = 3  # two GPUs on their own CPU root ports report PHB on bare metal too


@dataclass(frozen=True)
class _Row:
    """One parsed row of the matrix."""

    line_no: int  # 1-based line number in the text
    label: str  # "GPU0", "NIC0", "mlx5_0"
    links: tuple[Link, ...]  # one per device column, in header order
    extras: dict[str, str]  # extra column name -> raw value ("CPU Affinity" -> "0-11,24-35")


def parse_topo_matrix(text: str, source: str = "nvidia-smi") -> NodeTopology:
    """Parse the output of ``nvidia-smi topo -m``.

    Leading ``#`` comment lines and blank lines are skipped; the first other line is the header. The matrix
    rows follow until a blank line or the ``Legend:``. CRLF line endings, tabs or spaces, trailing tabs and
    empty columns are all accepted. NIC rows and columns (``NIC0``, ``mlx5_0``) are dropped from the GPU
    matrix; their names (from the ``NIC Legend`` when present) go to ``nics``.

    Tokens: ``NV#`` becomes ``Link(LinkKind.NVLINK, nvlinks=#)``; ``PIX``/``PXB``/``PHB``/``NODE``/``SYS``
    that kind; ``SOC`` (old drivers) is ``SYS``. GPU ``cpu_affinity`` comes from the ``CPU Affinity`` column,
    ``numa_node`` from ``NUMA Affinity`` when it is a single integer (``"0-1"`` and ``"N/A"`` give ``None``).

    NVSwitch heuristic: the text does not say whether NVLinks are direct or switched. Every link gets
    ``nvswitch=True`` when every GPU pair is NVLink with the same count ``c`` and either ``c >= 12`` (NV12 on
    an A100 board, NV18 on H100/B200) or ``(num_gpus - 1) * c > 18`` (more links than any GPU has, e.g. NV8
    on the 8 GPUs of an H800 board). A pair of PCIe A100s joined by three bridges (NV12) is a false positive.

    Args:
        text: the output, optionally preceded by ``#`` comment lines.
        source: stored as ``NodeTopology.source`` (default ``"nvidia-smi"``).

    Returns:
        The node, GPUs in ``nvidia-smi``'s (PCI bus) order, with ``warnings`` such as a VM hiding the topology.

    Raises:
        ValueError: naming the line, when there is no header, no GPU rows, a row is missing or too short or
            too long (non-square matrix), a token is not a known link, ``X`` is off the diagonal, or a GPU pair
            differs between its two rows (asymmetric matrix).

    Example:
        ```python
        node = parse_topo_matrix(subprocess.run(["nvidia-smi", "topo", "-m"], ...).stdout)
        ```
    """
    lines = text.splitlines()
    header_no = _find_header(lines)
    columns, extra_names = _parse_header(lines[header_no - 1], header_no)
    rows, end = _parse_rows(lines, header_no, columns, extra_names)
    _check_square(rows, columns, header_no)
    gpu_labels = _gpu_labels(columns, header_no)
    links = _mark_nvswitch(_gpu_links(rows, columns, gpu_labels))
    gpus = tuple(_gpu(index, rows[label]) for index, label in enumerate(gpu_labels))
    nics = _nic_names([c for c in columns if c not in gpu_labels], lines[end:])
    return NodeTopology(gpus, links, source=source, nics=nics, warnings=_warnings(links))


def read_topology_file(path: str | os.PathLike[str]) -> NodeTopology:
    """Parse a file holding the output of ``nvidia-smi topo -m`` (``source="file:<path>"``).

    Args:
        path: the file; ``#`` comment lines at the top (provenance notes) are skipped.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the text is malformed; the message starts with the path (see ``parse_topo_matrix``).
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        return parse_topo_matrix(text, source=f"file:{path}")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _error(line_no: int, message: str) -> ValueError:
    return ValueError(f"nvidia-smi topo -m text, line {line_no}: {message}")


def _find_header(lines: list[str]) -> int:
    """1-based number of the first line that is neither blank nor a ``#`` comment."""
    for k, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return k + 1
    raise ValueError("nvidia-smi topo -m text: no header line (the text is empty or only '#' comments)")


def _parse_header(line: str, line_no: int) -> tuple[list[str], list[str]]:
    """``(device columns, extra column names)`` of the header line."""
    words = line.split()
    cut = next((k for k, word in enumerate(words) if word in _EXTRA_FIRST_WORDS), len(words))
    columns = words[:cut]
    if any(_is_link_token(word) for word in columns):
        raise _error(line_no, f"no header line: expected column labels like 'GPU0 GPU1 ... CPU Affinity', got "
                              f"what looks like a matrix row: {line.strip()[:60]!r}")
    if not any(_GPU_LABEL.fullmatch(word) for word in columns):
        raise _error(line_no, f"no header line: no 'GPU<n>' column label in {line.strip()[:60]!r}")
    if len(set(columns)) != len(columns):
        raise _error(line_no, f"the header repeats a column label: {columns}")
    return columns, _extra_names(words[cut:])


def _extra_names(words: list[str]) -> list[str]:
    """Group the words after the device columns into column names (``CPU Affinity``...; unknown words alone)."""
    names: list[str] = []
    k = 0
    while k < len(words):
        for name in _EXTRA_COLUMNS:
            parts = name.split()
            if words[k : k + len(parts)] == parts:
                names.append(name)
                k += len(parts)
                break
        else:
            names.append(words[k])
            k += 1
    return names


def _is_link_token(word: str) -> bool:
    return word == "X" or word in _PCIE_TOKENS or _NVLINK_TOKEN.fullmatch(word) is not None


def _parse_rows(lines: list[str], header_no: int, columns: list[str],
                extra_names: list[str]) -> tuple[dict[str, _Row], int]:
    """The rows after the header, by label, and the index of the first line after the matrix."""
    rows: dict[str, _Row] = {}
    k = header_no
    while k < len(lines):
        stripped = lines[k].strip()
        if not stripped or stripped.startswith("Legend"):
            break
        if not stripped.startswith("#"):
            row = _parse_row(stripped.split(), k + 1, columns, extra_names)
            if row.label in rows:
                raise _error(k + 1, f"row {row.label} appears twice (first on line {rows[row.label].line_no})")
            rows[row.label] = row
        k += 1
    return rows, k


def _parse_row(words: list[str], line_no: int, columns: list[str], extra_names: list[str]) -> _Row:
    label, values = words[0], words[1:]
    if label not in columns:
        raise _error(line_no, f"row {label!r} is not one of the header's device columns {columns}")
    if len(values) < len(columns):
        raise _error(line_no, f"row {label} has {len(values)} entries but the header has {len(columns)} device "
                              "columns; the matrix must be square")
    if len(values) > len(columns) + len(extra_names):
        raise _error(line_no, f"row {label} has {len(values)} entries, more than the header's "
                              f"{len(columns)} device columns and {len(extra_names)} other columns {extra_names}")
    links = tuple(_parse_link(token, line_no, label, column)
                  for token, column in zip(values[: len(columns)], columns, strict=True))
    extras = dict(zip(extra_names, values[len(columns) :], strict=False))  # NIC rows have no extra values
    return _Row(line_no, label, links, extras)


def _parse_link(token: str, line_no: int, row: str, column: str) -> Link:
    if token == "X":
        link = SELF_LINK
    elif token in _PCIE_TOKENS:
        link = Link(_PCIE_TOKENS[token])
    elif match := _NVLINK_TOKEN.fullmatch(token):
        link = Link(LinkKind.NVLINK, nvlinks=int(match[1]))
    else:
        raise _error(line_no, f"unknown link {token!r} between {row} and {column}; expected X, NV<n>, PIX, PXB, "
                              "PHB, NODE, SYS or SOC")
    if (link is SELF_LINK) != (row == column):
        where = "off the diagonal" if link is SELF_LINK else "on the diagonal instead of X"
        raise _error(line_no, f"{token!r} between {row} and {column} is {where}")
    return link


def _check_square(rows: dict[str, _Row], columns: list[str], header_no: int) -> None:
    missing = [c for c in columns if c not in rows]
    if missing:
        raise _error(header_no, f"the matrix is not square: the header has {len(columns)} device columns but "
                                f"there is no row for {missing}")


def _gpu_labels(columns: list[str], header_no: int) -> list[str]:
    """The ``GPU<n>`` columns in index order; they must be exactly ``GPU0 .. GPU<n-1>``."""
    indexed = sorted((int(m[1]), c) for c in columns if (m := _GPU_LABEL.fullmatch(c)))
    if [index for index, _ in indexed] != list(range(len(indexed))):
        raise _error(header_no, f"GPU labels must be GPU0..GPU{len(indexed) - 1}, got {[c for _, c in indexed]}")
    return [label for _, label in indexed]


def _gpu_links(rows: dict[str, _Row], columns: list[str], gpu_labels: list[str]) -> tuple[tuple[Link, ...], ...]:
    """The GPU-by-GPU part of the matrix; raises on an asymmetric pair."""
    position = {column: k for k, column in enumerate(columns)}
    links = tuple(tuple(rows[a].links[position[b]] for b in gpu_labels) for a in gpu_labels)
    for i, a in enumerate(gpu_labels):
        for j, b in enumerate(gpu_labels[:i]):
            if links[i][j] != links[j][i]:
                raise _error(rows[a].line_no, f"{a}-{b} is {links[i][j]} but line {rows[b].line_no} says {b}-{a} "
                                              f"is {links[j][i]}; the matrix must be symmetric")
    return links


def _mark_nvswitch(links: tuple[tuple[Link, ...], ...]) -> tuple[tuple[Link, ...], ...]:
    """Set ``nvswitch=True`` on every link when the all-to-all NVLink pattern can only be an NVSwitch."""
    n = len(links)
    pairs = [links[i][j] for i in range(n) for j in range(i + 1, n)]
    if not pairs or any(link.kind is not LinkKind.NVLINK for link in pairs):
        return links
    counts = {link.nvlinks for link in pairs}
    if len(counts) != 1:
        return links
    (count,) = counts
    if count < _NVSWITCH_MIN_NVLINKS and (n - 1) * count <= _MAX_NVLINKS_PER_GPU:
        return links
    return tuple(tuple(link if link.kind is LinkKind.SELF else replace(link, nvswitch=True) for link in row)
                 for row in links)


def _gpu(index: int, row: _Row) -> GPU:
    cpus = row.extras.get("CPU Affinity")
    numa = row.extras.get("NUMA Affinity", "")
    return GPU(index=index, cpu_affinity=None if cpus in (None, "N/A") else cpus,
               numa_node=int(numa) if numa.isdigit() else None)


def _nic_names(nic_columns: list[str], rest: list[str]) -> tuple[str, ...]:
    """NIC names: the ``NIC Legend`` names (``NIC0: mlx5_0``) where given, else the column labels."""
    legend = {m[1]: m[2] for line in rest if (m := _NIC_LEGEND_LINE.fullmatch(line))}
    return tuple(legend.get(column, column) for column in nic_columns)


def _warnings(links: tuple[tuple[Link, ...], ...]) -> tuple[str, ...]:
    n = len(links)
    pairs = [links[i][j] for i in range(n) for j in range(i + 1, n)]
    if n >= _VM_MIN_GPUS and all(link.kind is LinkKind.PHB for link in pairs):
        return (f"every GPU pair reports PHB: likely a VM that hides the topology (on bare metal {n} GPUs rarely "
                "all sit on separate CPU root ports); the real links may be faster or slower",)
    return ()
