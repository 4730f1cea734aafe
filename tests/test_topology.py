"""Topology detection: the ``nvidia-smi topo -m`` parser on real outputs, NVML through a fake, the fallbacks."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from lightning_geo.strategies import topology_detect, topology_nvml
from lightning_geo.strategies.topology import ClusterTopology, Link, LinkKind, NodeTopology
from lightning_geo.strategies.topology_detect import detect_node_topology
from lightning_geo.strategies.topology_nvml import nvml_node_topology
from lightning_geo.strategies.topology_smi import parse_topo_matrix, read_topology_file

# copies of ../shared/topologies (real `nvidia-smi topo -m` outputs, each with its source), kept in the repo so
# that a clean clone tests them
TOPOLOGY_DIR = Path(__file__).resolve().parent / "data" / "topologies"
TOPOLOGY_FILES = sorted(TOPOLOGY_DIR.glob("*.txt"))
needs_files = pytest.mark.skipif(not TOPOLOGY_FILES, reason=f"no topology files in {TOPOLOGY_DIR}")

CUBE_MESH = [[0, 1, 2, 3], [4, 5, 6, 7]]
ONE_ISLAND = [[0, 1, 2, 3, 4, 5, 6, 7]]
SINGLES_8 = [[i] for i in range(8)]
SOCKETS = [0, 0, 0, 0, 1, 1, 1, 1]


def _mlx(n: int, stem: str = "mlx5_") -> tuple[str, ...]:
    return tuple(f"{stem}{i}" for i in range(n))


@dataclass(frozen=True)
class Expected:
    """What each file says, read off the file by hand."""

    num_gpus: int
    islands: list[list[int]]
    nics: tuple[str, ...]
    numa: list[int | None]
    nvswitch: bool = False
    vm_warning: bool = False


# keyed by the file name's number prefix
EXPECTED = {
    "01": Expected(8, CUBE_MESH, ("mlx5_0",), [None] * 8),  # no NUMA Affinity column
    "02": Expected(8, CUBE_MESH, ("mlx5_0",), [None] * 8),
    "03": Expected(8, ONE_ISLAND, (), SOCKETS, nvswitch=True),
    "05": Expected(2, [[0], [1]], (), [None, None]),  # NUMA Affinity N/A
    "06": Expected(4, [[0], [1], [2], [3]], _mlx(4), [0, 0, 1, 1]),
    "07": Expected(2, [[0], [1]], _mlx(2), [0, 0]),  # two PHB GPUs: normal on one socket, no VM warning
    "08": Expected(8, CUBE_MESH, _mlx(2), SOCKETS),
    "09": Expected(8, CUBE_MESH, _mlx(4), SOCKETS),
    "11": Expected(8, ONE_ISLAND, _mlx(10), [3, 3, 1, 1, 7, 7, 5, 5], nvswitch=True),
    "12": Expected(8, ONE_ISLAND, _mlx(8), SOCKETS, nvswitch=True),
    "14": Expected(8, ONE_ISLAND, _mlx(8, "mlx5_bond_"), SOCKETS, nvswitch=True),  # NV8 x 7 peers > 18 links
    "16": Expected(8, SINGLES_8, (), SOCKETS),
    "18": Expected(8, SINGLES_8, (), [None] * 8, vm_warning=True),  # NUMA Affinity "0-1"
    "21": Expected(8, [[0, 3], [1, 2], [4, 5], [6, 7]], (), SOCKETS),
}


def _file(prefix: str) -> Path:
    matches = [path for path in TOPOLOGY_FILES if path.name.startswith(f"{prefix}_")]
    assert len(matches) == 1, f"expected one topology file {prefix}_*.txt in {TOPOLOGY_DIR}"
    return matches[0]


def _node(prefix: str) -> NodeTopology:
    return read_topology_file(_file(prefix))


def _pairs(node: NodeTopology) -> list[Link]:
    return [node.link(i, j) for i in range(node.num_gpus) for j in range(i + 1, node.num_gpus)]


# --- the parser on every real output -------------------------------------------------------------------------


@needs_files
def test_every_file_has_hand_checked_expectations() -> None:
    assert sorted(path.name[:2] for path in TOPOLOGY_FILES) == sorted(EXPECTED)


@needs_files
@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda path: path.name[:2])
def test_parse_real_outputs(path: Path) -> None:
    expected = EXPECTED[path.name[:2]]
    node = read_topology_file(path)
    assert node.source == f"file:{path}"
    assert node.num_gpus == expected.num_gpus
    assert [gpu.index for gpu in node.gpus] == list(range(expected.num_gpus))
    assert node.nvlink_islands() == expected.islands
    assert node.nics == expected.nics
    assert [gpu.numa_node for gpu in node.gpus] == expected.numa
    assert all(gpu.cpu_affinity for gpu in node.gpus)
    assert all(link.nvlink_version is None for link in _pairs(node))
    assert all(link.nvswitch == expected.nvswitch for link in _pairs(node))
    assert any("VM" in warning for warning in node.warnings) == expected.vm_warning
    for i in range(node.num_gpus):
        assert node.link(i, i).kind is LinkKind.SELF


@needs_files
@pytest.mark.parametrize("prefix", ["01", "08", "09"])
def test_dgx1_hybrid_cube_mesh(prefix: str) -> None:
    node = _node(prefix)
    nvlinked = {(i, j) for i in range(8) for j in range(i + 1, 8) if node.link(i, j).kind is LinkKind.NVLINK}
    assert len(nvlinked) == 16  # 6 inside each quad + 4 crossing
    assert all(node.link(i, j).nvlinks in (1, 2) for i, j in nvlinked)
    assert {node.link(i, j).kind for i in range(8) for j in range(i + 1, 8) if (i, j) not in nvlinked} == {
        LinkKind.SYS}


@needs_files
def test_dgx1_specific_links() -> None:
    node = _node("01")
    assert node.link(0, 3) == Link(LinkKind.NVLINK, nvlinks=2)
    assert node.link(0, 1) == Link(LinkKind.NVLINK, nvlinks=1)
    assert node.link(0, 4) == Link(LinkKind.NVLINK, nvlinks=2)  # crossing link, still not one island
    assert node.link(0, 5) == Link(LinkKind.SYS)
    assert node.gpus[4].cpu_affinity == "12-23,36-47"


@needs_files
def test_old_legend_single_numa() -> None:
    node = _node("02")
    assert node.link(0, 5) == Link(LinkKind.NODE)
    assert node.link(0, 1) == Link(LinkKind.NVLINK, nvlinks=2)
    assert node.gpus[7].cpu_affinity == "0-23"


@needs_files
def test_hand_edited_tabs() -> None:
    node = _node("08")
    assert node.link(0, 7) == Link(LinkKind.NVLINK, nvlinks=2)
    assert node.link(3, 4) == Link(LinkKind.NVLINK, nvlinks=1)
    assert node.link(0, 4) == Link(LinkKind.SYS)
    assert node.gpus[4].cpu_affinity == "24-47,72-95"


@needs_files
@pytest.mark.parametrize(("prefix", "nvlinks"), [("03", 18), ("12", 18), ("11", 12), ("14", 8)])
def test_nvswitch_boards(prefix: str, nvlinks: int) -> None:
    node = _node(prefix)
    assert set(_pairs(node)) == {Link(LinkKind.NVLINK, nvlinks=nvlinks, nvswitch=True)}


@needs_files
def test_rtx4090_pix_groups() -> None:
    node = _node("16")
    for i in range(8):
        for j in range(i + 1, 8):
            same_switch = (i < 4) == (j < 4)
            assert node.link(i, j) == Link(LinkKind.PIX if same_switch else LinkKind.SYS), (i, j)
    assert node.gpus[4].cpu_affinity == "32-63,96-127"


@needs_files
def test_a30_bridge_pairs() -> None:
    node = _node("21")
    bridged = {(0, 3), (1, 2), (4, 5), (6, 7)}
    for i, j in bridged:
        assert node.link(i, j) == Link(LinkKind.NVLINK, nvlinks=4)
    assert node.link(1, 3) == Link(LinkKind.PIX)
    assert node.link(0, 1) == Link(LinkKind.NODE)
    assert node.link(3, 4) == Link(LinkKind.SYS)
    assert sum(link.kind is LinkKind.NVLINK for link in _pairs(node)) == len(bridged)


@needs_files
def test_a10g_vm_all_phb() -> None:
    node = _node("18")
    assert set(_pairs(node)) == {Link(LinkKind.PHB)}
    assert len(node.warnings) == 1
    assert node.warnings[0].startswith("every GPU pair reports PHB: likely a VM that hides the topology")


@needs_files
@pytest.mark.parametrize("prefix", ["05", "07"])
def test_two_gpu_phb_workstations(prefix: str) -> None:
    node = _node(prefix)
    assert node.link(0, 1) == Link(LinkKind.PHB)
    assert node.warnings == ()


@needs_files
def test_pcie_two_sockets_with_nic_legend() -> None:
    node = _node("06")
    assert node.link(0, 1) == Link(LinkKind.NODE)
    assert node.link(1, 2) == Link(LinkKind.SYS)
    assert node.link(2, 3) == Link(LinkKind.NODE)
    assert [gpu.cpu_affinity for gpu in node.gpus] == ["0-31", "0-31", "32-63", "32-63"]


@needs_files
def test_file_equals_parsed_text_with_crlf_and_without_comments() -> None:
    path = _file("21")
    raw = path.read_bytes().decode()
    body = "\r\n".join(line for line in raw.splitlines() if not line.startswith("#"))
    assert "\r\n" in body
    assert parse_topo_matrix(body, source="manual") == replace(read_topology_file(path), source="manual")


# --- the parser on small synthetic texts ---------------------------------------------------------------------


def _matrix(rows: list[str], header: str = "GPU0 GPU1 GPU2 CPU Affinity") -> str:
    return "\n".join([header, *rows]) + "\n\nLegend:\n\n  X    = Self\n"


GOOD_ROWS = ["GPU0 X NV1 SOC 0-3", "GPU1 NV1 X SOC 0-3", "GPU2 SOC SOC X 4-7"]


def test_old_soc_token_is_sys() -> None:
    node = parse_topo_matrix(_matrix(GOOD_ROWS))
    assert node.source == "nvidia-smi"
    assert node.link(0, 2) == Link(LinkKind.SYS)
    assert node.link(0, 1) == Link(LinkKind.NVLINK, nvlinks=1)
    assert [gpu.cpu_affinity for gpu in node.gpus] == ["0-3", "0-3", "4-7"]
    assert [gpu.numa_node for gpu in node.gpus] == [None, None, None]
    assert node.nics == ()


def test_nic_columns_without_legend_keep_their_labels() -> None:
    text = _matrix(["GPU0 X PHB PIX 0-3", "GPU1 PHB X PIX 0-3", "NIC0 PIX PIX X"], header="GPU0 GPU1 NIC0 CPU Affinity")
    node = parse_topo_matrix(text)
    assert node.num_gpus == 2
    assert node.nics == ("NIC0",)


def test_four_gpus_all_to_all_nv4_is_direct_not_nvswitch() -> None:
    rows = [f"GPU{i} " + " ".join("X" if i == j else "NV4" for j in range(4)) for i in range(4)]
    node = parse_topo_matrix("\n".join(["GPU0 GPU1 GPU2 GPU3", *rows]))
    assert set(_pairs(node)) == {Link(LinkKind.NVLINK, nvlinks=4)}  # HGX A100 4-GPU: direct links
    assert node.nvlink_islands() == [[0, 1, 2, 3]]


def test_single_gpu() -> None:
    node = parse_topo_matrix("\tGPU0\tCPU Affinity\tNUMA Affinity\nGPU0\t X \t0-7\t0\n")
    assert node.num_gpus == 1
    assert node.gpus[0].numa_node == 0
    assert node.nvlink_islands() == [[0]]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no header line"),
        ("# only a comment\n\n", "no header line"),
        ("GPU0 X NV1\nGPU1 NV1 X\n", r"line 1: no header line"),
        ("NIC0 NIC1\nNIC0 X PIX\nNIC1 PIX X\n", r"line 1: no header line: no 'GPU<n>'"),
        ("GPU0 GPU1 CPU Affinity\n", r"not square: .* no row for \['GPU0', 'GPU1'\]"),
        (_matrix(GOOD_ROWS[:2]), r"line 1: the matrix is not square: .* no row for \['GPU2'\]"),
        (_matrix([*GOOD_ROWS[:2], "GPU2 SOC X"]), r"line 4: row GPU2 has 2 entries but the header has 3"),
        (_matrix([*GOOD_ROWS[:2], "GPU2 SOC SOC X 4-7 extra"]), r"line 4: row GPU2 has 5 entries, more than"),
        (_matrix(["GPU0 X NV1 FOO 0-3", *GOOD_ROWS[1:]]), r"line 2: unknown link 'FOO' between GPU0 and GPU2"),
        (_matrix(["GPU0 X NV1 NVX 0-3", *GOOD_ROWS[1:]]), r"unknown link 'NVX'"),
        (_matrix([GOOD_ROWS[0], "GPU1 NV2 X SOC 0-3", GOOD_ROWS[2]]),
         r"line 3: GPU1-GPU0 is NV2 but line 2 says GPU0-GPU1 is NV1; the matrix must be symmetric"),
        (_matrix([*GOOD_ROWS[:2], "GPU2 SOC SOC SOC 4-7"]), r"line 4: 'SOC' between GPU2 and GPU2 is on the diagonal"),
        (_matrix(["GPU0 X X SOC 0-3", *GOOD_ROWS[1:]]), r"line 2: 'X' between GPU0 and GPU1 is off the diagonal"),
        (_matrix([*GOOD_ROWS, "GPU3 SOC SOC SOC"]), r"line 5: row 'GPU3' is not one of the header's device columns"),
        (_matrix([*GOOD_ROWS, GOOD_ROWS[0]]), r"line 5: row GPU0 appears twice \(first on line 2\)"),
        (_matrix(GOOD_ROWS, header="GPU0 GPU1 GPU3 CPU Affinity").replace("GPU2 ", "GPU3 "),
         r"line 1: GPU labels must be GPU0..GPU2"),
    ],
    ids=["empty", "only-comments", "row-as-header", "no-gpu-column", "no-rows", "missing-row", "short-row",
         "long-row", "unknown-token", "bad-nv-token", "asymmetric", "diagonal-not-x", "x-off-diagonal", "unknown-row",
         "duplicate-row", "gpu-label-gap"],
)
def test_malformed_text_raises(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_topo_matrix(text)


def test_read_topology_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.txt"
    path.write_text("# a comment\n" + _matrix(["GPU0 X NV1 FOO 0-3", *GOOD_ROWS[1:]]))
    with pytest.raises(ValueError, match=rf"^{path}: .*line 3: unknown link 'FOO'"):
        read_topology_file(path)
    with pytest.raises(FileNotFoundError):
        read_topology_file(tmp_path / "missing.txt")


# --- NVML through a fake -------------------------------------------------------------------------------------

GPU_T, SWITCH_T = pynvml.NVML_NVLINK_DEVICE_TYPE_GPU, pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
NVLINK_4_0, NVLINK_3_0, NVLINK_5_0 = pynvml.NVML_NVLINK_VERSION_4_0, pynvml.NVML_NVLINK_VERSION_3_0, 7


def _nvml_error(code: int = pynvml.NVML_ERROR_NOT_SUPPORTED) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@dataclass
class FakeGPU:
    """One GPU as the fake NVML describes it."""

    uuid: str
    bus: str
    nvlinks: list[tuple[int, str, bool]] = field(default_factory=list)  # (remote type, remote bus, enabled)
    nvlink_version: int = 0  # NVML_NVLINK_VERSION_* enum
    numa: int | None = 0
    fabric: tuple[bytes, int, int] | None = None  # (cluster uuid, clique id, state); None: not supported
    name: str = "NVIDIA H100 80GB HBM3"
    memory: int = 80 * 2**30


class FakeNVML:
    """The subset of ``pynvml`` that ``topology_nvml`` calls; handles are NVML indices."""

    def __init__(self, gpus: list[FakeGPU], *, levels: dict[tuple[int, int], int] | None = None,
                 p2p: dict[tuple[int, int], int] | None = None, fail_init: bool = False) -> None:
        self.gpus = gpus
        self.levels = levels or {}
        self.p2p = p2p or {}
        self.fail_init = fail_init
        self.initialised = 0

    def __getattr__(self, name: str) -> Any:  # constants, NVMLError, the ctypes structs
        if name.startswith(("NVML_", "NVMLError", "c_nvml")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise _nvml_error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, k: int) -> int:
        return k

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self.gpus[h].uuid

    def nvmlDeviceGetName(self, h: int) -> str:
        return self.gpus[h].name

    def nvmlDeviceGetPciInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self.gpus[h].bus)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(total=self.gpus[h].memory, free=0, used=0)

    def nvmlDeviceGetNumaNodeId(self, h: int) -> int:
        if self.gpus[h].numa is None:
            raise _nvml_error()
        return self.gpus[h].numa

    def _link(self, h: int, link: int) -> tuple[int, str, bool]:
        if link >= len(self.gpus[h].nvlinks):
            # past the real links: invalid argument; a GPU without NVLink: not supported
            raise _nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT if self.gpus[h].nvlinks else
                              pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.gpus[h].nvlinks[link]

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        return pynvml.NVML_FEATURE_ENABLED if self._link(h, link)[2] else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: int, link: int) -> int:
        return self._link(h, link)[0]

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: int, link: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self._link(h, link)[1])

    def nvmlDeviceGetNvLinkVersion(self, h: int, link: int) -> int:
        self._link(h, link)
        return self.gpus[h].nvlink_version

    def nvmlDeviceGetTopologyCommonAncestor(self, h1: int, h2: int) -> int:
        level = self.levels[min(h1, h2), max(h1, h2)]
        if level < 0:
            raise _nvml_error()
        return level

    def nvmlDeviceGetP2PStatus(self, h1: int, h2: int, index: int) -> int:
        assert type(index) is int and index == 0, f"P2P caps index must be the int 0 (READ), got {index!r}"
        return self.p2p.get((min(h1, h2), max(h1, h2)), pynvml.NVML_P2P_STATUS_OK)

    def nvmlDeviceGetGpuFabricInfoV(self, h: int, ref: Any) -> int:
        if self.gpus[h].fabric is None:
            raise _nvml_error()
        info = ref._obj
        cluster, clique, state = self.gpus[h].fabric
        ctypes.memmove(info.clusterUuid, cluster, len(cluster))
        info.cliqueId, info.state, info.status = clique, state, pynvml.NVML_SUCCESS
        return pynvml.NVML_SUCCESS


def _uuid(k: int) -> str:
    return f"GPU-0000000{k}-aaaa-bbbb-cccc-ddddeeeeffff"


def _switch_node(num_gpus: int, version: int, fabric: tuple[bytes, int, int] | None) -> FakeNVML:
    gpus = [FakeGPU(_uuid(k), f"00000000:{0x18 + 0x10 * k:02X}:00.0", numa=k // 4, fabric=fabric,
                    nvlinks=[(SWITCH_T, f"00000000:{0xA0 + s % 4:02X}:00.0", True) for s in range(18)],
                    nvlink_version=version) for k in range(num_gpus)]
    return FakeNVML(gpus)  # no PCIe levels: asking for one (KeyError) would mean the NVSwitch was missed


@pytest.fixture
def no_torch_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``nvml_node_topology`` use NVML order even on a machine with CUDA."""
    monkeypatch.setattr(topology_nvml, "_torch_cuda_uuids", lambda: None)


