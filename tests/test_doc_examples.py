"""Every ```python block of README.md and docs/*.md runs as written, one test case per block (``docs/recipe.md:7``).

Each block runs alone in a fresh namespace (``__name__ == "__main__"``), in a temporary working directory,
with the names of the "user's own code" that examples may use already defined (:func:`user_names`: ``model``,
``datamodule``, ``dataset``, ``pad``, ``MyModel``, ``MyModule``, ``MyData``, ``MyDataModule``: a tiny token
LM and its data). Anything else a block uses, it imports itself. Long runs are capped, not skipped:

- ``lightning.Trainer`` (also as ``lightning.pytorch.Trainer``) stops after :data:`MAX_STEPS` optimizer steps
  (through ``should_stop``, so ``max_steps``/``max_epochs``/``max_time`` keep their meaning for the parts that
  read the run's length), validates on at most 2 batches, skips the sanity check, the progress bar and the
  model summary.
- Every Trainer a block builds and leaves unused is then fitted on a fresh ``model``/``datamodule`` the same
  way (a user's next line), in one process on the CPU where the block asked for several devices: a Trainer
  that cannot fit is a broken example even if building it worked.
- ``GeoTuner`` and ``optuna.Study.optimize`` run at most :data:`MAX_TRIALS` trials.

Markers, an HTML comment as the last non-blank line before the fence (not rendered):

- ``<!-- doc-example: skip (reason) -->``: not run (a GPU, several processes, a cluster, the network);
  the reason is required and shows as the pytest skip reason.
- ``<!-- doc-example: continue -->``: the block continues the previous ```python block of the same page
  and runs after it in the same namespace.

docs/developers.md documents the same for writers.
"""

from __future__ import annotations

import re
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lightning_geo.tuning
from lightning_geo.precision import PredictiveScalingPrecision
from tests.helpers import fit_tiny

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PYTHON_LANGUAGES = ("python", "py")
MAX_STEPS = 2
"""Optimizer steps after which every Trainer an example builds stops."""
MAX_TRIALS = 3
"""Trials after which every ``GeoTuner`` search and ``optuna.Study.optimize`` of an example stops."""

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(r"^\s*<!--\s*doc-example:\s*(?P<what>[\w-]+)\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")


@dataclass
class DocBlock:
    """One ```python block: where it is, its code (dedented), and what its marker says."""

    page: Path
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None = None  # the reason, for `doc-example: skip (reason)`
    previous: DocBlock | None = None  # the block it continues, for `doc-example: continue`
    problem: str | None = None  # a malformed marker: the test case fails with this

    @property
    def name(self) -> str:
        page = self.page.relative_to(ROOT).as_posix() if self.page.is_relative_to(ROOT) else self.page.name
        return f"{page}:{self.line}"


def extract_blocks(page: Path, text: str | None = None) -> list[DocBlock]:
    """The ```python blocks of one Markdown page, with their markers; other languages and plain fences skipped."""
    lines = (page.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[DocBlock] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = (opening["info"].split() or [""])[0].strip("{}.").lower()
        end = i + 1
        while end < len(lines) and not re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", lines[end]):
            end += 1
        if language in PYTHON_LANGUAGES:
            body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end]]
            block = DocBlock(page, i + 1, textwrap.dedent("\n".join(body)) + "\n")
            _read_marker(block, lines, i, blocks)
            blocks.append(block)
        i = end + 1
    return blocks


def _read_marker(block: DocBlock, lines: list[str], fence_index: int, earlier: list[DocBlock]) -> None:
    before = next((lines[j] for j in range(fence_index - 1, -1, -1) if lines[j].strip()), "")
    if "doc-example" not in before:
        return
    marker = _MARKER.match(before)
    what = marker["what"] if marker else None
    if what == "skip" and marker and marker["reason"] and marker["reason"].strip():
        block.skip = marker["reason"].strip()
    elif what == "continue" and marker and not marker["reason"]:
        if not earlier:
            block.problem = "`doc-example: continue` on the first ```python block of the page: nothing to continue"
        block.previous = earlier[-1] if earlier else None
    else:
        block.problem = (
            f"malformed marker {before.strip()!r}: expected `<!-- doc-example: skip (the reason) -->` "
            "or `<!-- doc-example: continue -->`"
        )


BLOCKS = [block for page in PAGES for block in extract_blocks(page)]


