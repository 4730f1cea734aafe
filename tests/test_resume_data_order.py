"""A resumed run trains on the samples the uninterrupted run would have, in its order, with DataLoader workers too.

Two cases plain Lightning gets wrong with a shuffled DataLoader:

- a mid-epoch checkpoint: Lightning restarts the epoch's data from its first batch (Lightning #18780), so the
  resumed run trains again on samples the interrupted run had already seen;
- a checkpoint at an epoch's end, with ``num_workers > 0``: the first epoch after the resume is drawn in another
  order than the uninterrupted run's (Lightning #21938: epoch 0's permutation again).

With ``DynamicCurriculum`` (``recipe()`` has it in ``seq_len`` mode), the training DataLoader gets GEO's
``CurriculumSampler``, whose position and read-ahead batches are in the checkpoint: both cases continue exactly.
The plain arm is asserted to differ, so that these tests keep showing what GEO fixes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_geo.callbacks import DynamicCurriculum
from tests.helpers import tiny_trainer
from tests.test_curriculum import NUM_SAMPLES, Crash, CrashAt, Regressor

BATCH = 8
EPOCH_STEPS = NUM_SAMPLES // BATCH  # 12
STEPS = 2 * EPOCH_STEPS + 4


class WorkersRegressor(Regressor):
    """``Regressor`` whose shuffled training DataLoader reads with ``workers`` processes."""

    def __init__(self, workers: int) -> None:
        super().__init__(batch_size=BATCH)
        self.workers = workers

    def train_dataloader(self):
        loader = super().train_dataloader()
        return type(loader)(loader.dataset, batch_size=BATCH, shuffle=True, num_workers=self.workers,
                            persistent_workers=self.workers > 0)


class Batches(Callback):
    """Each training batch's sample indices."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches.append(batch["index"].tolist())


def _fit(path: Path, arm: str, workers: int, *, crash_at: int | None = None, ckpt_path: str | None = None,
         every: int | None = None) -> list[list[int]]:
    pl.seed_everything(7, verbose=False)
    record = Batches()
    callbacks: list[Callback] = [record]
    if arm == "geo":
        callbacks.append(DynamicCurriculum(mode="seq_len", deadline="10 steps", min_seq_len=4, seq_len_step=4))
    if crash_at is not None:
        callbacks += [ModelCheckpoint(dirpath=path / "ckpt", every_n_train_steps=every, save_top_k=-1),
                      CrashAt(crash_at)]
    trainer = tiny_trainer(path, max_steps=STEPS, limit_val_batches=0, callbacks=callbacks,
                           enable_checkpointing=crash_at is not None)
    trainer.fit(WorkersRegressor(workers), ckpt_path=ckpt_path)
    return record.batches


def _resumed(tmp_path: Path, arm: str, workers: int, step: int) -> tuple[list[list[int]], list[list[int]]]:
    """(the uninterrupted run's batches, the batches of a run resumed from its step-``step`` checkpoint after a
    crash)."""
    full = _fit(tmp_path / "full", arm, workers)
    with pytest.raises(Crash):
        _fit(tmp_path / "crashed", arm, workers, crash_at=step + 1, every=step)
    checkpoint = next((tmp_path / "crashed" / "ckpt").glob(f"*step={step}.ckpt"))
    resumed = _fit(tmp_path / "resumed", arm, workers, ckpt_path=str(checkpoint))
    assert len(resumed) == len(full) - step
    return full, resumed


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("arm", ["plain", "geo"])
def test_a_mid_epoch_resume_continues_at_the_next_unseen_sample(tmp_path: Path, arm: str, workers: int) -> None:
    """Lightning #18780."""
    step = 7  # of a 12-batch epoch
    full, resumed = _resumed(tmp_path, arm, workers, step)
    if arm == "geo":
        assert resumed == full[step:]
    else:  # plain Lightning starts epoch 0's data again from its first batch
        assert resumed[:EPOCH_STEPS - step] == full[:EPOCH_STEPS - step]


@pytest.mark.parametrize("arm", ["plain", "geo"])
def test_the_epoch_after_a_resume_at_an_epochs_end_has_the_uninterrupted_order_with_workers(
        tmp_path: Path, arm: str) -> None:
    """Lightning #21938: with DataLoader workers, the epoch after the resume must not replay epoch 0's order."""
    full, resumed = _resumed(tmp_path, arm, 2, EPOCH_STEPS)
    if arm == "geo":
        assert resumed == full[EPOCH_STEPS:]
    else:  # plain Lightning draws epoch 1 in epoch 0's order
        assert resumed[:EPOCH_STEPS] == full[:EPOCH_STEPS] != full[EPOCH_STEPS:2 * EPOCH_STEPS]