def test_nvml_hgx_h100_nvswitch(no_torch_cuda: None) -> None:
    fake = _switch_node(8, NVLINK_4_0, fabric=(bytes(16), 0, pynvml.NVML_GPU_FABRIC_STATE_COMPLETED))
    node = nvml_node_topology(nvml=fake)
    assert fake.initialised == 0  # init and shutdown paired
    assert node.source == "nvml"
    assert node.num_gpus == 8
    assert set(_pairs(node)) == {Link(LinkKind.NVLINK, nvlinks=18, nvlink_version=4, nvswitch=True)}
    assert node.nvlink_islands() == [list(range(8))]
    gpu = node.gpus[5]
    assert (gpu.index, gpu.uuid, gpu.pci_bus_id) == (5, _uuid(5), "00000000:68:00.0")
    assert (gpu.name, gpu.memory_bytes, gpu.numa_node) == ("NVIDIA H100 80GB HBM3", 80 * 2**30, 1)
    assert gpu.nvlink_domain is None  # single node: COMPLETED with an all-zero cluster UUID
    assert node.warnings == ()


def _a30_bridged() -> FakeNVML:
    """NVML order 0..3; bridges (NV4) join NVML 0-3 and 1-2; PCIe: 0-1 PIX, 2-3 PXB, else SYS."""
    buses = ["00000000:18:00.0", "00000000:3B:00.0", "00000000:86:00.0", "00000000:AF:00.0"]
    bridge = {0: 3, 3: 0, 1: 2, 2: 1}
    gpus = []
    for k in range(4):
        peer = buses[bridge[k]].replace("00000000:", "0000:") if k == 0 else buses[bridge[k]]  # legacy bus id
        links = [(GPU_T, peer, True)] * 4 + [(GPU_T, peer, False)]  # a fifth link, disabled
        gpus.append(FakeGPU(_uuid(k), buses[k], links, NVLINK_3_0, numa=None if k == 3 else k // 2,
                            name="NVIDIA A30", memory=24 * 2**30))
    levels = {(0, 1): pynvml.NVML_TOPOLOGY_SINGLE, (2, 3): pynvml.NVML_TOPOLOGY_MULTIPLE,
              (0, 2): pynvml.NVML_TOPOLOGY_SYSTEM, (1, 3): pynvml.NVML_TOPOLOGY_SYSTEM}
    return FakeNVML(gpus, levels=levels, p2p={(0, 1): pynvml.NVML_P2P_STATUS_IOH_TOPOLOGY_NOT_SUPPORTED})


