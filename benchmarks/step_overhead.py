"""What does each GEO part add to a training step? Kernels (non-view aten ops) and host syncs, counted exactly.

``python benchmarks/step_overhead.py [--model demo|gpt2|all] [--arms plain,GeoAdamW,...] [--log-every 8]``

A small or medium model's GPU step is launch-bound: its time follows the kernels launched and the host syncs
that stall the launch queue. Both are counted here on a CPU with :mod:`lightning_geo.utils.step_cost` (a
``TorchDispatchMode``), through real ``Trainer.fit`` runs in ``16-mixed`` (fp16 autocast with Lightning's
``GradScaler``); a step's cost is the difference between a 24- and an 8-step fit over 16, so set-up cancels.
The counts do not depend on the machine's speed (fp16 on a CPU is emulated and slow, so the models are tiny:
the kernels per step depend on the layers, not their width).

Arms: ``plain`` (Lightning + ``torch.optim.AdamW``), each part alone (``precision``:
``PredictiveScalingPrecision``; ``curriculum``: ``DynamicCurriculum(mode="seq_len", deadline=0.3)``;
``SparsityAwareLR``; ``GeoAdamW`` in place of AdamW; ``geo_hybrid``: ``strategy="geo_hybrid"`` on one
device) and ``all`` of them together; ``BatchSizeSchedule`` (held at 2 micro-batches per step, measuring the gradient
noise scale every 10 steps) against ``plain-accumulate2`` (plain with ``accumulate_grad_batches=2``); GeoAdamW is
pinned to its accelerator path (``AcceleratorRowPath``).
Models: the demo GPT (4 blocks, untied head) and a 12-block, narrow
GPT-2 (Hugging Face ``GPT2LMHeadModel``, tied embedding and head). Every arm logs to TensorBoard every
``--log-every`` steps (default 8, so logging steps weigh more than at Lightning's default of 50).
The budget: each arm at most x1.10 plain's ops and +1 host sync per step.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Callable
from functools import partial

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from bench_common import code_version, quiet_lightning
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.precision import MixedPrecision

import lightning_geo  # noqa: F401  (registers "geo_hybrid")
from lightning_geo.callbacks import BatchSizeSchedule, DynamicCurriculum, SparsityAwareLR
from lightning_geo.demo.corpus import Corpus
from lightning_geo.demo.data import CharDataModule
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.optim import GeoAdamW
from lightning_geo.precision import PredictiveScalingPrecision
from lightning_geo.utils.step_cost import StepCost, measure_step_cost
from lightning_geo.utils.table import format_table

ARMS: tuple[str, ...] = ("plain", "precision", "curriculum", "SparsityAwareLR", "GeoAdamW", "geo_hybrid", "all",
                         "plain-accumulate2", "BatchSizeSchedule")
BASELINE: dict[str, str] = {"BatchSizeSchedule": "plain-accumulate2", "plain-accumulate2": "plain-accumulate2"}
"""The arm each arm is counted against (``plain`` where not named): ``BatchSizeSchedule`` steps over 2 micro-batches
(its ``min_accumulation``), so its baseline is plain Lightning with ``accumulate_grad_batches=2``."""
MODELS: tuple[str, ...] = ("demo", "gpt2")
MAX_OPS_RATIO = 1.10
MAX_EXTRA_SYNCS = 1.0
SEQ_LEN, BATCH = 32, 8


def synthetic_corpus(vocab_size: int, *, num_tokens: int = 40_000) -> Corpus:
    """Zipf-distributed token ids (a few frequent, many rare: an embedding with untouched rows per step)."""
    generator = torch.Generator().manual_seed(0)
    weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    ids = torch.multinomial(weights, num_tokens, replacement=True, generator=generator).to(torch.int32)
    vocab = "".join(chr(0x100 + i) for i in range(vocab_size))
    split = num_tokens * 9 // 10
    return Corpus(vocab, ids[:split], ids[split:], "synthetic Zipf", 1, 0)


class TinyGPT2(pl.LightningModule):
    """A Hugging Face ``GPT2LMHeadModel`` (tied embedding and head) trained like the demo model.

    Args:
        vocab_size: Token ids. Default 512.
        n_layer: Blocks. Default 12.
        n_embd: Width. Default 32.
        optimizer: ``"adamw"`` or ``"geo_adamw"``. Default ``"adamw"``.
    """

    def __init__(self, vocab_size: int = 512, n_layer: int = 12, n_embd: int = 32, optimizer: str = "adamw") -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=vocab_size, n_positions=SEQ_LEN, n_embd=n_embd, n_layer=n_layer, n_head=2)
        self.model = GPT2LMHeadModel(config)
        self.optimizer = optimizer

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (B, T) each
        logits = self.model(input_ids=x).logits  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        optimizer_class = GeoAdamW if self.optimizer == "geo_adamw" else torch.optim.AdamW
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
        return optimizer_class(groups, lr=1e-3, betas=(0.9, 0.95))


class AcceleratorRowPath(Callback):
    """Pins GeoAdamW to the path it takes on an accelerator (``rows_on_host=False``: no host read per step).

    On a CPU GeoAdamW reads the touched rows' indices instead (a host read there waits for nothing), which is
    not what a GPU step pays; this benchmark counts the GPU's path.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            if isinstance(optimizer, GeoAdamW):
                for group in optimizer.param_groups:
                    group["rows_on_host"] = False


