"""Wrong inputs a user could plausibly give to GEO: does each one end in an error that names what was wrong?

    python benchmarks/bad_inputs.py [--parts recipe,cli,...] [--cli-timeout 90]

Each case is one wrong input to one public part of ``lightning_geo`` (a keyword of ``recipe()``, an argument of a
callback, the precision plugin, the strategy, the optimizers, the tuner and its search space, the Optuna and Ray
bridges, the checkpoint reader and other helpers) or to one ``lightning-geo`` sub-command. Most are tried at
construction; the few a part can only see once it runs (a deadline the run cannot meet, a Trainer setting that
fights a callback, a topology file that does not parse) go through a ``Trainer.fit`` of a tiny model for 2 steps
on the CPU. What happens is one of:

- ``named``: an error raised by GEO's own code whose message names the argument or flag (``deadline=...``,
  ``--budget``; where the case says so, the file it is about), or Python's own error for a misspelt keyword (which
  names it). On the command line: a non-zero exit whose last line on stderr names the flag, without a traceback.
- ``raw``: an error from deep inside torch, Lightning, SQLAlchemy, ..., or one raised in GEO's code that does not
  say which argument is wrong (a ``TypeError`` from comparing a string with a number); on the command line a
  traceback, or a last line that does not name the flag.
- ``accepted``: no error and no warning naming the argument: the wrong input was taken silently.
- ``warned``: no error, but a warning that names the argument (the soft answer, for settings that are odd rather
  than impossible).
- ``lightning-same``: an error Lightning (or PyTorch) raises the same way without GEO: the case makes the same call
  without GEO, and the two errors must match in type and message.

Each command-line case runs in its own process with a timeout. To keep the sweep short, those processes are forked
from one runner process that has imported ``lightning_geo`` once (the import alone takes seconds); two of them are
also run through the installed ``lightning-geo`` script, and the sweep says whether both ended the same way. A
command-line case that would train if its input were taken uses a tiny corpus and model for 2 steps, so an
accepted input ends quickly, with exit status 0. The in-process cases run meanwhile, on one thread.

The table lists every case (id, part, input, outcome, the first 90 characters of the message, and a note in
brackets where the outcome is debatable); then a summary line per part and in total, and the full messages of the
raw, accepted and warned cases. The results go to ``benchmarks/results/bad_inputs.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from bench_common import QUIET_TRAINER, Transcript, code_version, command_line, quiet_lightning, write_results
from lightning.pytorch.callbacks import GradientAccumulationScheduler, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import lightning_geo
from lightning_geo import recipe
from lightning_geo.callbacks import (
    BatchSizeSchedule,
    CurriculumSampler,
    DynamicCurriculum,
    GradientNoiseScale,
    LengthBucketing,
    SparsityAwareLR,
)
from lightning_geo.optim import GeoAdamW, GeoMuon
from lightning_geo.precision import PredictiveScalingPrecision
from lightning_geo.strategies import Bandwidths, GeoHybridStrategy
from lightning_geo.strategies.checkpoint import load_module, read_checkpoint
from lightning_geo.tuning import (
    BayesianOptimizer,
    Categorical,
    CurvePruner,
    Float,
    GeoTuner,
    Int,
    MedianPruner,
    SearchSpace,
    SubprocessExecutor,
)
from lightning_geo.utils import geo_tag, reduce_tensor
from lightning_geo.utils.table import format_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bad_inputs.txt"
GEO_DIR = os.path.realpath(Path(lightning_geo.__file__).parent)
THIS_FILE = os.path.realpath(__file__)
OUTCOMES = ("named", "raw", "accepted", "warned", "lightning-same")
MESSAGE_CHARS = 90
CLI_WORKERS = 2  # command-line cases at once (the in-process cases run beside them, on one thread)
QUIET = {k: v for k, v in QUIET_TRAINER.items() if k not in ("accelerator", "devices")}
"""A quiet Trainer's settings without the device choice, for the cases about ``accelerator``/``devices``."""


# ------------------------------------------------------------------ cases
@dataclass
class Case:
    """One wrong input: ``run()`` makes the call; ``names`` are the words a good message contains (the argument
    or flag); ``plain`` is the same call without GEO, for errors that may be Lightning's or PyTorch's own."""

    id: str
    part: str
    shown: str
    run: Callable[[], Any] | None = None
    names: tuple[str, ...] = ()
    plain: Callable[[], Any] | None = None
    note: str = ""
    argv: list[str] = field(default_factory=list)  # a command-line case: the arguments after `lightning-geo`
    script: bool = False  # also run it through the installed `lightning-geo` script
    lightning_cli: bool = False  # a fit/validate/test case: jsonargparse's own errors are Lightning's
    outcome: str = ""
    message: str = ""


CASES: list[Case] = []
_PREFIXES: dict[str, str] = {}


def add(part: str, shown: str, run: Callable[[], Any], *names: str, plain: Callable[[], Any] | None = None,
        note: str = "") -> None:
    """Register an in-process case of ``part``; its id is the part's prefix and a running number."""
    CASES.append(Case(_next_id(part), part, shown, run, names, plain, note))


def add_cli(part: str, shown: str, argv: list[str], *names: str, script: bool = False, lightning_cli: bool = False,
            note: str = "") -> None:
    """Register a command-line case: ``lightning-geo <argv>``."""
    CASES.append(Case(_next_id(part), part, shown, None, names, None, note, argv, script, lightning_cli))


def _next_id(part: str) -> str:
    prefix = _PREFIXES.setdefault(part, re.sub(r"[^a-z]", "", part.lower())[:8])
    number = sum(c.part == part for c in CASES) + 1
    return f"{prefix}-{number:02d}"


# ------------------------------------------------------------------ tiny models, data and files
VOCAB, SEQ = 32, 16


class TokenData(Dataset):
    """``n`` rows of ``SEQ`` token ids, ``(SEQ,)`` each."""

    def __init__(self, n: int = 16) -> None:
        self.x = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


class FeatureData(Dataset):
    """``n`` float feature rows ``(8,)`` with a float target: no token sequence in the batch."""

    def __init__(self, n: int = 16) -> None:
        self.x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.x[i].sum(0, keepdim=True)


class TokenStream(IterableDataset):
    """The rows of ``TokenData`` as an iterable dataset (no length, no sampler)."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(TokenData().x)


class Pieces(Dataset):
    """Token pieces of lengths 3..12 with nothing that says their length (no ``lengths``, no attention mask)."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.arange(3 + i)


class TinyLM(pl.LightningModule):
    """Embedding -> Linear -> head over ``TokenData``; next-token loss."""

    def __init__(self, data: Dataset | None = None, batch_size: int = 4) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, VOCAB)
        self.data = data if data is not None else TokenData()
        self.batch_size = batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(self.wte(x))))  # (B, T, V)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        logits = self(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return batch.float().sum(-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def train_dataloader(self) -> DataLoader:
        shuffle = not isinstance(self.data, IterableDataset)
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=shuffle)


class TinyRegressor(pl.LightningModule):
    """A Linear over ``FeatureData``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.fc(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(FeatureData(), batch_size=4, shuffle=True)


def fit(module: pl.LightningModule | None = None, **trainer_kwargs: Any) -> None:
    """Two training steps of ``module`` (default ``TinyLM()``) on one CPU, quietly; ``trainer_kwargs`` win."""
    trainer = pl.Trainer(**{**QUIET_TRAINER, "max_steps": 2, "limit_val_batches": 0, **trainer_kwargs})
    trainer.fit(module if module is not None else TinyLM())


def predict(module: pl.LightningModule, loader: DataLoader, **trainer_kwargs: Any) -> Any:
    """``trainer.predict`` of ``module`` over ``loader`` on one CPU, quietly."""
    return pl.Trainer(**{**QUIET_TRAINER, **trainer_kwargs}).predict(module, loader)


def tuner(**kwargs: Any) -> GeoTuner:
    """A ``GeoTuner`` over a one-parameter space in the sweep's scratch folder, with ``kwargs``."""
    space = kwargs.pop("space", SearchSpace({"lr": Float(1e-4, 1e-1, log=True)}))
    return GeoTuner(space, **{"log_dir": FILES.root / "tuning", "verbose": False, "max_trials": 2, **kwargs})


def constant_trial(config: dict[str, Any], trial: Any) -> dict[str, float]:
    """A trial that trains nothing and reports ``val_loss``."""
    return {"val_loss": 1.0}


TUNE_MODEL = '''
import torch
from lightning.pytorch.demos.boring_classes import BoringModel


class ValLossModel(BoringModel):
    """BoringModel with an lr argument that logs val_loss."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr

    def validation_step(self, batch, batch_idx):
        loss = self.step(batch)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)
'''
"""``tune_model.py``: the model the study files name, written to the scratch folder (on the runner's path)."""

STUDY = {
    "monitor": "val_loss",
    "max_trials": 1,
    "space": {"model.lr": {"float": [0.001, 0.1], "log": True}},
    "model": {"class_path": "tune_model.ValLossModel"},
    "trainer": {"max_steps": 1, "limit_val_batches": 1, "accelerator": "cpu", "enable_progress_bar": False,
                "enable_model_summary": False, "enable_checkpointing": False},
}
"""A study file that works (one 1-step trial of a BoringModel); each tune case breaks one thing in it."""


