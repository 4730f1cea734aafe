"""``strategy="geo_hybrid"``: registration, arguments, the single-device path, logging, and 2-/4-process gloo
runs (started with ``torchrun``) whose losses must equal a one-process run's, including a resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import lightning_geo  # noqa: F401  (registers "geo_hybrid")
from lightning_geo.demo.plot import read_scalars
from lightning_geo.strategies import GeoHybridStrategy, ModelSize
from lightning_geo.strategies.planner import plan_parallelism
from lightning_geo.strategies.topology import single_node
from lightning_geo.strategies.topology_smi import read_topology_file
from tests.helpers import TinyModel, free_port
from tests.launch import launch_script

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "geo_hybrid_worker.py"
TOPOLOGIES = ROOT / "tests" / "data" / "topologies"
A30_BRIDGES = TOPOLOGIES / "21_8x_a30_nv4_pairs_mixed_node_pix_2socket.txt"  # bridges 0-3 and 1-2


def start_worker(out: Path, nproc: int, *args: str, worker: Path = WORKER) -> subprocess.CompletedProcess:
    """Run ``worker`` on ``nproc`` processes as ``torchrun`` would (one plain process for 0) until it ends.

    The processes fork from the tests' preloaded forkserver (tests/launch.py) instead of starting new interpreters.
    """
    return launch_script(worker, nproc, ["--out", str(out), *args], out / "logs", free_port())


def run_worker(out: Path, nproc: int, *args: str, worker: Path = WORKER) -> dict:
    """Run ``worker`` as [`start_worker`] does, check that it succeeded and read its result."""
    done = start_worker(out, nproc, *args, worker=worker)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory) -> list[float]:
    """The demo model's losses in one process with Lightning's default strategy."""
    return run_worker(tmp_path_factory.mktemp("reference"), 0, "--strategy", "auto")["losses"]


def _trainer(tmp_path: Path, strategy, **kwargs) -> pl.Trainer:
    options = {"accelerator": "cpu", "devices": 1, "max_steps": 3, "enable_progress_bar": False,
               "enable_model_summary": False, "enable_checkpointing": False,
               "logger": pl.loggers.TensorBoardLogger(tmp_path, name="", version="tb"), "log_every_n_steps": 1}
    return pl.Trainer(strategy=strategy, **{**options, **kwargs})


def test_geo_hybrid_is_registered_and_the_name_builds_the_strategy(tmp_path):
    trainer = _trainer(tmp_path, "geo_hybrid")
    assert isinstance(trainer.strategy, GeoHybridStrategy)
    from lightning_geo.strategies import register_geo_hybrid

    register_geo_hybrid()  # idempotent: a second import or call does not raise


def test_single_device_run_trains_unwrapped_logs_the_plan_and_leaves_no_process_group(tmp_path):
    model = TinyModel()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer(tmp_path, GeoHybridStrategy())
    trainer.fit(model)
    assert trainer.global_step == 3
    assert trainer.strategy.plan.name == "single device"
    assert not any(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not torch.distributed.is_initialized()
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["geo/strategy/world_size"][-1][1] == 1
    assert {"geo/strategy/replicate", "geo/strategy/shard", "geo/strategy/tensor", "geo/strategy/est_comm_ms",
            "geo/strategy/est_memory_gb"} <= set(scalars)


@pytest.mark.parametrize("stale_port", [False, True], ids=["no-port-set", "port-left-by-an-earlier-run"])
def test_single_device_run_takes_no_port_and_leaves_the_environment_alone(tmp_path, monkeypatch, stale_port):
    """A world of one needs no TCP rendezvous. With one, Lightning wrote MASTER_ADDR/MASTER_PORT into the
    environment (or reused a port an earlier DDP run left there) and the store kept listening on it after the
    run: a DDP run launched later from this process inherited the port and failed with EADDRINUSE."""
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    port = free_port()
    if stale_port:
        monkeypatch.setenv("MASTER_PORT", str(port))
    else:
        monkeypatch.delenv("MASTER_PORT", raising=False)
    trainer = _trainer(tmp_path, GeoHybridStrategy())
    trainer.fit(TinyModel())
    assert trainer.global_step == 3
    assert os.environ.get("MASTER_PORT") == (str(port) if stale_port else None) and "MASTER_ADDR" not in os.environ
    with socket.socket() as probe:
        probe.bind(("", port))  # nothing of the run still listens on it


def test_single_device_checkpoint_loads_back_for_resume_and_test(tmp_path):
    """The single-device plan leaves plain tensors, which Lightning's ModelParallelStrategy refuses to load a
    checkpoint into; a one-device geo_hybrid run must resume (and test) from its own checkpoint."""
    trained = TinyModel()
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt")
    _trainer(tmp_path / "first", GeoHybridStrategy(), enable_checkpointing=True, callbacks=[checkpoints]).fit(trained)
    ckpt = checkpoints.last_model_path or checkpoints.best_model_path
    assert ckpt.endswith("step=3.ckpt")

    resumed = TinyModel(lr=0.0)  # a fresh init: only the checkpoint can make it equal to `trained`
    trainer = _trainer(tmp_path / "resumed", GeoHybridStrategy(), max_steps=3)
    trainer.fit(resumed, ckpt_path=ckpt)  # restored at step 3 of 3: nothing left to train
    assert trainer.global_step == 3
    for a, b in zip(trained.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    further = _trainer(tmp_path / "further", GeoHybridStrategy(), max_steps=5)
    further.fit(TinyModel(), ckpt_path=ckpt)
    assert further.global_step == 5


class InOrderModel(TinyModel):
    """TinyModel on a loader in dataset order (``shuffle=False``), recording the rows of every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[0][:, 0].tolist())
        return super().training_step(batch, batch_idx)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(super().train_dataloader().dataset, batch_size=8, shuffle=False)


