"""The curriculum's sampler resumed on another number of processes (or another batch size per process) trains
the rest of the saved epoch: every sample not yet trained, once; none trained twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from lightning_geo.callbacks import CurriculumSampler, DynamicCurriculum
from tests.helpers import DDP_CPU, tiny_trainer
from tests.test_curriculum import NUM_SAMPLES, CrashAt, Regressor

SAMPLES = 96


def _ranks(num_replicas: int, batch_size: int) -> list[CurriculumSampler]:
    samplers = [CurriculumSampler(list(range(SAMPLES)), seed=5, num_replicas=num_replicas, rank=r)
                for r in range(num_replicas)]
    for sampler in samplers:
        sampler.set_batch_size(batch_size)
    return samplers


def _train(samplers: list[CurriculumSampler], steps: int | None, read_ahead: int = 0) -> list[int]:
    """Run every rank's sampler for ``steps`` batches (to the epoch's end for ``None``), reading ``read_ahead``
    batches more than it trains on, as a DataLoader with workers does; returns the global samples trained on."""
    iterators = [iter(s) for s in samplers]
    trained: list[int] = []
    step = 0
    while steps is None or step < steps:
        for sampler, iterator in zip(samplers, iterators, strict=True):
            while len(sampler._pending) < 1 + read_ahead:
                sizes = sampler._batch_sizes(sampler._consumed + len(sampler._pending))[0]
                if sizes <= 0 or sampler._consumed + len(sampler._pending) >= sampler.num_batches:
                    break
                for _ in range(sizes):
                    next(iterator)
        if not samplers[0]._pending:
            break
        batches = [s.mark_consumed() for s in samplers]
        assert all(b == batches[0] for b in batches)  # every rank agrees on the global batch
        trained += batches[0]
        step += 1
    return trained


@pytest.mark.parametrize("read_ahead", [0, 2])
@pytest.mark.parametrize(("saved", "resumed"), [
    ((2, 4), (1, 4)),  # 2 -> 1 process, same batch per process
    ((2, 4), (1, 8)),  # 2 -> 1, same global batch
    ((1, 4), (2, 4)),  # 1 -> 2
    ((1, 8), (2, 4)),
    ((2, 4), (4, 4)),  # 2 -> 4
    ((2, 4), (4, 2)),
])
@pytest.mark.parametrize("steps", [3, 4])
def test_the_rest_of_the_epoch_is_trained_once_on_the_new_number_of_processes(saved, resumed, steps, read_ahead):
    before = _ranks(*saved)
    trained = _train(before, steps, read_ahead)
    state = json.loads(json.dumps(before[0].state_dict()))
    after = _ranks(*resumed)
    for sampler in after:
        sampler.load_state_dict(state)
        assert sampler.resharded_from == saved
    rest = _train(after, None)
    assert sorted(trained + rest) == list(range(SAMPLES))  # every sample of the epoch once
    if read_ahead:  # what the checkpoint had drawn but not trained on comes first
        drawn = [i for batch in state["pending"] for i in batch]
        assert rest[:len(drawn)] == drawn
    for sampler in after:
        sampler.set_epoch(1)  # as Lightning does at each epoch's start
    following = _train(after, 2)  # the next epoch starts afresh on the new world
    assert len(following) == 2 * resumed[0] * resumed[1] and after[0].epoch == 1


def test_a_resume_whose_trained_samples_cannot_split_over_the_processes_is_refused_by_name():
    before = _ranks(1, 3)
    _train(before, 1)
    state = before[0].state_dict()
    after = _ranks(2, 3)[0]
    with pytest.raises(ValueError, match=r"cannot resume the curriculum's sampler on 2 processes.*batch size"):
        after.load_state_dict(state)


def test_an_explicit_seed_other_than_the_checkpoints_is_still_refused():
    before = _ranks(2, 4)
    _train(before, 2)
    other = CurriculumSampler(list(range(SAMPLES)), seed=6, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="seed=5, this run has seed=6"):
        other.load_state_dict(before[0].state_dict())


def test_a_resharded_sampler_saves_and_resumes_its_first_short_batch():
    before = _ranks(1, 4)
    trained = _train(before, 1)  # 4 trained: 2 per rank of the first batch of 2 x 4
    after = _ranks(2, 4)
    for sampler in after:
        sampler.load_state_dict(before[0].state_dict())
    state = after[0].state_dict()
    assert state["head"] == [0, 2] and state["consumed"] == 0
    again = _ranks(2, 4)
    for sampler in again:
        sampler.load_state_dict(json.loads(json.dumps(state)))
        assert sampler.resharded_from is None
    rest = _train(again, None)
    assert sorted(trained + rest) == list(range(SAMPLES))
    assert torch.tensor(rest).unique().numel() == len(rest)


# ----------------------------------------------------------------------------- a real resume, 2 -> 1 process
class EpochBatches(Callback):
    """(epoch, batch index, sample indices) of each training batch; with ``path``, written per rank at the end."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.batches: list[tuple[int, int, list[int]]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches.append((trainer.current_epoch, batch_idx, batch["index"].tolist()))

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.path is not None:
            (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.batches))
            (self.path / "curriculum.json").write_text(json.dumps(_counts(trainer)))