def build_model(model: str, optimizer: str, steps: int) -> tuple[pl.LightningModule, CharDataModule]:
    """The model and its data for one arm: ``model`` in :data:`MODELS`, ``optimizer`` ``adamw``/``geo_adamw``."""
    pl.seed_everything(0, verbose=False)
    if model == "demo":
        corpus = synthetic_corpus(96)
        module: pl.LightningModule = CharLanguageModel(
            corpus.vocab, seq_len=SEQ_LEN, n_layer=4, n_head=4, n_embd=32, max_steps=steps, warmup_steps=2,
            optimizer=optimizer,
        )
    elif model == "gpt2":
        corpus = synthetic_corpus(512)
        module = TinyGPT2(vocab_size=512, optimizer=optimizer)
    else:
        raise ValueError(f"model={model!r} is not one of {MODELS}")
    return module, CharDataModule(corpus, seq_len=SEQ_LEN, batch_size=BATCH, val_samples=BATCH)


def fit(arm: str, model: str, steps: int, *, log_every: int = 8, logs: str | None = None) -> pl.Trainer:
    """Train ``model`` for ``steps`` optimizer steps in ``16-mixed`` on the CPU with the GEO parts of ``arm``."""
    if arm not in ARMS:
        raise ValueError(f"arm={arm!r} is not one of {ARMS}")
    together = arm == "all"
    module, data = build_model(model, "geo_adamw" if arm == "GeoAdamW" or together else "adamw", steps)
    precision = (PredictiveScalingPrecision("16-mixed", "cpu") if arm == "precision" or together
                 else MixedPrecision("16-mixed", "cpu"))
    callbacks: list[Callback] = [AcceleratorRowPath()]
    if arm == "curriculum" or together:
        callbacks.append(DynamicCurriculum(mode="seq_len", deadline=0.3))
    if arm == "SparsityAwareLR" or together:
        callbacks.append(SparsityAwareLR())
    if arm == "BatchSizeSchedule":  # held at 2 micro-batches, so that every step counts the same work
        callbacks.append(BatchSizeSchedule(min_accumulation=2, max_accumulation=2))
    trainer = pl.Trainer(
        accumulate_grad_batches=2 if arm == "plain-accumulate2" else 1,
        accelerator="cpu", devices=1, strategy="geo_hybrid" if arm == "geo_hybrid" or together else "auto",
        plugins=[precision], max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0,
        logger=TensorBoardLogger(logs or tempfile.mkdtemp(prefix="geo_step_cost_"), name=arm),
        log_every_n_steps=log_every, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, gradient_clip_val=1.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=data)
    return trainer


def measure(arm: str, model: str, *, short_steps: int = 8, long_steps: int = 24, log_every: int = 8) -> StepCost:
    """Per-step ops and syncs of ``arm`` on ``model`` (difference of a ``long_steps`` and a ``short_steps`` fit)."""
    run: Callable[[int], object] = partial(fit, arm, model, log_every=log_every)
    torch.set_num_threads(1)
    return measure_step_cost(run, short_steps=short_steps, long_steps=long_steps)


def rows_for(model: str, arms: tuple[str, ...], **kwargs: int) -> list[list[str]]:
    """Table rows (arm, ops/step, x plain, syncs/step, + plain, within budget) of ``arms`` on ``model``."""
    baselines = [BASELINE.get(arm, "plain") for arm in arms]
    costs = {arm: measure(arm, model, **kwargs) for arm in dict.fromkeys((*baselines, *arms))}
    rows = []
    for arm, baseline in zip(arms, baselines, strict=True):
        cost, base = costs[arm], costs[baseline]
        ratio, extra = cost.ops / base.ops, cost.syncs - base.syncs
        ok = ratio <= MAX_OPS_RATIO and extra <= MAX_EXTRA_SYNCS + 1e-9
        rows.append([model, arm, f"{cost.ops:,.1f}", f"x{ratio:.3f}", f"{cost.syncs:.2f}", f"{extra:+.2f}",
                     "yes" if ok else "NO"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=(*MODELS, "all"), default="all")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {ARMS}")
    parser.add_argument("--log-every", type=int, default=8, help="Trainer log_every_n_steps (default 8)")
    args = parser.parse_args()
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {unknown}; choose from {ARMS}")
    models = MODELS if args.model == "all" else (args.model,)
    quiet_lightning()
    rows = [row for model in models for row in rows_for(model, arms, log_every=args.log_every)]
    print(f"{code_version()}, torch {torch.__version__}, CPU, 16-mixed + GradScaler, per training step: "
          f"ops = dispatched non-view aten ops, syncs = host reads; budget x{MAX_OPS_RATIO:.2f} ops, "
          f"+{MAX_EXTRA_SYNCS:g} sync (log every {args.log_every} steps)")
    print(format_table(["model", "arm", "ops/step", "x baseline", "syncs/step", "vs baseline", "in budget"], rows))


if __name__ == "__main__":
    main()