def test_nvml_bridge_pairs_in_cuda_order() -> None:
    # CUDA 0..3 = NVML 2, 0, 3, 1; torch's UUIDs come without the "GPU-" prefix here
    cuda_uuids = [_uuid(k).removeprefix("GPU-").upper() for k in (2, 0, 3, 1)]
    node = nvml_node_topology(cuda_uuids, nvml=_a30_bridged())
    bridge = Link(LinkKind.NVLINK, nvlinks=4, nvlink_version=3)
    assert node.link(1, 2) == bridge  # NVML 0-3
    assert node.link(0, 3) == bridge  # NVML 2-1
    assert node.link(1, 3) == Link(LinkKind.PIX)  # NVML 0-1
    assert node.link(0, 2) == Link(LinkKind.PXB)  # NVML 2-3
    assert node.link(0, 1) == Link(LinkKind.SYS)  # NVML 2-0
    assert node.link(2, 3) == Link(LinkKind.SYS)  # NVML 3-1
    assert sorted(node.nvlink_islands()) == [[0, 3], [1, 2]]
    assert [gpu.uuid for gpu in node.gpus] == [_uuid(k) for k in (2, 0, 3, 1)]
    assert [gpu.index for gpu in node.gpus] == [0, 1, 2, 3]
    assert [gpu.pci_bus_id for gpu in node.gpus] == ["00000000:86:00.0", "00000000:18:00.0", "00000000:AF:00.0",
                                                     "00000000:3B:00.0"]
    assert [gpu.numa_node for gpu in node.gpus] == [1, 0, None, 0]
    assert len(node.warnings) == 1
    assert "GPU pairs 1-3 (IOH topology not supported)" in node.warnings[0]