def _counts(trainer: pl.Trainer) -> dict[str, Any]:
    """The curriculum's token count and the smoothed training loss of each batch its mastery estimate read."""
    curriculum = next(c for c in trainer.callbacks if isinstance(c, DynamicCurriculum))  # type: ignore[attr-defined]
    state = curriculum.state_dict()
    return {"tokens_seen": state["tokens_seen"], "smoothed_losses": state["estimator"]["history"]}


def _curriculum() -> DynamicCurriculum:
    return DynamicCurriculum(mode="seq_len", deadline="6 steps", min_seq_len=4, seq_len_step=4)


def _two_processes(path: Path, **overrides: Any) -> None:
    path.mkdir()
    trainer = tiny_trainer(path, max_steps=8, limit_val_batches=0, **DDP_CPU,
                           callbacks=[_curriculum(), EpochBatches(path), *overrides.pop("callbacks", [])], **overrides)
    trainer.fit(Regressor(batch_size=8))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of an uninterrupted two-process run (``full``) and of one crashed after step 5 with a checkpoint
    after step 4 (``ckpt``): made once for both batch sizes of the resume below."""
    runs = tmp_path_factory.mktemp("two_processes")
    _two_processes(runs / "full")
    checkpoint = ModelCheckpoint(dirpath=runs / "ckpt", every_n_train_steps=4, save_top_k=-1)
    with pytest.raises((ProcessRaisedException, ProcessExitedException)):
        _two_processes(runs / "first", callbacks=[checkpoint, CrashAt(5)], enable_checkpointing=True)
    return runs


@pytest.mark.ddp
@pytest.mark.parametrize("batch_size", [8, 16], ids=["same-batch-per-process", "same-global-batch"])
def test_a_two_process_run_resumed_on_one_trains_the_rest_of_its_epoch_once(tmp_path: Path, two_process_run: Path,
                                                                             batch_size: int):
    """6 batches of 2 x 8 per epoch; checkpoint after 4 (64 samples trained), resumed on one process. The losses and
    token counts of the 4 batches the curriculum had not read yet at the save are every rank's (the mean loss, the
    tokens summed), as in the uninterrupted run, not rank 0's alone."""
    full = [json.loads((two_process_run / "full" / f"rank{r}.json").read_text()) for r in range(2)]
    trained = [i for rank in full for _, _, indices in rank[:4] for i in indices]
    record = EpochBatches()
    trainer = tiny_trainer(tmp_path / "resumed", max_steps=4 + 2 * 32 // batch_size, limit_val_batches=0,
                           callbacks=[_curriculum(), record])
    trainer.fit(Regressor(batch_size=batch_size), ckpt_path=str(next((two_process_run / "ckpt").glob("*step=4*.ckpt"))))
    epoch_0 = [b for b in record.batches if b[0] == 0]
    assert [index for _, index, _ in epoch_0] == list(range(64 // batch_size, NUM_SAMPLES // batch_size))
    assert sorted(trained + [i for _, _, indices in epoch_0 for i in indices]) == list(range(NUM_SAMPLES))
    epoch_1 = [b for b in record.batches if b[0] == 1]
    assert [index for _, index, _ in epoch_1] == list(range(32 // batch_size))  # the next epoch, from its start
    uninterrupted, resumed = json.loads((two_process_run / "full" / "curriculum.json").read_text()), _counts(trainer)
    assert resumed["smoothed_losses"][:4] == pytest.approx(uninterrupted["smoothed_losses"][:4], rel=1e-6)
    if batch_size == 16:  # the same global batches as the uninterrupted run: the same tokens
        assert resumed["tokens_seen"] == uninterrupted["tokens_seen"]
