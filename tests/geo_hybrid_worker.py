"""One training run of the demo model for the geo_hybrid tests, started by ``torchrun`` (or plain python).

Writes ``<out>/result.json`` on rank 0: the global mean training loss of every step, the dataset indices of
every step's global batch (``samples``: the data-parallel ranks' slices in rank order), the plan, the mesh and
what the strategy applied; with ``--geo`` also the final state of GeoAdamW (``optimizer``), of the density
statistics (``sparsity``), of the precision plugin (``precision``) and of the curriculum (``curriculum``). The
global batch is always 8 samples, in dataset order without ``--shuffle``, so every layout sees the same samples
at the same step and the losses of a 1-process run and a parallel one must agree to rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import lightning_geo  # noqa: F401  (registers "geo_hybrid")
from lightning_geo.callbacks import DynamicCurriculum, SparsityAwareLR
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.precision import PredictiveScalingPrecision
from lightning_geo.strategies import GeoHybridStrategy
from lightning_geo.strategies.geo_hybrid import _leave_process_group as leave_process_group
from tests.real_models import ForceBlockScales

GLOBAL_BATCH = 8
TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200))
VOCAB = "".join(sorted(set(TEXT)))
SEQ_LEN = 16


class Windows(Dataset):
    """``(input, target, index)`` windows of ``TEXT``, ``SEQ_LEN`` characters apart."""

    def __init__(self, count: int) -> None:
        ids = torch.tensor([VOCAB.index(c) for c in TEXT])
        self.samples = [(ids[i * SEQ_LEN: i * SEQ_LEN + SEQ_LEN], ids[i * SEQ_LEN + 1: i * SEQ_LEN + SEQ_LEN + 1])
                        for i in range(count)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples[i]


class Model(CharLanguageModel):
    """The demo model, recording each step's loss averaged over every data-parallel rank."""

    def __init__(self, **kwargs) -> None:
        super().__init__(VOCAB, seq_len=SEQ_LEN, n_layer=2, n_head=2, n_embd=32, warmup_steps=2, **kwargs)
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(self.trainer.strategy.reduce(loss.detach(), reduce_op="mean")))
        return loss


class SampleIds(Callback):
    """The dataset index of every row this rank trains on, per step, read off the batch's full-length inputs
    (before the curriculum shortens them: put it before ``DynamicCurriculum`` in the callbacks), so the samples
    are observed independently of the sampler that drew them."""

    def __init__(self, dataset: Windows) -> None:
        self.index = {tuple(x.tolist()): i for i, (x, _) in enumerate(dataset.samples)}
        self.steps: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append([self.index[tuple(row.tolist())] for row in batch[0]])

    def global_batches(self, data_parallel_rank: int) -> list[list[int]]:
        """Every step's global batch: the data-parallel ranks' rows in rank order (a collective on every rank
        while the process group is up; ranks of one tensor-parallel group read the same rows, taken once)."""
        gathered: list = [(data_parallel_rank, self.steps)]
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (data_parallel_rank, self.steps))
        by_rank = {}
        for rank, steps in gathered:
            by_rank.setdefault(rank, steps)
        return [[i for rank in sorted(by_rank) for i in by_rank[rank][step]] for step in range(len(self.steps))]


def _whole(tensor) -> torch.Tensor:
    """A tensor in full (a DTensor gathered from its shards: a collective), as float64 on the CPU."""
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().double().cpu()


def optimizer_state(model, optimizer) -> dict[str, dict]:
    """Per parameter name, its optimizer state: 0-D and 1-D entries (step, GeoAdamW's ``row_step`` and
    ``density_ema``) in full, larger ones (the moments) as float64 norms. Every rank must call it."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():  # a validation leaves FSDP's root module unsharded: other parameter objects
        if isinstance(module, FSDPModule):
            module.reshard()
    out: dict[str, dict] = {}
    for name, param in model.named_parameters():
        state = optimizer.state.get(param, {})
        entry: dict = {}
        for key in sorted(state):
            value = state[key]
            if isinstance(value, torch.Tensor):
                whole = _whole(value)
                entry[key] = whole.tolist() if whole.dim() <= 1 else float(whole.norm())
            elif isinstance(value, (int, float, str)):
                entry[key] = value
        out[name] = entry
    return out


class GeoRecorder(Callback):
    """Per step, what the GEO parts decided: loss scale, skipped steps, sequence length, LR multiplier, density;
    and the norm of every parameter's unscaled gradient as the optimizer receives it (whole, not a shard)."""

    def __init__(self) -> None:
        self.record: dict[str, list] = {"scale": [], "skipped": [], "seq_len": [], "multiplier": [], "density": [],
                                        "grad_norm": [], "block_scales": []}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        norms = {}
        for name, param in pl_module.named_parameters():
            grad = param.grad
            if grad is not None:
                grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
                norms[name] = float(grad.float().norm())
        self.record["grad_norm"].append(norms)

    def on_after_backward(self, trainer, pl_module):
        self.record["block_scales"].append(getattr(trainer.precision_plugin, "block_scales", {}))  # as used

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        precision = trainer.precision_plugin
        sparsity = next(c for c in trainer.callbacks if isinstance(c, SparsityAwareLR))
        self.record["scale"].append(getattr(precision, "scale", 1.0))
        self.record["skipped"].append(getattr(precision, "skipped_steps", 0))
        self.record["seq_len"].append(int(batch[0].shape[1]))
        self.record["multiplier"].append(sparsity.multipliers.get("model.wte.weight"))
        self.record["density"].append(sparsity.tracker.row_density.get("model.wte.weight"))


