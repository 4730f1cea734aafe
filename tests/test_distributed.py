"""Rank-safe reductions: correct on one device, agreed across 2 gloo processes, logging on rank zero only."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_geo.utils import any_rank, log_geo_scalars, reduce_tensor
from tests.helpers import DDP_CPU, fit_tiny


def test_single_device_reduce_returns_a_copy(tmp_path):
    trainer = fit_tiny(tmp_path, max_steps=1)
    value = torch.tensor([1.0, -2.0])
    for op in ("sum", "mean", "max", "min"):
        out = reduce_tensor(trainer, value, op=op)
        assert torch.equal(out, value) and out.data_ptr() != value.data_ptr()
    assert reduce_tensor(trainer.strategy, 3.0).item() == 3.0
    assert any_rank(trainer, True) and not any_rank(trainer, False)


def test_unknown_op_is_rejected(tmp_path):
    trainer = fit_tiny(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match=r"op='avg' is not supported; expected one of \['sum', 'mean', 'max', 'min'\]"):
        reduce_tensor(trainer, torch.ones(1), op="avg")


class ReduceProbe(pl.Callback):
    """On every rank: reduce rank-dependent values, record the answers, and log a GEO scalar."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rank = trainer.global_rank
        value = torch.tensor([rank + 1.0, 10.0 * rank])
        answers = {op: reduce_tensor(trainer, value, op=op).tolist() for op in ("sum", "mean", "max", "min")}
        answers["input_after"] = value.tolist()
        answers["any_rank_1"] = any_rank(trainer, rank == 1)
        answers["any_none"] = any_rank(trainer, False)
        (self.out_dir / f"rank{rank}_step{batch_idx}.json").write_text(json.dumps(answers))
        log_geo_scalars(trainer, "strategy", {"rank_that_logged": rank})


@pytest.mark.ddp
def test_two_process_reductions_agree_and_only_rank_zero_logs(tmp_path):
    logger = CSVLogger(tmp_path, name="ddp", version=0)
    fit_tiny(tmp_path, callbacks=[ReduceProbe(tmp_path)], logger=logger, max_steps=2, **DDP_CPU)
    files = sorted(tmp_path.glob("rank*_step*.json"))
    assert len(files) == 4  # 2 ranks x 2 steps
    for f in files:
        answers = json.loads(f.read_text())
        assert answers["sum"] == [3.0, 10.0]
        assert answers["mean"] == [1.5, 5.0]
        assert answers["max"] == [2.0, 10.0]
        assert answers["min"] == [1.0, 0.0]
        rank = int(f.name[4])
        assert answers["input_after"] == [rank + 1.0, 10.0 * rank]  # the caller's tensor is not reduced in place
        assert answers["any_rank_1"] is True and answers["any_none"] is False
    metrics = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    column = header.index("geo/strategy/rank_that_logged")
    logged = [line.split(",")[column] for line in metrics[1:] if line.split(",")[column]]
    assert [float(v) for v in logged] == [0.0, 0.0]