def test_nvml_without_cuda_uuids_uses_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topology_nvml, "_torch_cuda_uuids", lambda: [_uuid(3), _uuid(0)])
    node = nvml_node_topology(nvml=_a30_bridged())
    assert [gpu.uuid for gpu in node.gpus] == [_uuid(3), _uuid(0)]
    assert node.link(0, 1) == Link(LinkKind.NVLINK, nvlinks=4, nvlink_version=3)
    assert node.warnings == ()  # the failing P2P pair is not visible


def test_nvml_old_driver_without_remote_device_type() -> None:
    fake = _a30_bridged()
    fake.gpus[1].nvlinks.append((pynvml.NVML_NVLINK_DEVICE_TYPE_IBMNPU, "00000000:E0:00.0", True))  # not a GPU

    def missing(h: int, link: int) -> int:
        raise _nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    fake.nvmlDeviceGetNvLinkRemoteDeviceType = missing  # type: ignore[method-assign]
    node = nvml_node_topology([_uuid(k) for k in range(4)], nvml=fake)
    assert node.link(0, 3) == node.link(1, 2) == Link(LinkKind.NVLINK, nvlinks=4, nvlink_version=3)
    assert node.link(0, 1) == Link(LinkKind.PIX)


def test_nvml_gb200_fabric_domain(no_torch_cuda: None) -> None:
    cluster = bytes(range(1, 17))
    fake = _switch_node(4, NVLINK_5_0, fabric=(cluster, 32766, pynvml.NVML_GPU_FABRIC_STATE_COMPLETED))
    node = nvml_node_topology(nvml=fake)
    domain = "0102030405060708090a0b0c0d0e0f10.32766"
    assert [gpu.nvlink_domain for gpu in node.gpus] == [domain] * 4
    assert set(_pairs(node)) == {Link(LinkKind.NVLINK, nvlinks=18, nvlink_version=5, nvswitch=True)}
    cluster_topology = ClusterTopology((node, replace(node, hostname="other")))
    assert cluster_topology.link((0, 1), (1, 2)).kind is LinkKind.NVLINK
    other_clique = _switch_node(4, NVLINK_5_0, fabric=(cluster, 7, pynvml.NVML_GPU_FABRIC_STATE_COMPLETED))
    separate = ClusterTopology((node, nvml_node_topology(nvml=other_clique)))
    assert separate.link((0, 1), (1, 2)).kind is LinkKind.NET