class Files:
    """The sweep's scratch files: corpora, checkpoints (good, garbage, cut short), topology and study files."""

    root: Path = Path()

    def path(self, name: str) -> str:
        return str(self.root / name)

    def write(self, name: str, text: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def study(self, name: str, **changes: Any) -> str:
        """A study YAML: ``STUDY`` with ``changes`` (a value of ``None`` removes the key)."""
        import yaml

        spec = {**STUDY, **changes}
        return self.write(f"studies/{name}.yaml", yaml.safe_dump({k: v for k, v in spec.items() if v is not None}))

    def make(self) -> None:
        from lightning_geo.demo.model import CharLanguageModel

        self.root = Path(tempfile.mkdtemp(prefix="geo_bad_inputs_"))
        (self.root / "cli").mkdir()
        text = (ROOT / "README.md").read_text(encoding="utf-8")[:30_000]
        self.write("corpus/tiny.txt", text)
        self.write("little.txt", text[:40])
        self.write("empty.txt", "")
        self.write("binary.bin", bytes(range(256)) * 8)
        self.write("garbage.ckpt", "this is not a checkpoint\n")
        buffer = io.BytesIO()
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, buffer)
        self.write("truncated.ckpt", buffer.getvalue()[: len(buffer.getvalue()) // 2])
        buffer = io.BytesIO()
        torch.save([1, 2, 3], buffer)
        self.write("list.ckpt", buffer.getvalue())
        (self.root / "empty_dir").mkdir()
        self.write("bad_dcp/.metadata", "garbage")
        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save({"w": torch.randn(64, 64)}, checkpoint_id=self.path("cut_dcp"))
        data = next((self.root / "cut_dcp").glob("*.distcp"))
        data.write_bytes(data.read_bytes()[:100])
        vocab = "".join(sorted(set(text)))
        model = CharLanguageModel(vocab, seq_len=16, n_layer=1, n_head=2, n_embd=16)
        torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                    "pytorch-lightning_version": lightning.__version__}, self.path("demo.ckpt"))
        torch.save({"state_dict": BoringModel().state_dict(), "hyper_parameters": {},
                    "pytorch-lightning_version": lightning.__version__}, self.path("boring.ckpt"))
        self.write("texts/a.txt", text[:2000])
        self.write("binaries/a.bin", bytes(range(256)) * 4)
        self.write("topo_garbage.txt", "GPU0 GPU1\nthis is not nvidia-smi output\n")
        self.write("topo_empty.txt", "")
        self.write("tune_model.py", TUNE_MODEL)


FILES = Files()


# ------------------------------------------------------------------ the cases, part by part
def recipe_cases() -> None:
    part = "recipe"

    def trainer(**kwargs: Any) -> pl.Trainer:
        return pl.Trainer(**recipe(**kwargs), **QUIET)

    add(part, 'exclude=["precison"]', lambda: recipe(exclude=["precison"]), "exclude")
    add(part, 'exclude=["curriculum"]', lambda: recipe(exclude=["curriculum"]), "exclude")
    add(part, 'include=["muon"]', lambda: recipe(include=["muon"]), "include")
    add(part, 'include=["sparsity"], exclude=["sparsity"]',
        lambda: recipe(include=["sparsity"], exclude=["sparsity"]), "include", "exclude")
    add(part, "exclude=5", lambda: recipe(exclude=5), "exclude")
    add(part, 'seq_len_warmup="3 parsecs"', lambda: recipe(seq_len_warmup="3 parsecs"), "seq_len_warmup")
    add(part, "seq_len_warmup=-1", lambda: recipe(seq_len_warmup=-1), "seq_len_warmup")
    add(part, "seq_len_warmup=0", lambda: recipe(seq_len_warmup=0), "seq_len_warmup")
    add(part, "seq_len_warmup=1.5", lambda: recipe(seq_len_warmup=1.5), "seq_len_warmup")
    add(part, 'seq_len_warmup="0.5 tokens"', lambda: recipe(seq_len_warmup="0.5 tokens"), "seq_len_warmup")
    add(part, "seq_len_warmup=None", lambda: recipe(seq_len_warmup=None), "seq_len_warmup")
    add(part, 'seq_len_warmup="30%"', lambda: recipe(seq_len_warmup="30%"), "seq_len_warmup")
    add(part, 'precision="32-true"', lambda: recipe(precision="32-true"), "precision")
    add(part, 'precision="bf16"', lambda: recipe(precision="bf16"), "precision")
    add(part, "precision=16", lambda: recipe(precision=16), "precision")
    add(part, 'strategy="ddp"', lambda: recipe(strategy="ddp"), "strategy")
    add(part, 'strategy="fsdp", devices=2', lambda: recipe(strategy="fsdp", devices=2), "strategy")
    add(part, "callbacks=[ModelCheckpoint] (the class)", lambda: recipe(callbacks=[ModelCheckpoint]), "callbacks")
    add(part, 'callbacks="early_stopping"', lambda: recipe(callbacks="early_stopping"), "callbacks")
    add(part, 'plugins=[MixedPrecision("16-mixed", "cpu")]',
        lambda: recipe(plugins=[MixedPrecision("16-mixed", "cpu")]), "plugins", "precision")
    add(part, "Trainer(**recipe(devices=0))", lambda: trainer(devices=0), "devices",
        plain=lambda: pl.Trainer(devices=0, **QUIET))
    add(part, 'Trainer(**recipe(devices="two"))', lambda: trainer(devices="two"), "devices",
        plain=lambda: pl.Trainer(devices="two", **QUIET))
    add(part, 'Trainer(**recipe(accelerator="tpu"))', lambda: trainer(accelerator="tpu"), "accelerator",
        plain=lambda: pl.Trainer(accelerator="tpu", **QUIET))
    add(part, 'Trainer(**recipe(accelerator="gpu")) (no GPU here)', lambda: trainer(accelerator="gpu"),
        "accelerator", "gpu", plain=lambda: pl.Trainer(accelerator="gpu", **QUIET))
    add(part, "Trainer(**recipe(), callbacks=[...]) (beside, not inside)",
        lambda: pl.Trainer(**recipe(), callbacks=[ModelCheckpoint()]), "callbacks",
        note="Python's duplicate-keyword error; recipe() cannot catch it")
    add(part, "seq_len_warmpu=0.5 (misspelt)", lambda: recipe(seq_len_warmpu=0.5), "seq_len_warmpu")
    add(part, 'include=["batch_size"] + Trainer(accumulate_grad_batches=4), fit',
        lambda: fit(accumulate_grad_batches=4, **recipe(include=["batch_size"], exclude=["precision", "strategy"])),
        "accumulate_grad_batches")


def curriculum_cases() -> None:
    part = "DynamicCurriculum"
    C = DynamicCurriculum
    add(part, 'mode="seqlen"', lambda: C(mode="seqlen"), "mode")
    add(part, 'mode="tokens"', lambda: C(mode="tokens"), "mode")
    add(part, 'deadline="3 parsecs"', lambda: C(deadline="3 parsecs"), "deadline")
    add(part, "deadline=-1", lambda: C(deadline=-1), "deadline")
    add(part, "deadline=0", lambda: C(deadline=0), "deadline")
    add(part, "deadline=1.5", lambda: C(deadline=1.5), "deadline")
    add(part, 'deadline="0 steps"', lambda: C(deadline="0 steps"), "deadline")
    add(part, 'deadline="1.5k" (a count without a unit)', lambda: C(deadline="1.5k"), "deadline")
    add(part, "deadline=None", lambda: C(deadline=None), "deadline")
    add(part, "deadline=[0.5]", lambda: C(deadline=[0.5]), "deadline")
    add(part, 'deadline=timedelta(minutes=5)', lambda: C(deadline=timedelta(minutes=5)), "deadline")
    add(part, 'pacing="exp"', lambda: C(pacing="exp"), "pacing")
    add(part, "min_seq_len=0", lambda: C(mode="seq_len", min_seq_len=0), "min_seq_len")
    add(part, "min_seq_len=8.0", lambda: C(mode="seq_len", min_seq_len=8.0), "min_seq_len")
    add(part, "seq_len_step=-8", lambda: C(mode="seq_len", seq_len_step=-8), "seq_len_step")
    add(part, "seq_dim=2", lambda: C(mode="seq_len", seq_dim=2), "seq_dim")
    add(part, "seq_dim=-1", lambda: C(mode="seq_len", seq_dim=-1), "seq_dim")
    add(part, 'seq_len_mode="pad"', lambda: C(mode="seq_len", seq_len_mode="pad"), "seq_len_mode")
    add(part, 'seq_len_mode="reshape", seq_dim=0', lambda: C(mode="seq_len", seq_len_mode="reshape", seq_dim=0),
        "seq_dim", "seq_len_mode")
    add(part, "start_threshold=0", lambda: C(start_threshold=0), "start_threshold")
    add(part, "start_threshold=1.5", lambda: C(start_threshold=1.5), "start_threshold")
    add(part, 'start_threshold="0.5"', lambda: C(start_threshold="0.5"), "start_threshold")
    add(part, "hard_fraction=1.0", lambda: C(hard_fraction=1.0), "hard_fraction")
    add(part, 'hard_fraction="0.1"', lambda: C(hard_fraction="0.1"), "hard_fraction")
    add(part, "max_speedup=0.5", lambda: C(max_speedup=0.5), "max_speedup")
    add(part, "mastery_window=0", lambda: C(mastery_window=0), "mastery_window")
    add(part, "mastery_window=0, fit", lambda: fit(callbacks=[C(mode="seq_len", pacing="mastery",
                                                                  mastery_window=0)]), "mastery_window")
    add(part, "mastery_tolerance=-1", lambda: C(mastery_tolerance=-1), "mastery_tolerance")
    add(part, "read_every_n_batches=0", lambda: C(read_every_n_batches=0), "read_every_n_batches")
    add(part, "histogram_every_n_steps=0", lambda: C(histogram_every_n_steps=0), "histogram_every_n_steps")
    add(part, 'on_unrecognized="ignore"', lambda: C(mode="seq_len", on_unrecognized="ignore"), "on_unrecognized")
    add(part, 'scorer="difficulty"', lambda: C(scorer="difficulty"), "scorer")
    add(part, 'scorer="length", mode="seq_len"', lambda: C(scorer="length", mode="seq_len"), "scorer")
    add(part, "scorer=5", lambda: C(scorer=5), "scorer")
    add(part, 'seed="0"', lambda: C(seed="0"), "seed")
    add(part, "deadlne=0.5 (misspelt)", lambda: C(deadlne=0.5), "deadlne")
    add(part, 'deadline="500 steps", fit of 2 steps', lambda: fit(callbacks=[C(mode="seq_len",
                                                                               deadline="500 steps")]), "deadline")
    add(part, 'deadline="10 epochs", max_epochs=1', lambda: fit(max_steps=-1, max_epochs=1, callbacks=[
        C(mode="seq_len", deadline="10 epochs")]), "deadline")
    add(part, "deadline=0.5, only max_time bounds the run",
        lambda: fit(max_steps=-1, max_epochs=-1, max_time={"seconds": 30}, callbacks=[C(mode="seq_len")]),
        "deadline")
    add(part, 'mode="seq_len" on feature batches (no tokens), fit',
        lambda: fit(TinyRegressor(), callbacks=[C(mode="seq_len")]), "mode", "on_unrecognized")
    add(part, 'mode="samples" on an IterableDataset, fit',
        lambda: fit(TinyLM(TokenStream()), callbacks=[C(mode="samples")]), "sampler", "DataLoader", "mode",
        note="no argument is wrong, the data is; a message naming the sampler counts")
    add(part, 'scorer="loss", training_step returns only the loss, fit',
        lambda: fit(callbacks=[C(scorer="loss", pacing="linear")]), "scorer", "sample_loss")
    add(part, "min_seq_len=64 > the 16-token batches, fit",
        lambda: fit(callbacks=[C(mode="seq_len", min_seq_len=64)]), "min_seq_len")


