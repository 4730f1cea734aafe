"""Shared pytest set-up: the ``gpu`` marker skips cleanly without CUDA, the ``four_processes`` marker unless selected
(``-m four_processes``); fixtures for tiny corpora."""

from __future__ import annotations

import multiprocessing
import warnings
from pathlib import Path

import pytest
import torch

# The tiny test loaders run in the main process on purpose; Lightning would warn about it in every test.
warnings.filterwarnings("ignore", ".*does not have many workers.*")

# The 2-process tests' workers fork from one server per test process that has imported these once (tests/helpers.py,
# DDP_CPU); a worker then only imports its test's module.
multiprocessing.set_forkserver_preload(["torch", "lightning.pytorch", "lightning_geo", "tests.helpers", "optuna"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False on this machine")
    skip_four = pytest.mark.skip(reason="a 4-process run: select it with -m four_processes")
    four_selected = "four_processes" in (config.getoption("markexpr", "") or "")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "four_processes" in item.keywords and not four_selected:
            item.add_marker(skip_four)


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    """A folder of eight small Python-like text files plus a binary file and an empty file (both skipped)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(8):
        body = "".join(f"def function_{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(40))
        (folder / f"module_{i}.py").write_text(body)
    (folder / "image.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "empty.txt").write_text("")
    return folder