@pytest.mark.parametrize(
    "fabric", [(bytes(range(1, 17)), 5, pynvml.NVML_GPU_FABRIC_STATE_IN_PROGRESS), None], ids=["in-progress", "old"])
def test_nvml_no_fabric_domain(no_torch_cuda: None, fabric: tuple[bytes, int, int] | None) -> None:
    node = nvml_node_topology(nvml=_switch_node(2, NVLINK_5_0, fabric=fabric))
    assert [gpu.nvlink_domain for gpu in node.gpus] == [None, None]


def test_nvml_pcie_only_and_unknown_ancestor(no_torch_cuda: None) -> None:
    gpus = [FakeGPU(_uuid(k), f"00000000:{k + 1:02X}:00.0") for k in range(3)]  # no NVLink at all
    levels = {(0, 1): pynvml.NVML_TOPOLOGY_HOSTBRIDGE, (0, 2): pynvml.NVML_TOPOLOGY_NODE, (1, 2): -1}
    node = nvml_node_topology(nvml=FakeNVML(gpus, levels=levels))
    assert node.link(0, 1) == Link(LinkKind.PHB)
    assert node.link(0, 2) == Link(LinkKind.NODE)
    assert node.link(1, 2) == Link(LinkKind.PHB)  # NVML could not tell: assumed, with a warning
    assert node.warnings == ("GPU1-GPU2: NVML cannot tell the PCIe path (Not Supported); assuming PHB",)