def sampler_cases() -> None:
    part = "CurriculumSampler"
    data = TokenData(8)
    add(part, "CurriculumSampler([])", lambda: CurriculumSampler([]), "dataset")
    add(part, "CurriculumSampler(5)", lambda: CurriculumSampler(5), "dataset")
    add(part, "CurriculumSampler(IterableDataset)", lambda: CurriculumSampler(TokenStream()), "dataset")
    add(part, "num_replicas=0", lambda: CurriculumSampler(data, num_replicas=0, rank=0), "num_replicas")
    add(part, "rank=2, num_replicas=2", lambda: CurriculumSampler(data, num_replicas=2, rank=2), "rank")
    add(part, 'seed="abc"', lambda: CurriculumSampler(data, seed="abc"), "seed")
    add(part, "set_batch_size(0)", lambda: CurriculumSampler(data).set_batch_size(0), "batch_size")
    add(part, "set_scores(wrong length)", lambda: CurriculumSampler(data).set_scores(torch.zeros(3)), "scores")


def sparsity_cases() -> None:
    part = "SparsityAwareLR"
    S = SparsityAwareLR
    add(part, 'params="embedding" (typo)', lambda: S(params="embedding"), "params")
    add(part, "params=[]", lambda: S(params=[]), "params")
    add(part, "params=[5]", lambda: S(params=[5]), "params")
    add(part, "power=-1", lambda: S(power=-1), "power")
    add(part, "max_multiplier=0.5", lambda: S(max_multiplier=0.5), "max_multiplier")
    add(part, "ema=1.0", lambda: S(ema=1.0), "ema")
    add(part, "every_n_steps=0", lambda: S(every_n_steps=0), "every_n_steps")
    add(part, 'decay_rows="none"', lambda: S(decay_rows="none"), "decay_rows")
    add(part, 'scale_lr="yes"', lambda: S(scale_lr="yes"), "scale_lr")
    add(part, 'log_histograms="no"', lambda: S(log_histograms="no"), "log_histograms",
        note="a string taken as True")
    add(part, 'params=["nomatch.*"] (matches nothing), fit', lambda: fit(callbacks=[S(params=["nomatch.*"])]),
        "params", "nomatch")


def adamw_cases() -> None:
    part = "GeoAdamW"
    params = list(nn.Linear(4, 4).parameters())
    add(part, "lr=-1", lambda: GeoAdamW(params, lr=-1), "lr")
    add(part, 'lr="1e-3"', lambda: GeoAdamW(params, lr="1e-3"), "lr")
    add(part, "lr=nan", lambda: GeoAdamW(params, lr=float("nan")), "lr")
    add(part, "betas=(0.9, 1.0)", lambda: GeoAdamW(params, betas=(0.9, 1.0)), "betas")
    add(part, "betas=0.9", lambda: GeoAdamW(params, betas=0.9), "betas")
    add(part, "eps=-1e-8", lambda: GeoAdamW(params, eps=-1e-8), "eps")
    add(part, "weight_decay=-0.1", lambda: GeoAdamW(params, weight_decay=-0.1), "weight_decay")
    add(part, 'decay_rows="none"', lambda: GeoAdamW(params, decay_rows="none"), "decay_rows")
    add(part, 'row_wise="yes"', lambda: GeoAdamW(params, row_wise="yes"), "row_wise")
    add(part, "max_row_scale=0.5", lambda: GeoAdamW(params, max_row_scale=0.5), "max_row_scale")
    add(part, "density_power=10", lambda: GeoAdamW(params, density_power=10), "density_power")
    add(part, 'foreach="yes"', lambda: GeoAdamW(params, foreach="yes"), "foreach")
    add(part, "params=[] (empty)", lambda: GeoAdamW([]), "params",
        plain=lambda: torch.optim.AdamW([]))
    add(part, "params=a module (not its parameters)", lambda: GeoAdamW(nn.Linear(4, 4)), "params",
        plain=lambda: torch.optim.AdamW(nn.Linear(4, 4)))
    add(part, 'add_param_group({"params": ..., "lr": -1})',
        lambda: GeoAdamW(params[:1]).add_param_group({"params": params[1:], "lr": -1}), "lr")


def muon_cases() -> None:
    part = "GeoMuon"
    model = TinyLM()
    add(part, "lr=-1", lambda: GeoMuon(model, lr=-1), "lr")
    add(part, "momentum=1.0", lambda: GeoMuon(model, momentum=1.0), "momentum")
    add(part, "momentum=-0.5", lambda: GeoMuon(model, momentum=-0.5), "momentum")
    add(part, 'weight_decay="0.1"', lambda: GeoMuon(model, weight_decay="0.1"), "weight_decay")
    add(part, 'nesterov="yes"', lambda: GeoMuon(model, nesterov="yes"), "nesterov")
    add(part, "ns_steps=0", lambda: GeoMuon(model, ns_steps=0), "ns_steps")
    add(part, "ns_coefficients=(3.4, -4.7)", lambda: GeoMuon(model, ns_coefficients=(3.4, -4.7)), "ns_coefficients")
    add(part, 'ns_dtype="fp8"', lambda: GeoMuon(model, ns_dtype="fp8"), "ns_dtype")
    add(part, 'ns_dtype=torch.bfloat16 (a dtype, not its name)', lambda: GeoMuon(model, ns_dtype=torch.bfloat16),
        "ns_dtype")
    add(part, 'adjust_lr_fn="spectral"', lambda: GeoMuon(model, adjust_lr_fn="spectral"), "adjust_lr_fn")
    add(part, 'embedding_rule="muon"', lambda: GeoMuon(model, embedding_rule="muon"), "embedding_rule")
    add(part, "betas=(0.9,)", lambda: GeoMuon(model, betas=(0.9,)), "betas")
    add(part, 'routes={"nomatch": "muon"}', lambda: GeoMuon(model, routes={"nomatch": "muon"}), "routes")
    add(part, 'routes={"fc.weight": "sgd"}', lambda: GeoMuon(model, routes={"fc.weight": "sgd"}), "routes")
    add(part, 'routes={"fc.bias": "muon"} (1-D)', lambda: GeoMuon(model, routes={"fc.bias": "muon"}), "routes")
    add(part, 'routes={"[": "adamw"} (bad regex)', lambda: GeoMuon(model, routes={"[": "adamw"}), "routes")
    add(part, 'routes=["fc.weight"] (a list)', lambda: GeoMuon(model, routes=["fc.weight"]), "routes")
    add(part, "model=model.parameters()", lambda: GeoMuon(model.parameters()), "model")
    add(part, "a model with every parameter frozen",
        lambda: GeoMuon(nn.Linear(4, 4).requires_grad_(False)), "model")


