"""A run killed while it saves a checkpoint resumes from the last complete one, bit for bit.

``geo_hybrid`` writes each distributed checkpoint into a new hidden folder and swaps the name over to it only
once it is complete (``lightning_geo.strategies.checkpoint_swap``); a kill in the middle of rewriting
``last.ckpt`` left the old index beside a truncated shard when the folder was written in place."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from lightning_geo.strategies.checkpoint_swap import linked_version, remove_checkpoint, swap_in, version_folder
from tests.test_geo_hybrid import run_worker, start_worker

STEPS = "9"
EVERY = "3"
EVERY_PART = ("--geo", "geo_adamw", "--force-block-scales")  # the precision plugin, curriculum and density rule


def _complete_version(path: Path, content: str) -> Path:
    folder = version_folder(path)
    folder.mkdir()
    (folder / "meta.pt").write_text(content)
    return folder


# ----------------------------------------------------------------------------- the swap itself
def test_a_checkpoint_name_moves_to_the_new_version_and_the_old_one_is_removed(tmp_path):
    path = tmp_path / "last.ckpt"
    first = _complete_version(path, "first")
    swap_in(path, first)
    assert (path / "meta.pt").read_text() == "first" and linked_version(path) == first
    killed_save = _complete_version(path, "half")  # a save killed before its swap: never named
    second = _complete_version(path, "second")
    swap_in(path, second)
    assert (path / "meta.pt").read_text() == "second"
    assert not first.exists() and not killed_save.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.ckpt", second.name])


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_checkpoint_written_in_place_before_is_replaced(tmp_path, kind):
    path = tmp_path / "last.ckpt"
    if kind == "folder":  # as ModelParallelStrategy writes it
        path.mkdir()
        (path / "meta.pt").write_text("old")
    else:
        path.write_text("old")
    new = _complete_version(path, "new")
    swap_in(path, new)
    assert (path / "meta.pt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.ckpt", new.name])


def test_removing_a_checkpoint_removes_its_version_but_a_users_link_alone(tmp_path):
    path = tmp_path / "epoch=0-step=3.ckpt"
    version = _complete_version(path, "x")
    swap_in(path, version)
    user_link = tmp_path / "last.ckpt"  # ModelCheckpoint(save_last="link")
    os.symlink(path.name, user_link)
    remove_checkpoint(user_link)
    assert not user_link.is_symlink() and version.exists()
    remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- a real run, killed
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    return run_worker(tmp_path_factory.mktemp("uninterrupted"), 0, "--steps", STEPS, "--every", EVERY,
                      "--save-last", *EVERY_PART)


@pytest.mark.parametrize("save", [2, 4], ids=["first-last-ckpt", "rewriting-last-ckpt"])
def test_a_run_killed_inside_a_checkpoint_save_resumes_from_last_with_the_uninterrupted_losses(
        tmp_path, uninterrupted, save):
    """Every third step writes ``epoch=0-step=N.ckpt`` then ``last.ckpt``; the kill cuts a shard of save
    ``save`` short. Save 2 is the first ``last.ckpt`` (resume falls back on nothing: a fresh start would be
    wrong, so ``last`` must not name it); save 4 rewrites it (``last`` must still name the step-3 one)."""
    killed = start_worker(tmp_path, 0, "--steps", STEPS, "--every", EVERY, "--save-last", *EVERY_PART,
                          "--kill-in-save", str(save))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "ckpt" / "last.ckpt"
    if save == 2:
        assert not last.exists() and not last.is_symlink()  # the name never pointed at the partial folder
        assert (tmp_path / "ckpt" / "epoch=0-step=3.ckpt" / "meta.pt").is_file()
        return
    resumed = run_worker(tmp_path, 0, "--steps", STEPS, "--every", EVERY, "--save-last", *EVERY_PART,
                         "--resume", "last")
    assert resumed["global_step"] == int(STEPS)
    assert resumed["losses"] == uninterrupted["losses"][int(EVERY):]  # bit for bit from step 4 on
    assert resumed["weights"] == uninterrupted["weights"]
    folder = tmp_path / "ckpt"
    named = {linked_version(p) for p in folder.iterdir() if not p.name.startswith(".")}
    hidden = {p for p in folder.iterdir() if p.name.startswith(".")}
    assert hidden == named  # every version folder is named: the killed save's partial one was removed
    assert torch.load(last / "meta.pt", weights_only=False)["global_step"] == int(STEPS)