def test_one_device_keeps_the_users_sampler_and_order(tmp_path):
    """Lightning gives every ModelParallelStrategy a shuffling DistributedSampler; on one device geo_hybrid must
    train on the user's order, bit for bit like the same run without it."""
    runs = {}
    for name, strategy in (("plain", "auto"), ("geo_hybrid", GeoHybridStrategy())):
        torch.manual_seed(0)
        model = InOrderModel()
        trainer = _trainer(tmp_path / name, strategy, max_steps=6)
        trainer.fit(model)
        assert isinstance(trainer.train_dataloader.sampler, torch.utils.data.SequentialSampler)
        runs[name] = (model.seen, [p.detach().clone() for p in model.parameters()])
    assert runs["geo_hybrid"][0] == runs["plain"][0]
    for a, b in zip(runs["geo_hybrid"][1], runs["plain"][1], strict=True):
        assert torch.equal(a, b)


def test_one_device_works_in_a_notebook_where_lightning_refuses_launchers(tmp_path, monkeypatch):
    """Lightning refuses, in an interactive session, any strategy with a launcher that cannot run there; one
    process needs no launcher, so ``strategy="geo_hybrid"`` builds in Jupyter (the quick-start notebook)."""
    import lightning.pytorch.trainer.connectors.accelerator_connector as connector

    monkeypatch.setattr(connector, "_IS_INTERACTIVE", True)
    trainer = pl.Trainer(strategy="geo_hybrid", accelerator="cpu", devices=1, logger=False)
    assert isinstance(trainer.strategy, GeoHybridStrategy) and trainer.strategy.launcher is None


def test_a_module_with_configure_model_parallelizes_itself(tmp_path):
    class SelfParallel(TinyModel):
        def configure_model(self) -> None:
            self.saw_mesh = self.device_mesh.mesh_dim_names

    model = SelfParallel()
    trainer = _trainer(tmp_path, GeoHybridStrategy())
    trainer.fit(model)
    assert trainer.strategy.applied == {"by": "configure_model"}
    assert model.saw_mesh == ("data_parallel_replicate", "data_parallel_shard", "tensor_parallel")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"plan": "zero3"}, ValueError, "plan must be one of"),
        ({"mesh": (2, 2)}, ValueError, "mesh must be three positive integers"),
        ({"mesh": (2, 0, 1)}, ValueError, "mesh must be three positive integers"),
        ({"topology": 42}, TypeError, "topology must be None"),
        ({"topology": "/nonexistent/topo.txt"}, FileNotFoundError, "does not exist"),
        ({"model_size": -5}, ValueError, "model_size must be"),
        ({"gpu_memory_gb": 0}, ValueError, "gpu_memory_gb"),
        ({"memory_fraction": 1.5}, ValueError, "memory_fraction"),
        ({"activation_checkpointing": "sometimes"}, ValueError, "activation_checkpointing"),
        ({"prefer_simpler_within": -1}, ValueError, "prefer_simpler_within"),
        ({"bandwidths": {"infiniband": 50}}, ValueError, "unknown field"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        GeoHybridStrategy(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mesh": (2, 1, 1)}, r"mesh=\(2, 1, 1\) has 2 ranks but the run has 1"),
        ({"plan": "hsdp"}, "HSDP needs a world size"),
        ({"topology": str(A30_BRIDGES), "model_size": 1e12, "gpu_memory_gb": 24}, "no plan fits in 21.6 GB"),
    ],
)
def test_impossible_plans_fail_at_setup_with_a_clear_error(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path, GeoHybridStrategy(**kwargs)).fit(TinyModel())
    if torch.distributed.is_initialized():  # the failed set-up's group; later tests expect none
        torch.distributed.destroy_process_group()