def batch_size_cases() -> None:
    part = "BatchSizeSchedule"
    B = BatchSizeSchedule
    add(part, "min_accumulation=1", lambda: B(min_accumulation=1), "min_accumulation")
    add(part, "min_accumulation=2.0", lambda: B(min_accumulation=2.0), "min_accumulation")
    add(part, "max_accumulation=6 (min 2: not 2 x a power of 2)", lambda: B(max_accumulation=6), "max_accumulation")
    add(part, "max_accumulation=1", lambda: B(max_accumulation=1), "max_accumulation")
    add(part, "noise_fraction=0", lambda: B(noise_fraction=0), "noise_fraction")
    add(part, "hysteresis=-1", lambda: B(hysteresis=-1), "hysteresis")
    add(part, "ema=1.0", lambda: B(ema=1.0), "ema")
    add(part, "estimate_every=0", lambda: B(estimate_every=0), "estimate_every")
    add(part, 'lr_scaling="cubic"', lambda: B(lr_scaling="cubic"), "lr_scaling")
    add(part, "Trainer(accumulate_grad_batches=4), fit", lambda: fit(accumulate_grad_batches=4, callbacks=[B()]),
        "accumulate_grad_batches")
    add(part, "with GradientAccumulationScheduler, fit",
        lambda: fit(callbacks=[B(), GradientAccumulationScheduler({0: 2})]), "GradientAccumulationScheduler")


def noise_scale_cases() -> None:
    part = "GradientNoiseScale"
    add(part, "ema=1.5", lambda: GradientNoiseScale(ema=1.5), "ema")
    add(part, 'ema="0.9"', lambda: GradientNoiseScale(ema="0.9"), "ema")
    add(part, "update(..., b_small=8, b_big=8)", lambda: GradientNoiseScale().update(2.0, 1.0, 8, 8), "b_small",
        "b_big")
    add(part, "update(..., b_small=16, b_big=8) (swapped)", lambda: GradientNoiseScale().update(2.0, 1.0, 16, 8),
        "b_small", "b_big")


def precision_cases() -> None:
    part = "PredictiveScalingPrecision"
    P = PredictiveScalingPrecision
    add(part, 'precision="fp16"', lambda: P("fp16"), "precision")
    add(part, 'precision="16"', lambda: P("16"), "precision")
    add(part, 'precision="32-true"', lambda: P("32-true"), "precision")
    add(part, 'device="gpu"', lambda: P("16-mixed", device="gpu"), "device")
    add(part, "device=0", lambda: P("16-mixed", device=0), "device")
    add(part, 'per_block="yes"', lambda: P(per_block="yes"), "per_block")
    add(part, 'blocks="all"', lambda: P(blocks="all"), "blocks")
    add(part, "blocks=[]", lambda: P(blocks=[]), "blocks")
    add(part, "window=0", lambda: P(window=0), "window")
    add(part, "headroom=0.5", lambda: P(headroom=0.5), "headroom")
    add(part, "init_scale=1e9 (> max_scale)", lambda: P(init_scale=1e9), "init_scale")
    add(part, "min_scale=0", lambda: P(min_scale=0), "min_scale")
    add(part, "backoff_factor=2", lambda: P(backoff_factor=2), "backoff_factor")
    add(part, "probe_every_n_steps=-1", lambda: P(probe_every_n_steps=-1), "probe_every_n_steps")
    add(part, "amax_every_n_steps=0", lambda: P(amax_every_n_steps=0), "amax_every_n_steps")
    add(part, "max_consecutive_skips=0", lambda: P(max_consecutive_skips=0), "max_consecutive_skips")
    add(part, 'fp32_modules=["LayerNorm", 5]', lambda: P(fp32_modules=["LayerNorm", 5]), "fp32_modules")
    add(part, "fp32_modules=nn.LayerNorm (not in a list)", lambda: P(fp32_modules=nn.LayerNorm), "fp32_modules")
    add(part, 'fp32_modules="LayerNorm" (a string, not a list)', lambda: P(fp32_modules="LayerNorm"),
        "fp32_modules", note="each character is taken as a module name pattern")
    add(part, "growth_factor=2.0 (GradScaler's)", lambda: P(growth_factor=2.0), "growth_factor",
        note="documented as ignored: a warning is the intended answer")
    add(part, 'enabled="false"', lambda: P(enabled="false"), "enabled", note="a string taken as True")
    add(part, 'blocks=["nope"] (no such module), 16-mixed, fit',
        lambda: fit(plugins=[P("16-mixed", blocks=["nope"])]), "blocks", "nope")
    add(part, 'blocks=["nope"] (no such module), bf16-mixed, fit',
        lambda: fit(plugins=[P("bf16-mixed", blocks=["nope"])]), "blocks", "nope",
        note="debatable: bf16 has no loss scale, so no block is looked up")
    add(part, 'fp32_modules=["Nope"] (no such module), fit',
        lambda: fit(plugins=[P("bf16-mixed", fp32_modules=["Nope"])]), "fp32_modules", "Nope")
    add(part, 'plugin + Trainer(precision="bf16-mixed"), fit',
        lambda: fit(plugins=[P("bf16-mixed")], precision="bf16-mixed"), "precision",
        plain=lambda: fit(plugins=[MixedPrecision("bf16-mixed", "cpu")], precision="bf16-mixed"))


def hybrid_cases() -> None:
    part = "GeoHybridStrategy"
    H = GeoHybridStrategy
    add(part, 'plan="fsdp2"', lambda: H(plan="fsdp2"), "plan")
    add(part, 'plan="tp"', lambda: H(plan="tp"), "plan")
    add(part, "mesh=(2, 2)", lambda: H(mesh=(2, 2)), "mesh")
    add(part, "mesh=(0, 1, 1)", lambda: H(mesh=(0, 1, 1)), "mesh")
    add(part, 'mesh="2x1x1"', lambda: H(mesh="2x1x1"), "mesh")
    add(part, 'topology="/no/such/topo.txt"', lambda: H(topology="/no/such/topo.txt"), "topology")
    add(part, "topology=5", lambda: H(topology=5), "topology")
    add(part, "model_size=-1", lambda: H(model_size=-1), "model_size")
    add(part, 'model_size="7B"', lambda: H(model_size="7B"), "model_size")
    add(part, 'bandwidths={"nvlink": 50}', lambda: H(bandwidths={"nvlink": 50}), "bandwidths")
    add(part, 'bandwidths={"net": -1}', lambda: H(bandwidths={"net": -1}), "bandwidths", "net")
    add(part, "gpu_memory_gb=0", lambda: H(gpu_memory_gb=0), "gpu_memory_gb")
    add(part, "memory_fraction=1.5", lambda: H(memory_fraction=1.5), "memory_fraction")
    add(part, 'activation_checkpointing="yes"', lambda: H(activation_checkpointing="yes"),
        "activation_checkpointing")
    add(part, "prefer_simpler_within=-1", lambda: H(prefer_simpler_within=-1), "prefer_simpler_within")
    add(part, 'tensor_parallel_plan="auto", fit on 1 device',
        lambda: fit(strategy=H(tensor_parallel_plan="auto")), "tensor_parallel_plan",
        note="a plan must map module names to ParallelStyles; on one device nothing is parallel")
    add(part, "Bandwidths(pcie=16) (misspelt field)", lambda: Bandwidths(pcie=16), "pcie")
    add(part, "topology=<a file that is not nvidia-smi output>, fit",
        lambda: fit(strategy=H(topology=FILES.path("topo_garbage.txt"))), "topology",
        FILES.path("topo_garbage.txt"), note="a message naming the file counts")
    add(part, "mesh=(2, 1, 1) on 1 device, fit", lambda: fit(strategy=H(mesh=(2, 1, 1))), "mesh")
    add(part, 'plan="tensor_parallel" on 1 device, fit', lambda: fit(strategy=H(plan="tensor_parallel")), "plan")


def bucketing_cases() -> None:
    part = "LengthBucketing"
    L = LengthBucketing
    add(part, "max_tokens=0", lambda: L(max_tokens=0), "max_tokens")
    add(part, "max_tokens=4096.0", lambda: L(max_tokens=4096.0), "max_tokens")
    add(part, 'stages="predict" (a string)', lambda: L(stages="predict"), "stages")
    add(part, 'stages=["train"]', lambda: L(stages=["train"]), "stages")
    add(part, 'length_fn="len"', lambda: L(length_fn="len"), "length_fn")
    add(part, "max_batch_size=0", lambda: L(max_batch_size=0), "max_batch_size")
    add(part, "a dataset with no lengths, predict",
        lambda: predict(TinyLM(), DataLoader(Pieces(), batch_size=2, collate_fn=list), callbacks=[L()]),
        "length_fn", "lengths")
    add(part, "max_tokens=4 < the longest sample (12), predict",
        lambda: predict(TinyLM(), DataLoader(Pieces(), batch_size=2), callbacks=[L(max_tokens=4, length_fn=len)]),
        "max_tokens")


