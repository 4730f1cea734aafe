"""``lightning-geo tune`` on the demo: tune the character GPT's optimiser and shape at a fixed token budget.

Every trial trains on the same number of training characters (``tokens``), whatever its batch size, so a
bigger batch means fewer steps: the comparison a user with a fixed compute budget cares about. The monitored
metric is the demo's ``val/loss`` (nats per character) after the last step.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lightning_geo.tuning import Categorical, Float, Int, SearchSpace, Trial

DEMO_MONITOR = "val/loss"


def demo_search_space() -> SearchSpace:
    """Learning rate, weight decay, warmup (share of the steps), depth, width and batch size of the demo model."""
    return SearchSpace(
        {
            "lr": Float(3e-4, 3e-2, log=True),
            "weight_decay": Float(1e-3, 0.3, log=True),
            "warmup": Float(0.0, 0.3),
            "n_layer": Int(1, 4),
            "n_embd": Categorical([64, 128]),
            "batch_size": Categorical([16, 32, 64]),
        }
    )


@lru_cache(maxsize=4)
def _corpus(path: str | None) -> Any:
    from lightning_geo.demo.corpus import load_corpus

    return load_corpus(path)


@dataclass
class DemoTrainFn:
    """Train the demo model with one config and report ``val/loss`` (a picklable ``train_fn`` for ``GeoTuner``).

    Args:
        tokens: Training characters per trial; steps = ``tokens // (batch_size * seq_len)``. Default 300 000.
        corpus: Text file or folder; ``None``: the Python standard library's sources.
        seq_len: Characters per sample. Default 64.
        val_every: Validate (and report to the pruner) every this many steps. Default 25.
        accelerator: Lightning accelerator. Default ``"auto"``.
        seed: Seeds model initialisation and data order (the same for every trial). Default 0.
    """

    tokens: int = 300_000
    corpus: str | None = None
    seq_len: int = 64
    val_every: int = 25
    accelerator: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tokens", "seq_len", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")

    def steps(self, batch_size: int) -> int:
        """Optimizer steps of a trial with ``batch_size``."""
        return max(1, self.tokens // (batch_size * self.seq_len))

    def __call__(self, config: dict[str, Any], trial: Trial) -> float:
        import lightning.pytorch as pl

        from lightning_geo.demo.data import CharDataModule
        from lightning_geo.demo.model import CharLanguageModel
        from lightning_geo.demo.run import ValidateOnLastStep

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        pl.seed_everything(self.seed, verbose=False)
        corpus = _corpus(self.corpus)
        steps = self.steps(config["batch_size"])
        data = CharDataModule(corpus, seq_len=self.seq_len, batch_size=config["batch_size"], val_samples=128)
        model = CharLanguageModel(
            corpus.vocab,
            seq_len=self.seq_len,
            n_layer=config["n_layer"],
            n_embd=config["n_embd"],
            n_head=4,
            lr=config["lr"],
            weight_decay=config["weight_decay"],
            warmup_steps=round(config["warmup"] * steps),
            max_steps=steps,
        )
        trainer = pl.Trainer(
            accelerator=self.accelerator,
            devices=1,
            max_steps=steps,
            val_check_interval=min(self.val_every, steps),
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            gradient_clip_val=1.0,
            callbacks=[trial.reporter(), ValidateOnLastStep()],
            logger=trial.logger(),
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            log_every_n_steps=10,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\).*", FutureWarning)
            trainer.fit(model, datamodule=data)
        return float(trainer.callback_metrics[DEMO_MONITOR])
