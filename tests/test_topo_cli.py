"""`lightning-geo topo`: the island map and the ranked plans, from a saved file, from detection, and with no GPU."""

from __future__ import annotations

import re

import pytest

from lightning_geo.strategies import topology_detect
from lightning_geo.strategies.topology_smi import read_topology_file
from tests.test_demo_cli import _run_main
from tests.test_topology import TOPOLOGY_DIR

A30_BRIDGES = TOPOLOGY_DIR / "21_8x_a30_nv4_pairs_mixed_node_pix_2socket.txt"


def _plan_rows(out: str) -> dict[str, str]:
    """``{plan name: verdict}`` from the printed plan table (columns ``# plan RxSxT GB/GPU comm/step verdict``)."""
    rows = {}
    for line in out.splitlines():
        fields = re.split(r"\s{2,}", line.strip())
        if len(fields) == 6 and fields[0].isdigit():
            rows[fields[1]] = fields[5]
    return rows


def test_file_shows_the_bridge_pairs_and_ranks_hsdp_inside_them_first(capsys):
    code, out, err = _run_main(["topo", "--file", str(A30_BRIDGES), "--gpus-per-node", "4", "--params", "1e9",
                                "--gpu-memory-gb", "24"], capsys)
    assert code == 0, err
    assert "island A: GPU0 GPU3 (NVLink NV4" in out
    assert "island B: GPU1 GPU2 (NVLink NV4" in out
    assert "local rank order: GPU0 GPU3 GPU1 GPU2" in out
    rows = _plan_rows(out)
    assert rows["HSDP 2x2"] == "chosen"
    assert set(rows) == {"HSDP 2x2", "DDP", "FSDP"}
    assert rows["DDP"].endswith("x the communication")


def test_two_nodes_and_memory_pressure_change_the_plan(capsys):
    code, out, err = _run_main(["topo", "--file", str(A30_BRIDGES), "--gpus-per-node", "4", "--params", "7e9",
                                "--gpu-memory-gb", "24", "--nodes", "2"], capsys)
    assert code == 0, err
    assert "on 2 node(s) x 4 GPU(s), nodes joined by NET at 25 GB/s per GPU" in out
    rows = _plan_rows(out)
    assert rows["DDP +offload"] == "needs CPU offload"  # 112 GB of state on 24 GB GPUs
    assert rows["FSDP"] == "chosen"


def test_detected_topology_is_shown(monkeypatch, capsys):
    monkeypatch.setattr(topology_detect, "detect_node_topology", lambda: read_topology_file(A30_BRIDGES))
    code, out, err = _run_main(["topo", "--params", "1e8"], capsys)
    assert code == 0, err
    assert "8 GPU(s)" in out and "island A: GPU0 GPU3" in out
    assert "chosen" in out


def test_without_a_gpu_it_shows_the_cpu_processes_and_says_why(monkeypatch, capsys):
    def no_gpu():
        raise topology_detect.NoGPUFoundError(["NVML: not found", "nvidia-smi: not on PATH"])

    monkeypatch.setattr(topology_detect, "detect_node_topology", no_gpu)
    code, out, err = _run_main(["topo", "--params", "1e8", "--gpus-per-node", "2"], capsys)
    assert code == 0, err
    assert "2 process(s), topology from cpu" in out
    assert "no GPU found (NVML: not found; nvidia-smi: not on PATH)" in out
    assert "pass --file" in out
    assert _plan_rows(out)["DDP"] == "chosen"


@pytest.mark.parametrize(("args", "message"), [
    (["--file", "/no/such/topo.txt"], "No such file"),
    (["--file", str(A30_BRIDGES), "--gpus-per-node", "9"], "--gpus-per-node must be between 1 and 8"),
    (["--file", str(A30_BRIDGES), "--bytes-per-param", "4"], "--bytes-per-param must be >= 8"),
    (["--file", str(A30_BRIDGES), "--params", "7e9"], "GB per GPU, more than the 8 GB every GPU is assumed to have: "
     "pass the memory of one GPU (--gpu-memory-gb 80 for 80 GB GPUs)"),
])
def test_bad_input_gets_one_line_error(args, message, capsys):
    code, out, err = _run_main(["topo", *args], capsys)
    assert code == 2
    assert err.startswith("lightning-geo topo: error:") and message in err
    assert "Traceback" not in err and out == ""


def test_malformed_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "topo.txt"
    bad.write_text("this is not a topology matrix\n")
    code, _, err = _run_main(["topo", "--file", str(bad)], capsys)
    assert code == 2 and str(bad) in err


@pytest.mark.parametrize(("args", "message"), [
    (["--params", "0"], "argument --params: must be positive, got 0"),
    (["--activation-gb", "-1"], "argument --activation-gb: must be >= 0, got -1"),
    (["--net-gbps", "nan"], "argument --net-gbps: must be positive, got nan"),
])
def test_bad_numbers_are_rejected_by_the_parser(args, message, capsys):
    code, _, err = _run_main(["topo", *args], capsys)
    assert code == 2 and message in err


H100_FILE = TOPOLOGY_DIR / "12_hgx_h100_8x_nv18_2socket_8nic.txt"


def test_a_known_model_is_planned_with_memory_step_time_and_pipelines(capsys):
    code, out, err = _run_main(["topo", "--file", str(H100_FILE), "--model", "llama3.1-70b", "--nodes", "4",
                                "--gpu-memory-gb", "80", "--global-batch", "64", "--max-pipeline", "4",
                                "--tensor-parallel"], capsys)
    assert code == 0, err
    assert "plan for llama3.1-70b (7.06e+10 parameters, 8192 tokens x 1 per micro-batch, 64 per step" in out
    assert "tok/s/GPU" in out and "PP4" in out and "PP2" in out
    assert "--gpu-memory-gb sets it" in out and "does not fit" in out
    assert "the GPU model is unknown" in out  # a text topology has no product names


def test_batch_flags_need_a_known_model(capsys):
    code, _, err = _run_main(["topo", "--file", str(H100_FILE), "--global-batch", "64"], capsys)
    assert code == 2 and "--global-batch, --seq-len and --micro-batch need --model" in err
    code, _out, err = _run_main(["topo", "--file", str(H100_FILE), "--model", "llama9"], capsys)
    assert code == 2 and "llama3.1-70b" in err