def tuner_cases() -> None:
    part = "GeoTuner"
    add(part, "space=[Float(...)] (a list, not a SearchSpace or a dict)",
        lambda: GeoTuner([Float(1e-4, 1e-1)], log_dir=FILES.root), "space")
    add(part, "max_trials=0", lambda: tuner(max_trials=0), "max_trials")
    add(part, "max_trials=2.5", lambda: tuner(max_trials=2.5), "max_trials")
    add(part, 'monitor=""', lambda: tuner(monitor=""), "monitor")
    add(part, "monitor=[]", lambda: tuner(monitor=[]), "monitor")
    add(part, 'mode="minimize"', lambda: tuner(mode="minimize"), "mode")
    add(part, 'monitor=["a", "b"], mode=["min"]', lambda: tuner(monitor=["a", "b"], mode=["min"]), "mode")
    add(part, 'executor="threads"', lambda: tuner(executor="threads"), "executor")
    add(part, "devices=[0] with the in-process executor", lambda: tuner(devices=[0]), "devices")
    add(part, "n_parallel=2 with the in-process executor", lambda: tuner(n_parallel=2), "n_parallel")
    add(part, 'executor="subprocess", devices=2 (not a list)', lambda: tuner(executor="subprocess", devices=2),
        "devices")
    add(part, 'storage="redis://localhost/0" (unknown scheme)', lambda: tuner(storage="redis://localhost/0"),
        "storage")
    add(part, 'storage="sqlite:///<missing folder>/study.db"',
        lambda: tuner(storage=f"sqlite:///{FILES.root}/missing/study.db"), "storage")
    add(part, 'storage="sqlite://relative.db" (two slashes)', lambda: tuner(storage="sqlite://relative.db"),
        "storage")
    add(part, 'storage="sqlite:relative.db"', lambda: tuner(storage="sqlite:relative.db"), "storage")
    add(part, 'storage="sqlite:///:memory:"', lambda: tuner(storage="sqlite:///:memory:"), "storage")
    add(part, 'storage="postgresql://u@host/db" (no driver installed)',
        lambda: tuner(storage="postgresql://u@host/db"), "storage")
    add(part, "storage=<an existing folder>, search", lambda: tuner(storage=FILES.root).search(constant_trial),
        "storage", str(FILES.root), note="a message naming the path counts")
    add(part, 'log_dir="/proc/nope", search', lambda: tuner(log_dir="/proc/nope").search(constant_trial),
        "log_dir", "/proc/nope", note="a message naming the path counts")
    add(part, "heartbeat_s=0", lambda: tuner(heartbeat_s=0), "heartbeat_s")
    add(part, "heartbeat_s=-1 with an Optuna storage",
        lambda: tuner(heartbeat_s=-1, storage=f"sqlite:///{FILES.root}/hb.db"), "heartbeat_s")
    add(part, 'pruner="hyperband"', lambda: tuner(pruner="hyperband"), "pruner")
    add(part, "pruner=MedianPruner (the class)", lambda: tuner(pruner=MedianPruner), "pruner")
    add(part, "pruner=optuna's MedianPruner() with the JSON-lines storage", _optuna_pruner_without_storage, "pruner")
    add(part, 'study_name="a/b"', lambda: tuner(study_name="a/b"), "study_name")
    add(part, 'seed="0"', lambda: tuner(seed="0"), "seed")
    add(part, "num_initial=0", lambda: tuner(num_initial=0), "num_initial")
    add(part, "max_consecutive_failures=0", lambda: tuner(max_consecutive_failures=0), "max_consecutive_failures")
    add(part, 'resume="no"', lambda: tuner(resume="no"), "resume", note="a string taken as True")
    add(part, 'monitor="val_acc", train_fn reports only val_loss, search',
        lambda: tuner(monitor="val_acc", max_trials=1, max_consecutive_failures=1).search(constant_trial),
        "monitor", "val_acc")
    add(part, "search(train_fn=None)", lambda: tuner().search(None), "train_fn")
    add(part, "MedianPruner(n_startup_trials=0)", lambda: MedianPruner(n_startup_trials=0), "n_startup_trials")
    add(part, "CurvePruner(optimism=0)", lambda: CurvePruner(optimism=0), "optimism")
    add(part, 'CurvePruner(optimism="high")', lambda: CurvePruner(optimism="high"), "optimism")
    add(part, "SubprocessExecutor(n_parallel=2, devices=[0])", lambda: SubprocessExecutor(2, devices=[0]),
        "devices")
    add(part, 'BayesianOptimizer(space, mode="minimize")',
        lambda: BayesianOptimizer(SearchSpace({"x": Float(0, 1)}), mode="minimize"), "mode")


def _optuna_pruner_without_storage() -> GeoTuner:
    import optuna

    return tuner(pruner=optuna.pruners.MedianPruner())


def space_cases() -> None:
    part = "search space"
    add(part, "Float(1, 0)", lambda: Float(1, 0), "low", "high")
    add(part, "Float(0, 1, log=True)", lambda: Float(0, 1, log=True), "log", "low")
    add(part, "Float(0, inf)", lambda: Float(0, float("inf")), "high")
    add(part, 'Float("1e-4", 1)', lambda: Float("1e-4", 1), "low")
    add(part, "Int(0, 10, log=True)", lambda: Int(0, 10, log=True), "log", "low")
    add(part, "Int(1.5, 3)", lambda: Int(1.5, 3), "low")
    add(part, "Int(3, 3)", lambda: Int(3, 3), "low", "high")
    add(part, "Categorical([])", lambda: Categorical([]), "choices")
    add(part, 'Categorical(["relu"])', lambda: Categorical(["relu"]), "choices")
    add(part, 'Categorical("ab")', lambda: Categorical("ab"), "choices")
    add(part, 'Categorical(["a", "a"])', lambda: Categorical(["a", "a"]), "choices")
    add(part, "SearchSpace({})", lambda: SearchSpace({}), "search space", "parameters")
    add(part, "SearchSpace([Float(0, 1)])", lambda: SearchSpace([Float(0, 1)]), "parameters")
    add(part, 'SearchSpace({"a": Float(0, 1, when={"b": 1})}) (no b)',
        lambda: SearchSpace({"a": Float(0, 1, when={"b": 1})}), "when")
    add(part, 'SearchSpace({"a": Float(0, 1, when="b")})', lambda: SearchSpace({"a": Float(0, 1, when="b")}), "when")
    add(part, "SearchSpace(..., constraints=[1])", lambda: SearchSpace({"a": Float(0, 1)}, constraints=[1]),
        "constraints")
    add(part, 'SearchSpace.from_dict({"lr": {"float": [1]}})', lambda: SearchSpace.from_dict({"lr": {"float": [1]}}),
        "lr", "float")
    add(part, 'SearchSpace.from_dict({"lr": {"flaot": [0, 1]}})',
        lambda: SearchSpace.from_dict({"lr": {"flaot": [0, 1]}}), "lr", "flaot")
    add(part, 'SearchSpace.from_dict({"lr": {"float": [0, 1], "log": "yes"}})',
        lambda: SearchSpace.from_dict({"lr": {"float": [0, 1], "log": "yes"}}), "log")
    add(part, 'space.encode([{"width": 2.0}]) (outside [0, 1])',
        lambda: SearchSpace({"width": Float(0, 1)}).encode([{"width": 2.0}]), "width")


def optuna_cases() -> None:
    part = "optuna bridge"
    try:
        from lightning_geo.tuning.optuna import GeoSampler
        from lightning_geo.tuning.optuna_pruner import GeoCurvePruner
    except ImportError:  # the optuna extra is not installed: nothing to try
        return
    add(part, "GeoSampler(num_candidates=8)", lambda: GeoSampler(num_candidates=8), "num_candidates")
    add(part, 'GeoSampler(seed="0")', lambda: GeoSampler(seed="0"), "seed")
    add(part, "GeoSampler(num_initial=0)", lambda: GeoSampler(num_initial=0), "num_initial")
    add(part, 'GeoSampler(independent_sampler="random")', lambda: GeoSampler(independent_sampler="random"),
        "independent_sampler")
    add(part, "GeoSampler(constraints_func=1)", lambda: GeoSampler(constraints_func=1), "constraints_func")
    add(part, "GeoCurvePruner(optimism=2)", lambda: GeoCurvePruner(optimism=2), "optimism")
    add(part, "GeoCurvePruner(n_startup_trials=0)", lambda: GeoCurvePruner(n_startup_trials=0), "n_startup_trials")
    add(part, "GeoCurvePruner(n_warmup_steps=-1)", lambda: GeoCurvePruner(n_warmup_steps=-1), "n_warmup_steps")


def ray_cases() -> None:
    part = "ray bridge"
    try:
        from ray import tune

        from lightning_geo.tuning.ray import GeoSearch
        from lightning_geo.tuning.ray_executor import RayExecutor
    except ImportError:  # the ray extra is not installed: nothing to try
        return
    add(part, 'GeoSearch(mode="minimize")', lambda: GeoSearch(mode="minimize"), "mode")
    add(part, 'GeoSearch({"lr": tune.quniform(0, 1, 0.1)})', lambda: GeoSearch({"lr": tune.quniform(0, 1, 0.1)}),
        "lr", "quantized")
    add(part, 'GeoSearch({"layers": {"grid_search": [1, 2]}})',
        lambda: GeoSearch({"layers": {"grid_search": [1, 2]}}), "layers", "grid_search")
    add(part, 'GeoSearch({"x": 1}) (no domain)', lambda: GeoSearch({"x": 1}), "space", "search space")
    add(part, "GeoSearch(num_candidates=0)", lambda: GeoSearch({"x": tune.uniform(0, 1)}, num_candidates=0),
        "num_candidates")
    add(part, "GeoSearch(num_initial=-1)", lambda: GeoSearch({"x": tune.uniform(0, 1)}, num_initial=-1),
        "num_initial")
    add(part, 'GeoSearch(seed="x")', lambda: GeoSearch({"x": tune.uniform(0, 1)}, seed="x"), "seed")
    add(part, 'GeoSearch(metric=["a", "b"], mode=["min"])',
        lambda: GeoSearch({"x": tune.uniform(0, 1)}, metric=["a", "b"], mode=["min"]), "mode", "metric")
    add(part, "RayExecutor(n_parallel=0)", lambda: RayExecutor(n_parallel=0), "n_parallel")
    add(part, "RayExecutor(num_gpus=-1)", lambda: RayExecutor(num_gpus=-1), "num_gpus")
    add(part, "RayExecutor(max_retries=-1)", lambda: RayExecutor(max_retries=-1), "max_retries")