def test_nvml_errors_are_runtime_errors(no_torch_cuda: None) -> None:
    with pytest.raises(RuntimeError, match="NVML could not be initialised"):
        nvml_node_topology([], nvml=FakeNVML([], fail_init=True))
    with pytest.raises(RuntimeError, match="NVML sees no GPUs"):
        nvml_node_topology(None, nvml=FakeNVML([]))
    fake = _a30_bridged()
    with pytest.raises(RuntimeError, match=r"CUDA device 1 \(UUID MIG-123\) is not among the 4 GPUs"):
        nvml_node_topology([_uuid(0), "MIG-123"], nvml=fake)
    assert fake.initialised == 0

    def lost() -> int:
        raise _nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)

    fake.nvmlDeviceGetCount = lost  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="an NVML call failed while reading the topology: GPU is lost"):
        nvml_node_topology([_uuid(0)], nvml=fake)
    assert fake.initialised == 0


# --- detect_node_topology ------------------------------------------------------------------------------------


def test_detect_cpu() -> None:
    node = detect_node_topology(3, device_type="cpu")
    assert node.is_cpu and node.num_gpus == 3
    assert set(_pairs(node)) == {Link(LinkKind.CPU)}
    assert detect_node_topology(device_type="cpu").num_gpus == 1


@pytest.mark.parametrize(("kwargs", "match"), [({"device_type": "tpu"}, "device_type must be one of"),
                                               ({"num_devices": 0}, "num_devices must be >= 1")])