# ----------------------------------------------------------------------------- the user's own code, tiny
VOCAB = 32
PAD = 0


class TokenDataset(Dataset):
    """``num_samples`` token sequences (ids 1..VOCAB-1) of lengths 4-256, with a ``lengths`` attribute.

    Batches of 32 hold about 8k padded tokens, as a small LM's do: token deadlines in the docs ("20M tokens"
    within ``max_steps=5000``) stay within the run.
    """

    def __init__(self, num_samples: int = 64, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(4, 257, (num_samples,), generator=generator).tolist()
        self.samples = [torch.randint(1, VOCAB, (n,), generator=generator) for n in self.lengths]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.samples[index]


def pad(samples: list[torch.Tensor]) -> torch.Tensor:
    """Collate: right-pads token sequences with 0 into a ``(B, T)`` batch."""
    return nn.utils.rnn.pad_sequence(samples, batch_first=True, padding_value=PAD)


class TinyTokenLM(pl.LightningModule):
    """Embedding, ``layers`` MLP blocks, next-token head; logs ``train_loss`` and ``val_loss``; predicts the
    mean next-token loss of each sample (``(B,)``)."""

    def __init__(self, lr: float = 1e-2, layers: int = 1, act: str = "relu", width: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(VOCAB, width)
        activation = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[act]
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), activation()) for _ in range(layers))
        self.head = nn.Linear(width, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)  # (B, T, C)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)  # (B, T, VOCAB)

    def _losses(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self(tokens[:, :-1])
        targets = tokens[:, 1:]
        losses = nn.functional.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")  # (B, T-1)
        mask = (targets != PAD).float()
        return (losses * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B,)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self._losses(batch).mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_loss", self._losses(batch).mean())

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self._losses(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class TinyTokenData(pl.LightningDataModule):
    """128 training and 32 validation sequences of :class:`TokenDataset`, batches of 32 padded by :func:`pad`."""

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(TokenDataset(128, seed=0), batch_size=32, shuffle=True, collate_fn=pad, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TokenDataset(32, seed=1), batch_size=32, collate_fn=pad)


def user_names() -> dict[str, Any]:
    """The names a doc example may use without defining them: the user's model, data and their classes."""
    return {
        "model": TinyTokenLM(),
        "datamodule": TinyTokenData(),
        "dataset": TokenDataset(),
        "pad": pad,
        "MyModel": TinyTokenLM,
        "MyModule": TinyTokenLM,
        "MyData": TinyTokenData,
        "MyDataModule": TinyTokenData,
    }


# ----------------------------------------------------------------------------- caps on long runs
class _StopAfterSteps(pl.Callback):
    def __init__(self, num_steps: int) -> None:
        self.num_steps = num_steps

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.num_steps:
            trainer.should_stop = True


def _capped_trainer_class(built: list[tuple[pl.Trainer, dict[str, Any]]]) -> type[pl.Trainer]:
    class CappedTrainer(pl.Trainer):
        """``lightning.Trainer`` as an example calls it, stopping after ``MAX_STEPS`` optimizer steps."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append((self, dict(kwargs)))
            for name, value in (("enable_progress_bar", False), ("enable_model_summary", False),
                                ("num_sanity_val_steps", 0), ("limit_val_batches", 2)):
                kwargs.setdefault(name, value)
            callbacks = kwargs.get("callbacks") or []
            callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
            kwargs["callbacks"] = [*callbacks, _StopAfterSteps(MAX_STEPS)]
            super().__init__(*args, **kwargs)

    return CappedTrainer


class _CappedGeoTuner(lightning_geo.tuning.GeoTuner):
    """``GeoTuner`` running at most ``MAX_TRIALS`` trials."""

    def __init__(self, *args: Any, max_trials: int = 20, **kwargs: Any) -> None:
        super().__init__(*args, max_trials=min(max_trials, MAX_TRIALS), **kwargs)


def _cap_optuna(monkeypatch: pytest.MonkeyPatch) -> None:
    """``optuna.Study.optimize`` runs at most ``MAX_TRIALS`` trials (Optuna is in the test extra)."""
    try:
        from optuna.study import Study
    except ImportError:
        return
    optimize = Study.optimize

    def capped(self: Study, func: Any, n_trials: int | None = None, **kwargs: Any) -> None:
        optimize(self, func, n_trials=min(n_trials or MAX_TRIALS, MAX_TRIALS), **kwargs)

    monkeypatch.setattr(Study, "optimize", capped)


def _fit_unused(trainer_class: type[pl.Trainer], trainer: pl.Trainer, kwargs: dict[str, Any]) -> None:
    """Fit a Trainer the example built but did not run, on the user's model and data (one process)."""
    if trainer.world_size > 1 or trainer.num_nodes > 1:
        # The same arguments on one device: what the run does per process, without starting processes.
        trainer = trainer_class(**{**kwargs, "devices": 1, "num_nodes": 1})
    names = user_names()
    trainer.fit(names["model"], datamodule=names["datamodule"])


def _run(block: DocBlock, namespace: dict[str, Any]) -> None:
    if block.previous is not None:
        _run(block.previous, namespace)
    # Blank lines first, so that tracebacks name the Markdown file's own line numbers.
    code = "\n" * block.line + block.code
    exec(compile(code, str(block.page), "exec"), namespace)


@pytest.mark.filterwarnings("ignore:GeoTuner. max_trials=.* is too small")  # MAX_TRIALS, not the example's
@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_doc_example_runs_as_written(block: DocBlock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.problem:
        pytest.fail(f"{block.name}: {block.problem}")
    chain = block
    while chain is not None:
        if chain.skip:
            reason = chain.skip if chain is block else f"continues {chain.name}, skipped: {chain.skip}"
            pytest.skip(f"{block.name}: {reason}")
        chain = chain.previous
    monkeypatch.chdir(tmp_path)
    built: list[tuple[pl.Trainer, dict[str, Any]]] = []
    trainer_class = _capped_trainer_class(built)
    monkeypatch.setattr(lightning, "Trainer", trainer_class)
    monkeypatch.setattr(pl, "Trainer", trainer_class)
    monkeypatch.setattr(lightning_geo.tuning, "GeoTuner", _CappedGeoTuner)
    _cap_optuna(monkeypatch)
    failure = None
    try:
        _run(block, {"__name__": "__main__", **user_names()})
        for trainer, kwargs in list(built):
            if trainer.state.fn is None:  # built, never fitted, validated, tested or used to predict
                _fit_unused(trainer_class, trainer, kwargs)
    except Exception as error:  # the traceback names the Markdown lines; pytest's own would print the whole page
        failure = "".join(traceback.format_exception(error))
    if failure is not None:
        pytest.fail(f"{block.name} failed:\n{failure}", pytrace=False)


# ----------------------------------------------------------------------------- the extraction itself
def test_blocks_are_found_with_their_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    text = "\n".join([
        "```bash", "make test", "```",
        "1. an item:", "", "   ```python", "   x = 1", "   if x:", "       y = 2", "   ```",
        "<!-- doc-example: continue -->", "```py", "z = x + y", "```",
        "<!-- doc-example: skip (needs a GPU) -->", "", "```python", "import nothing", "```",
        "<!-- doc-example: skip -->", "```python", "```",
        "```", "a table", "```",
    ])
    blocks = extract_blocks(page, text)
    assert [(b.line, b.code) for b in blocks] == [
        (6, "x = 1\nif x:\n    y = 2\n"), (12, "z = x + y\n"), (17, "import nothing\n"), (21, "\n"),
    ]
    assert blocks[1].previous is blocks[0] and blocks[2].skip == "needs a GPU"
    assert blocks[3].problem is not None and "malformed marker" in blocks[3].problem
    namespace: dict[str, Any] = {}
    _run(blocks[1], namespace)
    assert namespace["z"] == 3


def test_every_page_with_code_is_read() -> None:
    assert len(BLOCKS) >= 10, [block.name for block in BLOCKS]
    assert {block.page.name for block in BLOCKS} >= {"README.md", "recipe.md", "getting-started.md"}


def test_fp16_on_a_cpu_warns_once_that_it_is_emulated(tmp_path: Path) -> None:
    # What the part-by-part examples avoid by picking bf16 on a CPU; the precision guide's example still shows fp16.
    with pytest.warns(UserWarning, match="on a CPU: most CPUs emulate float16") as record:
        fit_tiny(tmp_path, plugins=[PredictiveScalingPrecision("16-mixed")], max_steps=2)
    assert sum("emulate float16" in str(w.message) for w in record) == 1