def utils_cases() -> None:
    part = "utils"
    strategy = SingleDeviceStrategy(torch.device("cpu"))
    add(part, 'reduce_tensor(..., op="avg")', lambda: reduce_tensor(strategy, torch.ones(2), op="avg"), "op")
    add(part, 'reduce_tensor(..., "1.0") (a string)', lambda: reduce_tensor(strategy, "1.0"), "tensor")
    add(part, 'geo_tag("curricullum", "x")', lambda: geo_tag("curricullum", "x"), "part")
    add(part, 'geo_tag("curriculum", "bad name")', lambda: geo_tag("curriculum", "bad name"), "name")
    add(part, "read_checkpoint(<missing file>)", lambda: read_checkpoint(FILES.path("missing.ckpt")), "checkpoint")
    add(part, "read_checkpoint(<a text file>)", lambda: read_checkpoint(FILES.path("garbage.ckpt")), "checkpoint")
    add(part, "read_checkpoint(<a torch.save file cut in half>)",
        lambda: read_checkpoint(FILES.path("truncated.ckpt")), "checkpoint")
    add(part, "read_checkpoint(<a file holding a list>)", lambda: read_checkpoint(FILES.path("list.ckpt")),
        "checkpoint")
    add(part, "read_checkpoint(<an empty folder>)", lambda: read_checkpoint(FILES.path("empty_dir")), "checkpoint")
    add(part, "read_checkpoint(<a folder with a garbage .metadata>)",
        lambda: read_checkpoint(FILES.path("bad_dcp")), "checkpoint")
    add(part, "read_checkpoint(<a distributed checkpoint, data file cut short>)",
        lambda: read_checkpoint(FILES.path("cut_dcp")), "checkpoint")
    add(part, "load_module(BoringModel, <a text file>)", lambda: load_module(BoringModel, FILES.path("garbage.ckpt")),
        "checkpoint")
    add(part, "format_table(headers, rows of another width)", lambda: format_table(["a", "b"], [[1]]), "row",
        "header")


# ------------------------------------------------------------------ command-line cases
def cli_cases() -> None:
    tiny, out = FILES.path("corpus/tiny.txt"), FILES.path("runs")
    fast = ["demo", "--corpus", tiny, "--tokenizer", "char", "--arm", "plain", "--budget", "2 steps", "--n-layer", "1",
            "--n-embd", "16", "--n-head", "2", "--batch-size", "2", "--seq-len", "16", "--val-samples", "4",
            "--val-points", "1", "--out", out, "--sample-chars", "0", "--no-progress-bar", "--accelerator", "cpu"]
    """A demo that trains 2 steps of a tiny model: each case changes one flag (the last one given wins)."""

    def demo(shown: str, flags: list[str], *names: str, **kwargs: Any) -> None:
        add_cli("cli demo", shown, [*fast, *flags], *names, **kwargs)

    demo("--budget -5", ["--budget", "-5"], "--budget", "budget", script=True)
    demo("--budget 3parsecs", ["--budget", "3parsecs"], "--budget", "budget")
    demo("--budget 0", ["--budget", "0"], "--budget", "budget")
    demo('--budget ""', ["--budget", ""], "--budget", "budget")
    demo('--budget "2M steps"', ["--budget", "2M steps"], "--budget", "budget")
    demo("--arm nope", ["--arm", "nope"], "--arm")
    demo("--arm plain --geo (conflicting)", ["--geo"], "--arm", "--geo", note="--geo silently wins over --arm")
    demo("--out /proc/nope", ["--out", "/proc/nope"], "--out")
    demo("--out <a file>", ["--out", tiny], "--out")
    demo("--steps 0", ["--steps", "0"], "--steps")
    demo("--steps 5 --budget 60s", ["--steps", "5", "--budget", "60s"], "--steps", "--budget")
    demo("--batch-size -1", ["--batch-size", "-1"], "--batch-size")
    demo("--seq-len 0", ["--seq-len", "0"], "--seq-len")
    demo("--n-embd 0", ["--n-embd", "0"], "--n-embd")
    demo("--n-head 3 (does not divide --n-embd 16)", ["--n-head", "3"], "--n-head", "n_head")
    demo("--precision 8-bit", ["--precision", "8-bit"], "--precision")
    demo("--precision fp16", ["--precision", "fp16"], "--precision")
    demo("--exclude precison", ["--exclude", "precison"], "--exclude")
    demo("--corpus /no/such/path", ["--corpus", "/no/such/path"], "--corpus", "corpus")
    demo("--corpus <an empty file>", ["--corpus", FILES.path("empty.txt")], "--corpus", "corpus")
    demo("--corpus <a binary file>", ["--corpus", FILES.path("binary.bin")], "--corpus", "corpus")
    demo("--corpus <40 characters>", ["--corpus", FILES.path("little.txt")], "--corpus", "corpus")
    demo("--devices 0", ["--devices", "0"], "--devices")
    demo("--accelerator tpu", ["--accelerator", "tpu"], "--accelerator", "accelerator")
    demo("--accelerator gpu (no GPU here)", ["--accelerator", "gpu"], "--accelerator", "accelerator",
         note="debatable: Lightning's message names the value 'gpu', not the flag")
    demo("--lr inf", ["--lr", "inf"], "--lr")
    demo("--lr -1", ["--lr", "-1"], "--lr")
    demo("--warmup-share 1.5", ["--warmup-share", "1.5"], "--warmup-share", "warmup_share")
    demo("--seq-len-warmup 2", ["--seq-len-warmup", "2"], "--seq-len-warmup", "seq_len_warmup")
    demo('--seq-len-warmup "3 parsecs"', ["--seq-len-warmup", "3 parsecs"], "--seq-len-warmup")
    demo("--max-minutes 0", ["--max-minutes", "0"], "--max-minutes")
    demo("--vocab-size 1 --tokenizer bpe", ["--tokenizer", "bpe", "--vocab-size", "1"], "--vocab-size",
         "vocab_size")
    demo("--tokenizer word", ["--tokenizer", "word"], "--tokenizer")
    demo("--summary-json /proc/nope/summary.json", ["--summary-json", "/proc/nope/summary.json"], "--summary-json")
    demo("--val-every 0", ["--val-every", "0"], "--val-every")
    demo("--seed abc", ["--seed", "abc"], "--seed")
    demo("--max-train-chars -1", ["--max-train-chars", "-1"], "--max-train-chars")
    demo("--sample-chars -1", ["--sample-chars", "-1"], "--sample-chars")
    demo("--bugdet 60s (misspelt flag)", ["--bugdet", "60s"], "--bugdet")

    ckpt, texts = FILES.path("demo.ckpt"), FILES.path("texts")

    def predict_cli(shown: str, argv: list[str], *names: str, **kwargs: Any) -> None:
        add_cli("cli predict", shown, ["predict", *argv], *names, **kwargs)

    predict_cli("--checkpoint <missing>", [texts, "--checkpoint", FILES.path("missing.ckpt")], "--checkpoint",
                "checkpoint")
    predict_cli("--checkpoint <a text file>", [texts, "--checkpoint", FILES.path("garbage.ckpt")], "--checkpoint")
    predict_cli("--checkpoint <cut in half>", [texts, "--checkpoint", FILES.path("truncated.ckpt")], "--checkpoint")
    predict_cli("--checkpoint <an empty folder>", [texts, "--checkpoint", FILES.path("empty_dir")], "--checkpoint")
    predict_cli("--checkpoint <a folder, garbage .metadata>", [texts, "--checkpoint", FILES.path("bad_dcp")],
                "--checkpoint")
    predict_cli("--checkpoint <another model's checkpoint>", [texts, "--checkpoint", FILES.path("boring.ckpt")],
                "--checkpoint", "checkpoint", script=True)
    predict_cli("FOLDER missing", [FILES.path("no_texts"), "--checkpoint", ckpt], "FOLDER", "folder")
    predict_cli("FOLDER of binary files", [FILES.path("binaries"), "--checkpoint", ckpt], "FOLDER", "folder")
    predict_cli("FOLDER is a file", [tiny, "--checkpoint", ckpt], "FOLDER", "folder")
    predict_cli("--max-tokens 0", [texts, "--checkpoint", ckpt, "--max-tokens", "0"], "--max-tokens")
    predict_cli("--max-tokens 4 (< a piece of 17)", [texts, "--checkpoint", ckpt, "--max-tokens", "4"],
                "--max-tokens", "max_tokens")
    predict_cli("--batch-size 0", [texts, "--checkpoint", ckpt, "--batch-size", "0"], "--batch-size")
    predict_cli("--precision fp16", [texts, "--checkpoint", ckpt, "--precision", "fp16"], "--precision")
    predict_cli("--accelerator tpu", [texts, "--checkpoint", ckpt, "--accelerator", "tpu"], "--accelerator",
                "accelerator")
    predict_cli("--output /proc/nope/scores.tsv", [texts, "--checkpoint", ckpt, "--output", "/proc/nope/s.tsv"],
                "--output")
    predict_cli("no --checkpoint", [texts], "--checkpoint")

    def topo(shown: str, argv: list[str], *names: str, **kwargs: Any) -> None:
        add_cli("cli topo", shown, ["topo", *argv], *names, **kwargs)

    topo("--params -1", ["--params", "-1"], "--params")
    topo("--params 7B", ["--params", "7B"], "--params")
    topo("--gpu-memory-gb 0", ["--gpu-memory-gb", "0"], "--gpu-memory-gb")
    topo("--nodes 0", ["--nodes", "0"], "--nodes")
    topo("--gpus-per-node 0", ["--gpus-per-node", "0"], "--gpus-per-node")
    topo("--bytes-per-param 0", ["--bytes-per-param", "0"], "--bytes-per-param")
    topo("--net-gbps -5", ["--net-gbps", "-5"], "--net-gbps")
    topo("--activation-gb -1", ["--activation-gb", "-1"], "--activation-gb")
    topo("--file <missing>", ["--file", FILES.path("missing_topo.txt")], "--file", FILES.path("missing_topo.txt"),
         note="a message naming the file counts")
    topo("--file <not nvidia-smi output>", ["--file", FILES.path("topo_garbage.txt")], "--file",
         FILES.path("topo_garbage.txt"), note="a message naming the file counts")
    topo("--file <an empty file>", ["--file", FILES.path("topo_empty.txt")], "--file",
         FILES.path("topo_empty.txt"), note="a message naming the file counts")
    topo("--file <a folder>", ["--file", FILES.path("empty_dir")], "--file", FILES.path("empty_dir"),
         note="a message naming the folder counts")

    def tune(shown: str, argv: list[str], *names: str, **kwargs: Any) -> None:
        add_cli("cli tune", shown, ["tune", "--out", FILES.path("tune_runs"), "--quiet", *argv], *names, **kwargs)

    def study(name: str, **changes: Any) -> list[str]:
        return ["--config", FILES.study(name, **changes), "--name", name]

    tune("--config <missing>", ["--config", FILES.path("missing.yaml")], "--config", FILES.path("missing.yaml"))
    tune("--config <malformed YAML>", ["--config", FILES.write("studies/malformed.yaml", "space: [\n  model.lr: {")],
         "--config", FILES.path("studies/malformed.yaml"))
    tune("--config <a YAML list>", ["--config", FILES.write("studies/list.yaml", "- 1\n- 2\n")], "--config",
         FILES.path("studies/list.yaml"))
    tune("study: max_trial (misspelt key)", study("typo", max_trial=1), "max_trial")
    tune("study: no model section", study("no_model", model=None), "model")
    tune("study: model.class_path not importable", study("bad_class", model={"class_path": "nope.Model"}),
         "class_path")
    tune("study: space key the model does not take",
         study("bad_arg", space={"model.dropout": {"float": [0.0, 0.5]}}), "dropout")
    tune("study: space entry {float: [1, 0]}", study("bad_range", space={"model.lr": {"float": [1, 0]}}),
         "model.lr", "low")
    tune("study: trainer: {max_epoch: 1} (misspelt)", study("bad_trainer", trainer={"max_epoch": 1}), "max_epoch")
    tune("study: mode: minimize", study("bad_mode", mode="minimize"), "mode")
    tune("study: max_trials: -3", study("bad_trials", max_trials=-3), "max_trials")
    tune("study: executor: threads", study("bad_executor", executor="threads"), "executor")
    tune("study: pruner: hyperband", study("bad_pruner", pruner="hyperband"), "pruner")
    tune("study: storage: redis://localhost/0", study("redis", storage="redis://localhost/0"), "storage")
    tune("study: storage: sqlite:///<missing folder>/s.db",
         study("sqlite_missing", storage=f"sqlite:///{FILES.root}/missing/s.db"), "storage")
    tune("study: storage: sqlite://relative.db", study("sqlite_two", storage="sqlite://relative.db"), "storage")
    tune("study: monitor: val_acc (the model logs val_loss)", study("bad_monitor", monitor="val_acc"), "monitor",
         "val_acc")
    tune("--trials 0", ["--trials", "0"], "--trials")
    tune("--parallel 2 (without --executor subprocess)", [*study("parallel"), "--parallel", "2"], "--parallel",
         "n_parallel", note="names n_parallel, the tuner's argument, not the flag")
    tune('--name "a/b"', [*study("slash"), "--name", "a/b"], "--name", "study_name",
         note="names study_name, the tuner's argument, not the flag")
    tune("--pruner hyperband", ["--pruner", "hyperband"], "--pruner")
    tune("--tokens 0", ["--tokens", "0"], "--tokens")
    tune("demo: --corpus /no/such/path", ["--corpus", "/no/such/path"], "--corpus", "corpus")

    def lightning_cli(shown: str, argv: list[str], *names: str, **kwargs: Any) -> None:
        add_cli("cli fit", shown, argv, *names, lightning_cli=True, **kwargs)

    base = ["fit", "--config", str(ROOT / "examples" / "demo.yaml"), "--trainer.max_steps", "2",
            "--trainer.logger", "false", "--trainer.callbacks", "[]", "--data.corpus", tiny, "--data.seq_len", "16",
            "--data.batch_size", "2", "--data.val_samples", "4", "--model.n_layer", "1", "--model.n_embd", "16",
            "--model.n_head", "2", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
    lightning_cli("fit --config <missing>", ["fit", "--config", FILES.path("missing.yaml")], "--config", "config")
    lightning_cli("fit --model.n_layer 0", [*base, "--model.n_layer", "0"], "n_layer")
    lightning_cli("fit --model.optimizer sgd", [*base, "--model.optimizer", "sgd"], "optimizer")
    lightning_cli("fit --data.corpus /no/such/path", [*base, "--data.corpus", "/no/such/path"], "corpus")
    lightning_cli('fit, DynamicCurriculum deadline "3 parsecs" in the config',
                  [*base, "--config", FILES.write("curriculum.yaml", (
                      "trainer:\n  callbacks:\n    - class_path: lightning_geo.callbacks.DynamicCurriculum\n"
                      "      init_args: {mode: seq_len, deadline: 3 parsecs}\n"))], "deadline")
    lightning_cli("fit, PredictiveScalingPrecision window 0 in the config",
                  [*base, "--trainer.precision", "null", "--config", FILES.write("precision.yaml", (
                      "trainer:\n  plugins:\n    - class_path: lightning_geo.precision.PredictiveScalingPrecision\n"
                      "      init_args: {precision: bf16-mixed, window: 0}\n"))], "window")
    lightning_cli("fit --trainer.strategy geo_hybird (misspelt)", [*base, "--trainer.strategy", "geo_hybird"],
                  "strategy", "geo_hybird")
    lightning_cli("fit --trainer.max_stpes 2 (misspelt key)", [*base, "--trainer.max_stpes", "2"], "max_stpes")


# ------------------------------------------------------------------ running the in-process cases
def mentions(text: str, names: tuple[str, ...]) -> bool:
    """Whether ``text`` names one of ``names`` as a word (case-insensitive)."""
    return any(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w])", text, re.IGNORECASE) for name in names)


