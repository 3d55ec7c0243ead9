"""trustgain.fileio.write_folder: a whole folder replaced atomically, nothing lost on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trustgain import fileio
from trustgain.errors import OutputWriteError, TrustgainError


def _fill(text: str):
    def write(tmp: Path) -> None:
        (tmp / "a.txt").write_text(text)
    return write


def test_replaces_a_folder_and_leaves_no_temporary_folders(tmp_path):
    out = tmp_path / "m"
    fileio.write_folder(out, _fill("one"))
    (out / "stale.txt").write_text("old file")
    fileio.write_folder(out, _fill("two"))
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # no mix of old and new
    assert (out / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_failing_write_or_check_keeps_the_old_folder(tmp_path):
    out = tmp_path / "m"
    fileio.write_folder(out, _fill("one"))

    def broken(tmp: Path) -> None:
        (tmp / "a.txt").write_text("half")
        raise TrustgainError("diverged")

    with pytest.raises(TrustgainError, match="diverged"):
        fileio.write_folder(out, broken)
    with pytest.raises(TrustgainError, match="no"):
        fileio.write_folder(out, _fill("two"), check=lambda: (_ for _ in ()).throw(
            TrustgainError("no")))
    assert (out / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "m"
    fileio.write_folder(out, _fill("one"))
    real = os.rename

    def rename(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "rename", rename)
    with pytest.raises(OutputWriteError, match="No space left"):
        fileio.write_folder(out, _fill("two"))
    assert (out / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_without_replace_what_appeared_meanwhile_is_kept(tmp_path):
    out = tmp_path / "m"

    def write(tmp: Path) -> None:
        (tmp / "a.txt").write_text("new")
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")

    with pytest.raises(TrustgainError, match="appeared while writing"):
        fileio.write_folder(out, write, replace=False)
    assert (out / "theirs.txt").read_text() == "theirs"
    (kept,) = tmp_path.glob(".m.*.tmp")
    assert (kept / "a.txt").read_text() == "new"


def _interrupted_between_renames(out: Path, token: str = "0123abcd") -> Path:
    """The state a kill between write_folder's two renames leaves: out moved aside."""
    old = out.parent / f".{out.name}.{token}.old"
    out.rename(old)
    return old


def test_a_folder_moved_aside_by_a_killed_swap_is_put_back_before_the_next_write(tmp_path):
    out = tmp_path / "model"
    fileio.write_folder(out, _fill("previous"))
    old = _interrupted_between_renames(out)
    with (pytest.warns(UserWarning, match="put back"),
          pytest.raises(TrustgainError, match="appeared while writing")):
        fileio.write_folder(out, _fill("new"), replace=False)
    assert (out / "a.txt").read_text() == "previous" and not old.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and (leftovers[0] / "a.txt").read_text() == "new"


def test_replaced_folders_left_after_a_killed_swap_are_removed(tmp_path):
    out = tmp_path / "model"
    fileio.write_folder(out, _fill("previous"))
    stale = tmp_path / ".model.89abcdef.old"
    stale.mkdir()
    (stale / "a.txt").write_text("older")
    busy = tmp_path / ".model.89abcdef.tmp"  # another writer's work: never touched
    busy.mkdir()
    other = tmp_path / ".model2.89abcdef.old"  # another folder's: never touched
    other.mkdir()
    with pytest.warns(UserWarning, match="removed 1 replaced"):
        fileio.write_folder(out, _fill("new"))
    assert (out / "a.txt").read_text() == "new"
    assert not stale.exists() and busy.is_dir() and other.is_dir()


def test_several_copies_beside_a_missing_folder_are_left_for_the_user(tmp_path):
    out = tmp_path / "model"
    for token in ("00000001", "00000002"):
        (tmp_path / f".model.{token}.old").mkdir()
    with pytest.warns(UserWarning, match="several earlier copies"):
        assert "none moved" in fileio.finish_interrupted_swap(out)
    assert not out.exists() and len(list(tmp_path.iterdir())) == 2
    assert fileio.finish_interrupted_swap(tmp_path / "absent") is None


def test_clean_up_waits_for_a_writer_between_its_two_renames(tmp_path, monkeypatch):
    import threading
    import time

    out = tmp_path / "model"
    fileio.write_folder(out, _fill("old"))
    real, paused, go = os.rename, threading.Event(), threading.Event()

    def rename(src, dst):
        if str(src).endswith(".tmp"):  # the second rename: out is moved aside already
            paused.set()
            go.wait(5)
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "rename", rename)
    writer = threading.Thread(target=fileio.write_folder, args=(out, _fill("new")))
    writer.start()
    assert paused.wait(5)
    cleaner = threading.Thread(target=fileio.finish_interrupted_swap, args=(out,))
    cleaner.start()
    time.sleep(0.2)
    assert cleaner.is_alive()  # waits for the writer's lock instead of putting "old" back
    go.set()
    writer.join(5)
    cleaner.join(5)
    assert (out / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
