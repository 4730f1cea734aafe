"""Reading the checkpoints ``strategy="geo_hybrid"`` writes: a distributed checkpoint folder (or a file).

``geo_hybrid`` saves as Lightning's ``ModelParallelStrategy`` does: with ``save_distributed_checkpoint=True`` (the
default) a folder in the ``torch.distributed.checkpoint`` format (``.metadata``, one ``*.distcp`` file per rank)
plus Lightning's ``meta.pt`` (the rest of the checkpoint: hyperparameters, loops, callbacks); otherwise one
``torch.save`` file. A run killed while saving, a copy cut short or a disk error leaves a checkpoint that fails
deep inside ``torch.load`` or the distributed reader; here it fails with one ``UnreadableCheckpointError``
naming the path.

Example:
    ```python
    state = read_checkpoint("runs/epoch=0-step=100.ckpt")  # a folder or a file: the full checkpoint dict
    state["hyper_parameters"], state["state_dict"]
    ```
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch
from torch.distributed.checkpoint.api import CheckpointException

DCP_METADATA = ".metadata"
"""The index file of a ``torch.distributed.checkpoint`` folder."""
LIGHTNING_METADATA = "meta.pt"
"""Lightning's file of everything but the module and optimizer states, in a distributed checkpoint folder."""

ModuleT = TypeVar("ModuleT", bound=pl.LightningModule)


class UnreadableCheckpointError(ValueError):
    """A checkpoint that exists but cannot be read: truncated, corrupt or incomplete (the reader's own error is
    its ``__cause__``)."""


def is_distributed_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a distributed checkpoint folder (it holds ``.metadata`` or Lightning's ``meta.pt``)."""
    folder = Path(path)
    return folder.is_dir() and ((folder / DCP_METADATA).is_file() or (folder / LIGHTNING_METADATA).is_file())


def checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """What makes the checkpoint at ``path`` unreadable, found without reading its tensors, or ``None``.

    A file: whether it opens as a ``torch.save`` archive. A distributed checkpoint folder: whether its index and
    Lightning's ``meta.pt`` read, and every data file is there and as long as the index says (a truncated copy
    is not).
    """
    path = Path(path)
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return _unreadable_file(path)
    if not (path / DCP_METADATA).is_file():
        return f"the folder has no {DCP_METADATA} file (not a distributed checkpoint, or one whose saving stopped)"
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except (Exception, CheckpointException) as err:  # any reader failure means the index is not a valid one
        return f"{DCP_METADATA}: {_reason(err)}"
    needed: dict[str, int] = {}
    for info in getattr(metadata, "storage_data", {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        data = path / name
        if not data.is_file():
            return f"{name}, listed in {DCP_METADATA}, is missing"
        if data.stat().st_size < size:
            return f"{name} has {data.stat().st_size:,} bytes, {DCP_METADATA} lists {size:,} (truncated)"
    if (path / LIGHTNING_METADATA).is_file():
        problem = _unreadable_file(path / LIGHTNING_METADATA)
        return None if problem is None else f"{LIGHTNING_METADATA}: {problem}"
    return None


def read_checkpoint(path: str | os.PathLike[str], *, name: str = "checkpoint") -> dict[str, Any]:
    """The whole checkpoint at ``path`` (a file, or a distributed checkpoint folder gathered into one dict) on
    the CPU.

    Args:
        path: A checkpoint file or a distributed checkpoint folder.
        name: What messages call ``path`` (``"--checkpoint"`` for a command-line flag).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        UnreadableCheckpointError: if it exists but cannot be read (truncated, corrupt, a folder that is not a
            checkpoint), with the reader's error as ``__cause__``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name} {str(path)!r} does not exist")
    if path.is_dir() and not is_distributed_checkpoint(path):
        raise UnreadableCheckpointError(
            f"{name} {path} is a folder but not a distributed checkpoint (no {DCP_METADATA} or "
            f"{LIGHTNING_METADATA} in it); give a checkpoint file or the folder strategy='geo_hybrid' saved"
        )
    try:
        if path.is_dir():
            from lightning.fabric.utilities.load import _load_distributed_checkpoint

            return _load_distributed_checkpoint(path)
        from lightning.fabric.utilities.cloud_io import _load

        checkpoint = _load(path, map_location="cpu")
    except (Exception, CheckpointException) as err:  # whatever the readers raise (EOFError, UnpicklingError...)
        reason = checkpoint_problem(path) or _reason(err)
        raise UnreadableCheckpointError(unreadable_message(name, path, reason)) from err
    if not isinstance(checkpoint, dict):
        raise UnreadableCheckpointError(f"{name} {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def load_module(cls: type[ModuleT], path: str | os.PathLike[str], *, name: str = "checkpoint") -> ModuleT:
    """``cls.load_from_checkpoint`` on the CPU for a checkpoint file or a distributed checkpoint folder.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        UnreadableCheckpointError: if it cannot be read (see ``read_checkpoint``).
    """
    buffer = io.BytesIO()
    torch.save(read_checkpoint(path, name=name), buffer)  # one dict, however it was stored
    buffer.seek(0)
    return cls.load_from_checkpoint(buffer, map_location="cpu")


def unreadable_message(name: str, path: str | os.PathLike[str], reason: str) -> str:
    """``"<name> <path> is not a readable checkpoint (truncated or corrupt): <reason>"``."""
    return f"{name} {path} is not a readable checkpoint (truncated or corrupt): {reason}"


def _unreadable_file(path: Path) -> str | None:
    with open(path, "rb") as f:
        zipped = f.read(2) == b"PK"  # torch.save writes a zip archive
    if zipped and not zipfile.is_zipfile(path):
        return f"a torch.save archive cut short ({path.stat().st_size:,} bytes, no end record)"
    try:
        torch.load(path, map_location="cpu", weights_only=False)  # as Lightning loads its checkpoints
    except Exception as err:  # any failure to read it is the answer
        return _reason(err)
    return None


def _reason(err: BaseException) -> str:
    """The first line of an error, short (a distributed reader's error carries every rank's traceback)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