def test_a_simulated_topology_with_fewer_gpus_than_processes_is_refused(tmp_path):
    from lightning_geo.strategies.topology import cpu_node_topology

    strategy = GeoHybridStrategy(topology=cpu_node_topology(1))
    strategy.parallel_devices = [torch.device("cpu")] * 2
    with pytest.raises(ValueError, match="1 devices per node but the Trainer runs 2"):
        strategy._local_topology()


def test_model_size_is_counted_from_the_module(tmp_path):
    strategy = GeoHybridStrategy()
    model = TinyModel(num_blocks=3)
    strategy._lightning_module = model
    size = strategy._model_size()
    assert size.parameters == sum(p.numel() for p in model.parameters())
    assert size.num_blocks == 3 and size.weight_bytes == 4
    assert GeoHybridStrategy(model_size=ModelSize(5e9))._model_size().parameters == 5e9


@pytest.mark.ddp
@pytest.mark.parametrize(
    ("mesh", "extra", "name", "applied"),
    [
        ("2,1,1", (), "DDP", {"units": ["model"], "tensor_parallel_modules": 0}),
        ("1,2,1", ("--activation-checkpointing",), "FSDP", {"activation_checkpointing": True}),
        ("1,1,2", (), "TP2", {"units": [], "tensor_parallel_modules": 4}),  # the two MLP Linear pairs
    ],
)
def test_two_processes_replicate_shard_or_split_tensors_and_match_one_process(tmp_path, reference_losses, mesh,
                                                                             extra, name, applied):
    result = run_worker(tmp_path, 2, "--mesh", mesh, "--topology", str(A30_BRIDGES), *extra)
    assert result["plan"] == name and result["world_size"] == 2
    assert result["applied"]["by"] == "geo_hybrid" and result["applied"]["blocks"] == 2
    assert applied.items() <= result["applied"].items()
    assert result["losses"] == pytest.approx(reference_losses, rel=1e-4)


@pytest.mark.ddp
def test_four_processes_hsdp_on_bridged_pairs_matches_one_process_and_resumes_exactly(tmp_path, reference_losses):
    full = run_worker(tmp_path / "full", 4, "--mesh", "2,2,1", "--topology", str(A30_BRIDGES))
    assert full["plan"] == "HSDP 2x2" and full["device_order"] == [0, 3, 1, 2]
    assert full["sampler"] == {"num_replicas": 4, "rank": 0}
    assert full["losses"] == pytest.approx(reference_losses, rel=1e-4)
    checkpoint = tmp_path / "full" / "ckpt" / "epoch=0-step=3.ckpt"
    assert checkpoint.is_dir() and len(list(checkpoint.glob("*.distcp"))) == 4  # one shard file per rank
    resumed = run_worker(tmp_path / "resumed", 4, "--mesh", "2,2,1", "--topology", str(A30_BRIDGES),
                         "--resume", str(checkpoint))
    assert resumed["global_step"] == 6
    assert resumed["losses"] == pytest.approx(full["losses"][3:], rel=1e-5)


@pytest.mark.ddp
def test_four_processes_auto_plan_on_the_bridged_topology_is_the_planners_choice(tmp_path, reference_losses):
    result = run_worker(tmp_path, 4, "--topology", str(A30_BRIDGES))
    expected = plan_parallelism(single_node(read_topology_file(A30_BRIDGES).subset([0, 1, 2, 3])),
                                ModelSize(result["parameters"], num_blocks=2))
    assert result["plan"] == expected.chosen.name
    assert result["losses"] == pytest.approx(reference_losses, rel=1e-4)


@pytest.mark.ddp
def test_two_nodes_each_read_their_own_topology_and_rank_zero_plans_on_both(tmp_path, reference_losses):
    """Two 'nodes' of 2 processes on this machine (two torchrun launches sharing a rendezvous): each node reads
    its own topology file, rank 0 gathers them in node order and plans on the whole cluster."""
    files = [tmp_path / f"node{i}.txt" for i in range(2)]
    for file in files:
        file.write_text(A30_BRIDGES.read_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    port = free_port()
    launches = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
             "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}", str(WORKER),
             "--out", str(tmp_path / "out"), "--topology", str(tmp_path / "node{node}.txt")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for node in range(2)
    ]
    for launch in launches:
        _, stderr = launch.communicate(timeout=300)
        assert launch.returncode == 0, stderr[-4000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["world_size"] == 4
    assert result["nodes"] == [f"file:{file}" for file in files]
    node = read_topology_file(A30_BRIDGES).subset([0, 1])
    expected = plan_parallelism(single_node(node, num_nodes=2), ModelSize(result["parameters"], num_blocks=2))
    assert result["plan"] == expected.chosen.name
    assert result["losses"] == pytest.approx(reference_losses, rel=1e-4)