def describe(err: BaseException) -> str:
    """``Type: message`` on one line (a message's traceback part, as a failed trial's, left out)."""
    text = " ".join(str(err).partition("\nTraceback")[0].split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def same_error(a: BaseException, b: BaseException) -> bool:
    """The same type and message, objects' reprs (``<... object at 0x...>``) aside."""
    def text(err: BaseException) -> str:
        return re.sub(r"<[^<>]* object at 0x[0-9a-f]+>", "<object>", str(err))

    return type(a) is type(b) and text(a) == text(b)


def raised_in(err: BaseException) -> str:
    """``"geo"`` (a lightning_geo module), ``"call"`` (Python's argument binding at the call itself) or the top
    package of the module that raised ``err``."""
    tb = err.__traceback__
    if tb is None:
        return "unknown"
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    if filename.startswith("<"):  # a dataclass's generated __init__: Python's binding of the arguments
        return "call"
    path = os.path.realpath(filename)
    if path.startswith(GEO_DIR + os.sep):
        return "geo"
    if path == THIS_FILE:
        return "call"
    return str(tb.tb_frame.f_globals.get("__name__", "?")).split(".")[0]


def run_case(case: Case) -> None:
    """Call the case and classify what happened into ``case.outcome`` / ``case.message``."""
    assert case.run is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                case.run()
        except Exception as err:  # every wrong input may fail in any way: that is what is measured
            case.outcome, case.message = classify_error(case, err)
            return
    warned = [str(w.message) for w in caught if mentions(str(w.message), case.names)]
    if warned:
        case.outcome, case.message = "warned", "warning: " + " ".join(warned[0].split())
    else:
        case.outcome, case.message = "accepted", "no error and no warning naming it"


def classify_error(case: Case, err: Exception) -> tuple[str, str]:
    where, message = raised_in(err), describe(err)
    if where == "geo" and mentions(str(err), case.names):
        return "named", message
    if where == "call" and isinstance(err, TypeError) and mentions(str(err), case.names):
        return "named", message
    if case.plain is not None:
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                case.plain()
        except Exception as plain_err:  # the same input without GEO
            if same_error(plain_err, err):
                return "lightning-same", message
    if where == "geo":
        return "raw", f"{message} [raised in lightning_geo without naming {case.names[0]}]"
    return "raw", f"{message} [raised in {where}]"


# ------------------------------------------------------------------ running the command-line cases
def cli_runner() -> None:
    """Run the command-line cases read as JSON from stdin, each in a forked process with a timeout (stdout and
    stderr to files); print the results as JSON. Started by :func:`start_cli_runner` with the modules the
    sub-commands import already imported, so that each fork starts at once."""
    from lightning_geo import cli

    jobs = json.loads(sys.stdin.read())
    folder = Path(jobs["folder"])
    os.chdir(folder)  # default output folders ("runs") land in the scratch folder
    for module in ("lightning_geo.demo.run", "lightning_geo.demo.compare", "lightning_geo.demo.predict",
                   "lightning_geo.demo.tune", "lightning_geo.tuning.config_file", "lightning_geo.demo.lightning_cli",
                   "lightning_geo.strategies.topo_command", "lightning_geo.tuning.optuna_storage", "yaml"):
        with contextlib.suppress(ImportError):
            __import__(module)
    pending = [dict(job, how="script") for job in jobs["cases"] if job["script"]]  # the slow ones first
    pending += [dict(job, how="fork") for job in jobs["cases"]]
    running: dict[int, tuple[dict[str, Any], float]] = {}
    results: list[dict[str, Any]] = []
    while pending or running:
        while pending and len(running) < CLI_WORKERS:
            job = pending.pop(0)
            running[_start(cli, job, folder)] = (job, time.monotonic())
        time.sleep(0.05)
        for pid, (job, started) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            timed_out = not done and time.monotonic() - started > jobs["timeout"]
            if timed_out:
                os.killpg(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
            elif not done:
                continue
            del running[pid]
            stem = folder / f"{job['id']}.{job['how']}"
            results.append({"id": job["id"], "how": job["how"], "rc": os.waitstatus_to_exitcode(status),
                            "timed_out": timed_out, "seconds": time.monotonic() - started,
                            "stdout": _tail(stem.with_suffix(".out")), "stderr": _tail(stem.with_suffix(".err"))})
    print(json.dumps(results))


def _start(cli: Any, job: dict[str, Any], folder: Path) -> int:
    """Start one case, a fork that runs ``cli.main()`` as the console script does or the script itself; its pid."""
    stem = folder / f"{job['id']}.{job['how']}"
    if job["how"] == "script":
        script = Path(sys.executable).with_name("lightning-geo")
        with open(stem.with_suffix(".out"), "wb") as out, open(stem.with_suffix(".err"), "wb") as err:
            process = subprocess.Popen([str(script), *job["argv"]], stdout=out, stderr=err,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        return process.pid
    pid = os.fork()
    if pid:
        return pid
    os.setpgid(0, 0)  # its own group: a timeout kills what it started too
    status = 1
    try:
        for fd, suffix in ((1, ".out"), (2, ".err")):
            os.dup2(os.open(stem.with_suffix(suffix), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["lightning-geo", *job["argv"]]
        try:
            status = cli.main()  # the console script: sys.exit(main())
        except SystemExit as exit_:
            code = exit_.code
            status = 0 if code is None else code if isinstance(code, int) else 1
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
        except BaseException:  # what the interpreter does with an uncaught exception
            traceback.print_exc()
            status = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status if isinstance(status, int) else 1)


def _tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


def start_cli_runner(cases: list[Case], timeout: float) -> subprocess.Popen[str]:
    """Start the runner process over the command-line ``cases``; its results come from :func:`read_cli_runner`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(FILES.root), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    with open(FILES.path("runner.log"), "w") as log:
        runner = subprocess.Popen([sys.executable, THIS_FILE, "--cli-runner"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
    assert runner.stdin is not None
    runner.stdin.write(json.dumps({"folder": str(FILES.root / "cli"), "timeout": timeout, "cases": [
        {"id": c.id, "argv": c.argv, "script": c.script} for c in cases]}))
    runner.stdin.close()
    return runner


def read_cli_runner(runner: subprocess.Popen[str], cases: list[Case], timeout: float) -> list[str]:
    """Classify the command-line cases from the runner's results; returns the lines on the script cross-check."""
    assert runner.stdout is not None
    output = runner.stdout.read()
    runner.stdout.close()
    if runner.wait() != 0:
        log = Path(FILES.path("runner.log")).read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the command-line runner failed (exit {runner.returncode}):\n{log}")
    results = json.loads(output)
    by_case = {c.id: c for c in cases}
    checks = []
    for result in sorted(results, key=lambda r: r["how"] != "fork"):
        case = by_case[result["id"]]
        outcome, message = classify_cli(case, result, timeout)
        if result["how"] == "fork":
            case.outcome, case.message = outcome, message
            print(f"{case.id:<12} {outcome:<15} {result['seconds']:5.1f} s  {message[:90]}", flush=True)
        else:
            same = "the same" if (outcome, message) == (case.outcome, case.message) else f"DIFFERENT: {message}"
            checks.append(f"{case.id} ({case.argv[0]} {case.shown}): {outcome} in {result['seconds']:.1f} s, "
                          f"forked: {case.outcome}; {same}")
    return checks


def classify_cli(case: Case, result: dict[str, Any], timeout: float) -> tuple[str, str]:
    stderr = result["stderr"]
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if result["timed_out"]:
        return "accepted", f"still running after {timeout:g} s: the input was taken"
    if "Traceback (most recent call last)" in stderr:
        return "raw", f"traceback: {last}"
    if result["rc"] == 0:
        warned = [line for line in lines if mentions(line, case.names)]
        if warned:
            return "warned", f"exit 0, warning: {warned[0]}"
        out = [line for line in result["stdout"].splitlines() if line.strip()]
        return "accepted", "exit 0" + (f": {out[-1].strip()}" if out else "")
    if mentions(last, case.names):
        return "named", last
    if case.lightning_cli and "error:" in stderr:
        return "lightning-same", last + " [jsonargparse's error, as in plain LightningCLI]"
    return "raw", f"{last} [exit {result['rc']}; the last line does not name {case.names[0]}]"


# ------------------------------------------------------------------ report
def report(cases: list[Case], say: Transcript) -> None:
    for case in cases:  # the same text from run to run: no scratch folder, no warning's source line
        case.message = re.sub(r"^(exit 0, warning: )\S+\.py:\d+: ", r"\1", case.message)
        case.message = " ".join(case.message.replace(str(FILES.root), "<tmp>").split())

    def cut(text: str) -> str:
        return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."

    rows = [[c.id, c.part, c.shown, c.outcome, cut(c.message) + (f" [{c.note}]" if c.note else "")] for c in cases]
    say(format_table(["case", "part", "input", "outcome", "message (first 90 characters) [note]"], rows))
    say()
    parts = list(dict.fromkeys(c.part for c in cases))
    summary = []
    for part in [*parts, "total"]:
        chosen = [c for c in cases if part in ("total", c.part)]
        summary.append([part, len(chosen), *(sum(c.outcome == o for c in chosen) for o in OUTCOMES)])
    say(format_table(["part", "cases", *OUTCOMES], summary))
    say()
    for outcome in ("raw", "accepted", "warned"):
        chosen = [c for c in cases if c.outcome == outcome]
        say(f"{outcome} ({len(chosen)}):" if chosen else f"{outcome}: none")
        for c in chosen:
            say(f"  {c.id}  {c.part}: {c.shown}")
            say(f"      {c.message}" + (f" [{c.note}]" if c.note else ""))
    raw, accepted = (sum(c.outcome == o for c in cases) for o in ("raw", "accepted"))
    met = "MET" if raw == accepted == 0 else "MISSED"
    say(f"\n[{met}] target: 0 accepted and 0 raw over {len(cases)} wrong inputs; got {accepted} accepted, {raw} raw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="", help="only these parts, comma-separated (substrings of the names)")
    parser.add_argument("--cli-timeout", type=float, default=90.0, help="seconds a command-line case may run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_lightning()
    version, say, started = code_version(), Transcript(), time.perf_counter()
    FILES.make()
    for group in (recipe_cases, curriculum_cases, sampler_cases, sparsity_cases, adamw_cases, muon_cases,
                  batch_size_cases, noise_scale_cases, precision_cases, hybrid_cases, bucketing_cases, tuner_cases,
                  space_cases, optuna_cases, ray_cases, utils_cases, cli_cases):
        group()
    wanted = [p.strip().lower() for p in args.parts.split(",") if p.strip()]
    cases = [c for c in CASES if not wanted or any(w in c.part.lower() for w in wanted)]
    on_cli = [c for c in cases if c.argv]
    runner = start_cli_runner(on_cli, args.cli_timeout) if on_cli else None
    try:
        for case in cases:
            if case.run is not None:
                run_case(case)
                print(f"{case.id:<12} {case.outcome:<15} {case.message[:100]}", flush=True)
        checks = read_cli_runner(runner, on_cli, args.cli_timeout) if runner is not None else []
    finally:
        if runner is not None and runner.poll() is None:
            runner.kill()
        shutil.rmtree(FILES.root, ignore_errors=True)
    mark = say.mark()
    say(f"{len(cases)} wrong inputs, {sum(bool(c.argv) for c in cases)} of them on the command line, in "
        f"{time.perf_counter() - started:.0f} s (after the imports); lightning {lightning.__version__}, "
        f"torch {torch.__version__}")
    say()
    report(cases, say)
    if checks:
        say("\ncommand-line cases also run through the installed lightning-geo script (not forked):")
        for line in checks:
            say(f"  {line}")
    say(f"\ncommand: {command_line(__file__)}")
    write_results(RESULTS, say.since(mark), version=version)


if __name__ == "__main__":
    if sys.argv[1:] == ["--cli-runner"]:
        cli_runner()
    else:
        main()
