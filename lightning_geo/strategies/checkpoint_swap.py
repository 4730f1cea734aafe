"""Distributed checkpoint folders that a kill can never leave half-written under their name.

Lightning's ``ModelParallelStrategy`` writes a distributed checkpoint into the folder it is named for, over the
one there before: a run killed while ``last.ckpt`` is rewritten leaves the old index beside a truncated shard,
and ``fit(ckpt_path="last")`` fails. ``geo_hybrid`` writes each checkpoint into a new hidden folder beside it
(``.last.ckpt.geo-<token>``) and, once every rank has written its shard and ``meta.pt`` is on disk, points the
checkpoint's name at it with one atomic rename of a symbolic link (``last.ckpt -> .last.ckpt.geo-<token>``).
A kill at any moment leaves the name on the previous complete checkpoint (or on none, before the first): never
on a partial one. The folder the name pointed to before, and folders of saves that were killed, are removed
after the swap.

Where symbolic links cannot be made (Windows without the privilege), the new folder is renamed into place after
the old one is moved aside: a kill between the two renames leaves the name missing for that moment, never
partial.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

VERSION_MARK = ".geo-"
"""Between a checkpoint's name and the token of one of its hidden version folders: ``.<name>.geo-<token>``."""


def version_folder(path: Path) -> Path:
    """A new, unused hidden folder beside ``path`` to write the next version of checkpoint ``path`` into."""
    return path.with_name(f".{path.name}{VERSION_MARK}{secrets.token_hex(6)}")


def is_version_folder_of(candidate: Path, path: Path) -> bool:
    """Whether ``candidate`` is one of the hidden version folders of checkpoint ``path``."""
    return candidate.parent == path.parent and candidate.name.startswith(f".{path.name}{VERSION_MARK}")


def linked_version(path: Path) -> Path | None:
    """The version folder checkpoint ``path`` points to, if it is a link this module made; else ``None``."""
    if not path.is_symlink():
        return None
    target = path.parent / os.readlink(path)
    return target if is_version_folder_of(target, path) else None


def _fsync_folder(folder: Path) -> None:
    """Make a rename or a new link in ``folder`` survive a power loss as well as a killed process."""
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s contents to disk (a killed process loses nothing the kernel holds; a lost node does)."""
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def swap_in(path: Path, folder: Path) -> None:
    """Make checkpoint name ``path`` point at the complete version ``folder`` in one atomic step, then remove the
    version it pointed to before and any version folder of ``path`` a killed save left behind.

    ``path`` may be missing, a link made here, a folder written in place (by ``ModelParallelStrategy`` or an
    older GEO) or a file (a single-file checkpoint): each is replaced. Call it on one rank, after every rank has
    finished writing ``folder``.
    """
    previous = path if path.exists() and not path.is_symlink() else linked_version(path)
    link = path.with_name(f".{path.name}.link-{secrets.token_hex(6)}")
    try:
        os.symlink(folder.name, link)  # relative: the checkpoint folder can be moved or copied as a whole
    except OSError:
        _rename_into_place(path, folder)
        return
    if path.is_dir() and not path.is_symlink():  # os.replace cannot put a link over a folder
        aside = path.with_name(f".{path.name}{VERSION_MARK}replaced-{secrets.token_hex(6)}")
        os.rename(path, aside)
        previous = aside
    os.replace(link, path)
    _fsync_folder(path.parent)
    if previous is not None and previous != path:
        _remove(previous)
    for stale in path.parent.glob(f".{path.name}{VERSION_MARK}*"):
        if stale != folder:
            _remove(stale)
    for stale_link in path.parent.glob(f".{path.name}.link-*"):
        _remove(stale_link)


def _rename_into_place(path: Path, folder: Path) -> None:
    previous, aside = linked_version(path), None
    if path.exists() or path.is_symlink():
        aside = path.with_name(f".{path.name}{VERSION_MARK}replaced-{secrets.token_hex(6)}")
        os.rename(path, aside)
    os.rename(folder, path)
    _fsync_folder(path.parent)
    for old in (aside, previous):
        if old is not None:
            _remove(old)


def remove_checkpoint(path: Path) -> None:
    """Remove checkpoint ``path``: a link made here together with the version folder it points to, a link made
    by someone else (``ModelCheckpoint(save_last="link")``) alone, a folder or a file."""
    version = linked_version(path)
    _remove(path)
    if version is not None:
        _remove(version)