def test_detect_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        detect_node_topology(**kwargs)


def _nvml_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> NodeTopology:
        raise RuntimeError("NVML could not be initialised (Driver Not Loaded)")

    monkeypatch.setattr(topology_detect, "nvml_node_topology", fail)


def test_detect_uses_nvml_and_subsets(monkeypatch: pytest.MonkeyPatch, no_torch_cuda: None) -> None:
    monkeypatch.setattr(topology_detect, "nvml_node_topology",
                        lambda: nvml_node_topology(nvml=_switch_node(8, NVLINK_4_0, None)))
    node = detect_node_topology()
    assert (node.source, node.num_gpus, node.warnings) == ("nvml", 8, ())
    assert detect_node_topology(num_devices=4).gpus == node.gpus[:4]
    with pytest.raises(ValueError, match="num_devices=9 but the node has 8 GPUs"):
        detect_node_topology(num_devices=9)


def _fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    exe = tmp_path / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")


@needs_files
def test_detect_falls_back_to_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _nvml_fails(monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _fake_nvidia_smi(tmp_path, monkeypatch, f"cat '{_file('21')}'")
    node = detect_node_topology()
    assert node.source == "nvidia-smi"
    assert node.nvlink_islands() == EXPECTED["21"].islands
    assert node.warnings == ("NVML: NVML could not be initialised (Driver Not Loaded)",)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,0,5")
    node = detect_node_topology()
    assert node.num_gpus == 3
    assert node.link(0, 1) == Link(LinkKind.NVLINK, nvlinks=4)  # GPU3-GPU0
    assert node.link(0, 2) == Link(LinkKind.SYS)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    node = detect_node_topology()
    assert node.num_gpus == 8
    assert "CUDA_VISIBLE_DEVICES='GPU-1234' cannot be mapped" in node.warnings[1]


@needs_files
def test_detect_keeps_the_parsers_warnings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _nvml_fails(monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _fake_nvidia_smi(tmp_path, monkeypatch, f"cat '{_file('18')}'")
    node = detect_node_topology(num_devices=2)
    assert node.num_gpus == 2
    assert node.warnings[0].startswith("NVML: ")
    assert "likely a VM" in node.warnings[1]


def test_detect_flat_fallback_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _nvml_fails(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi
    node = detect_node_topology(num_devices=4)
    assert node.source == "fallback"
    assert node.num_gpus == 4
    assert set(_pairs(node)) == {Link(LinkKind.PHB)}
    assert node.warnings[0].startswith("NVML: ")
    assert node.warnings[1] == "nvidia-smi topo -m: nvidia-smi is not on PATH"
    assert node.warnings[2].startswith("no topology information: ")


@pytest.mark.skipif(os.name != "posix", reason="fake nvidia-smi is a shell script")
def test_detect_nvidia_smi_failing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _nvml_fails(monkeypatch)
    _fake_nvidia_smi(tmp_path, monkeypatch, "echo 'NVIDIA-SMI has failed because it could not communicate' >&2; exit 9")
    node = detect_node_topology(num_devices=2)
    assert node.source == "fallback"
    assert node.warnings[1] == ("nvidia-smi topo -m: nvidia-smi exited with status 9: NVIDIA-SMI has failed because "
                                "it could not communicate")
    _fake_nvidia_smi(tmp_path, monkeypatch, "echo 'GPU0 X NV1'")
    node = detect_node_topology(num_devices=2)
    assert "nvidia-smi topo -m: nvidia-smi topo -m text, line 1: no header line" in node.warnings[1]


def test_detect_flat_fallback_counts_torch_devices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    _nvml_fails(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert detect_node_topology().num_gpus == 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(RuntimeError, match="no topology source worked and no CUDA device is visible") as err:
        detect_node_topology()
    assert [reason.split(":")[0] for reason in err.value.reasons] == ["NVML", "nvidia-smi topo -m"]