class PhaseTrace(Callback):
    """Appends what the run is doing to a file, one line per phase, flushed at once: a process killed at a random
    moment leaves the phase it was killed in as the file's last line (``benchmarks/faults.py`` reads it)."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1)  # noqa: SIM115  (open for the whole run)

    def _write(self, phase: str, trainer) -> None:
        self.file.write(f"{phase} {trainer.global_step}\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._write("step", trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._write("after-step", trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._write("checkpoint", trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._write("epoch-end", trainer)

    def on_validation_start(self, trainer, pl_module):
        self._write("validation", trainer)


def _die_inside_checkpoint_save(save_number: int) -> None:
    """Inside the ``save_number``-th distributed checkpoint save, after the shards are written and before
    ``meta.pt``: cut this rank's shard to half its size (as a kill in the middle of writing it leaves it), then
    SIGKILL this process."""
    import lightning.pytorch.strategies.model_parallel as model_parallel

    write_shards = model_parallel._distributed_checkpoint_save
    saves = 0

    def write_then_die(state, path):
        nonlocal saves
        saves += 1
        write_shards(state, path)
        if saves == save_number:
            rank = int(os.environ.get("RANK", "0"))
            for shard in Path(path).glob(f"__{rank}_*.distcp"):
                shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    model_parallel._distributed_checkpoint_save = write_then_die


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--strategy", default="geo_hybrid", help="'geo_hybrid' or a Lightning strategy name")
    parser.add_argument("--plan", default="auto")
    parser.add_argument("--mesh", default=None, help="R,S,T")
    parser.add_argument("--topology", default=None,
                        help="a `nvidia-smi topo -m` file to plan on; '{node}' in it becomes this node's rank")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--resume", default=None, help="checkpoint path (or 'last') to resume from")
    parser.add_argument("--every", type=int, default=3, help="checkpoint every this many steps")
    parser.add_argument("--save-last", action="store_true", help="ModelCheckpoint(save_last=True)")
    parser.add_argument("--kill-in-save", type=int, default=None,
                        help="the process cuts its shard short and is SIGKILLed inside this (1-based) checkpoint save")
    parser.add_argument("--in-place-saves", action="store_true",
                        help="save as Lightning's ModelParallelStrategy does: into the checkpoint's own folder")
    parser.add_argument("--shuffle", action="store_true",
                        help="a shuffled DataLoader, sharded by Lightning (with --geo: the curriculum's sampler)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--validate", action="store_true", help="validate on 2 batches at the end of every epoch")
    parser.add_argument("--trace", default=None, help="append each phase of the run to this file (PhaseTrace)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="force activation checkpointing")
    parser.add_argument("--geo", choices=("adamw", "geo_adamw"), default=None,
                        help="add every GEO part: PredictiveScalingPrecision('16-mixed'), DynamicCurriculum "
                             "(seq_len), SparsityAwareLR (decay_rows='touched'), with this optimizer")
    parser.add_argument("--force-block-scales", action="store_true",
                        help="with --geo: every block region at its own scale (ForceBlockScales)")
    parser.add_argument("--precision", default="16-mixed",
                        help="with --geo: the precision plugin's precision; '32': no plugin, float32")
    parser.add_argument("--save-weights", action="store_true",
                        help="also write the final parameters, whole, to <out>/weights.pt (rank 0)")
    args = parser.parse_args()

    devices = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    num_nodes = int(os.environ.get("WORLD_SIZE", "1")) // devices
    topology = args.topology.format(node=os.environ.get("GROUP_RANK", "0")) if args.topology else None
    if args.strategy == "geo_hybrid":
        mesh = tuple(int(v) for v in args.mesh.split(",")) if args.mesh else None
        strategy = GeoHybridStrategy(args.plan, mesh=mesh, topology=topology,
                                     activation_checkpointing=True if args.activation_checkpointing else "auto")
    else:
        strategy = args.strategy
    torch.manual_seed(0)
    model = Model(max_steps=args.steps, **({"optimizer": args.geo} if args.geo else {}))
    out = Path(args.out)
    geo = GeoRecorder() if args.geo else None
    sample_ids = SampleIds(Windows(3 * GLOBAL_BATCH))
    geo_parts: dict = {} if geo is None else {
        "plugins": [] if args.precision == "32" else [PredictiveScalingPrecision(args.precision)],
        "callbacks": [DynamicCurriculum(mode="seq_len", deadline=0.5, min_seq_len=4, seq_len_step=4),
                      SparsityAwareLR(decay_rows="touched"), geo,
                      *([ForceBlockScales()] if args.force_block_scales else [])],
    }
    trainer = pl.Trainer(
        strategy=strategy, accelerator="cpu", devices=devices, num_nodes=num_nodes, max_steps=args.steps,
        logger=TensorBoardLogger(out, name="", version="tb"), enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=args.shuffle,
        limit_val_batches=2 if args.validate else 0,
        log_every_n_steps=1,
        callbacks=[sample_ids, ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=args.every, save_top_k=-1,
                                   save_last=args.save_last),
                   *geo_parts.get("callbacks", []), *([PhaseTrace(args.trace)] if args.trace else [])],
        plugins=geo_parts.get("plugins"),
    )

    sampler_kwargs: dict = {}  # as the strategy gave them during the fit (a one-process mesh is gone after it)

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            # Lightning's own sampler would shuffle; this one keeps dataset order on the strategy's replicas
            kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {"num_replicas": 1, "rank": 0}
            sampler_kwargs.update(kwargs)
            dataset = Windows(3 * GLOBAL_BATCH)
            batch_size = GLOBAL_BATCH // kwargs["num_replicas"]
            if args.shuffle:
                return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=args.workers)
            sampler = DistributedSampler(dataset, shuffle=False, **kwargs)
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=args.workers)

        def val_dataloader(self):
            kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {"num_replicas": 1, "rank": 0}
            dataset = Windows(2 * GLOBAL_BATCH)
            sampler = DistributedSampler(dataset, shuffle=False, **kwargs)
            return DataLoader(dataset, batch_size=GLOBAL_BATCH // kwargs["num_replicas"], sampler=sampler)

    if args.in_place_saves:
        from lightning.pytorch.strategies import ModelParallelStrategy

        GeoHybridStrategy.save_checkpoint = ModelParallelStrategy.save_checkpoint
        GeoHybridStrategy.remove_checkpoint = ModelParallelStrategy.remove_checkpoint
    if args.kill_in_save is not None:
        _die_inside_checkpoint_save(args.kill_in_save)
    trainer.fit(model, datamodule=Data(), ckpt_path=args.resume)
    # every rank joins the gathers of sharded parameters; float64 sums: a fingerprint of the final weights
    weights = [float((p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double().sum())
               for p in model.parameters()]
    whole = {name: _whole(p).float() for name, p in model.named_parameters()} if args.save_weights else {}
    samples = sample_ids.global_batches(sampler_kwargs.get("rank", 0))
    optimizer = optimizer_state(model, trainer.optimizers[0]) if geo is not None else None
    if trainer.is_global_zero:
        result = {"losses": model.losses, "parameters": sum(p.numel() for p in model.parameters()), "weights": weights,
                  "world_size": trainer.world_size, "global_step": trainer.global_step, "samples": samples,
                  "train_samples": len(sample_ids.index)}
        if args.save_weights:
            torch.save(whole, out / "weights.pt")
        if isinstance(trainer.strategy, GeoHybridStrategy):
            plan = trainer.strategy.plan
            result.update(plan=plan.name, mesh=list(plan.mesh_shape), applied={
                k: v for k, v in trainer.strategy.applied.items() if isinstance(v, (int, str, bool, list))
            }, device_order=list(plan.device_order), table=trainer.strategy.report.table(),
                sampler=sampler_kwargs,
                nodes=[node.source for node in trainer.strategy.cluster.nodes])
        if geo is not None:
            result["geo"] = geo.record
            result["optimizer"] = optimizer
            sparsity = next(c for c in trainer.callbacks if isinstance(c, SparsityAwareLR)).tracker
            result["sparsity"] = {"row_density": sparsity.row_density, "measurements": sparsity.measurements,
                                  "pending_steps": sparsity.pending_steps,
                                  "hit_counts": {n: c.tolist() for n, c in sparsity.hit_counts.items()}}
            curriculum = next(c for c in trainer.callbacks if isinstance(c, DynamicCurriculum))
            estimator = curriculum.state_dict()["estimator"]  # the mastery estimate's smoothed loss per batch
            result["curriculum"] = {"threshold": curriculum.threshold, "progress": curriculum.progress,
                                    "samples_seen": curriculum.samples_seen, "tokens_seen": curriculum.tokens_seen,
                                    "smoothed_losses": estimator["history"]}
            precision = trainer.precision_plugin
            if isinstance(precision, PredictiveScalingPrecision):
                state = precision.state_dict()
                result["precision"] = {"steps": state["steps"], "skipped_steps": state["skipped_steps"],
                                       "regions": state["regions"]["names"], "scales": state["regions"]["scales"]}
        (out / "result.json").write_text(json.dumps(result))
    # every rank leaves the gloo group together, whatever strategy ran (Lightning's DDP leaves it to exit)
    leave_process_group()


if __name__ == "__main__":
    main()
