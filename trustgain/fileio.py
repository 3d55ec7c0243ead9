"""Writing files without losing data: temporary file in the same folder, fsync, then rename."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from trustgain.errors import OutputExistsError, OutputWriteError, TrustgainError


def write_atomic(
    path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False, mode: int = 0o644
) -> Path:
    """Write ``data`` to ``path`` atomically with permission ``mode``.

    Without ``overwrite``, an existing file is never replaced (checked atomically with a hard
    link, so two writers cannot both win). A crash leaves either the old file or the new one.
    A write that fails (read-only folder, full disk) raises :class:`OutputWriteError`, which
    names ``path``, not the temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise TrustgainError(f"{path} is a folder, not a file path")
    if not overwrite and path.exists():
        raise OutputExistsError(path)
    try:
        return _write(path, data, overwrite, mode)
    except OutputExistsError:
        raise
    except OSError as exc:
        blocker = next((p for p in path.parents if p.is_file()), None)
        cause = exc if blocker is None else NotADirectoryError(  # mkdir says "File exists"
            errno.ENOTDIR, f"{blocker} is a file, not a folder")
        raise OutputWriteError(path, cause) from None


def _write(path: Path, data: bytes, overwrite: bool, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(path) from None
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def occupied(path: Path) -> bool:
    """True for a file, a link or a non-empty folder at ``path``: what replacing would lose."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        return True
    return path.is_dir() and any(path.iterdir())


def remove(path: Path) -> None:
    """Remove a folder tree, a file or a link (the link itself); nothing there is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_folder(out: str | os.PathLike[str], write: Callable[[Path], None], *,
                 replace: bool = True, check: Callable[[], None] | None = None) -> Path:
    """Write a whole folder atomically: ``write(tmp)`` fills a new hidden sibling of ``out``
    (unique name), ``check()`` (if given) may still refuse, then ``tmp`` is renamed to
    ``out``. A reader, a crash, a full disk or Ctrl-C never sees a mix of old and new files.

    An existing ``out`` is moved aside, and removed only once the new folder is in place (put
    back if the rename fails). Without ``replace``, a file or non-empty folder that appeared at
    ``out`` meanwhile is kept and the new folder is left beside it
    (:class:`~trustgain.errors.TrustgainError` naming it: a long training is not lost). A
    folder that cannot be made or renamed raises :class:`OutputWriteError` naming ``out``;
    whatever ``write`` or ``check`` raises passes through, ``tmp`` removed.

    Written here because the standard library renames files, not trees, atomically; it is
    shared by every command that writes a model folder.
    """
    out = Path(out).absolute()
    finish_interrupted_swap(out)
    token = secrets.token_hex(4)
    tmp = out.parent / f".{out.name}.{token}.tmp"
    old = out.parent / f".{out.name}.{token}.old"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise OutputWriteError(out, exc) from None
    try:
        write(tmp)
        if check is not None:
            check()
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, TrustgainError):
            raise OutputWriteError(out, exc) from None
        raise
    with _swap_lock(out.parent):  # no other writer's clean-up between the two renames
        if not replace and occupied(out):
            raise TrustgainError(f"{out} appeared while writing; the new folder is in {tmp}",
                                 hint="move it into place by hand, or rerun with --force")
        try:
            if out.exists() or out.is_symlink():
                os.rename(out, old)
            os.rename(tmp, out)
        except OSError as exc:
            if (old.exists() or old.is_symlink()) and not (out.exists() or out.is_symlink()):
                with contextlib.suppress(OSError):
                    os.rename(old, out)
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputWriteError(out, exc) from None
        remove(old)
    return out


@contextlib.contextmanager
def _swap_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` for a swap of two renames: writers and
    :func:`finish_interrupted_swap` in that folder take turns (a killed holder's lock goes
    with it). Where ``fcntl`` is missing (Windows) or the folder cannot be opened, no lock."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def finish_interrupted_swap(out: str | os.PathLike[str]) -> str | None:
    """Clean up after a :func:`write_folder` killed while swapping folders; what was done.

    Killed between its two renames, ``out`` is gone and the previous folder sits in
    ``.OUT.<token>.old``: it is put back (one such folder only; several are left for the user
    and named). Killed after them, the ``.old`` folders are the replaced folder, which the
    writer was about to remove: they are removed. ``.tmp`` folders are never touched here:
    one may be another writer's work in progress. Also warns (:mod:`warnings`).
    """
    out = Path(out).absolute()
    with _swap_lock(out.parent):
        return _finish_swap(out)


def _finish_swap(out: Path) -> str | None:
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[0-9a-f]{{8}}\.old")
    try:
        olds = sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name))
    except OSError:
        return None
    if not olds:
        return None
    if out.exists() or out.is_symlink():
        for old in olds:
            remove(old)
        message = (f"removed {len(olds)} replaced folder(s) left beside {out} "
                   "by an interrupted write")
    elif len(olds) == 1:
        try:
            os.rename(olds[0], out)
        except OSError:
            return None
        message = f"put back {out} from {olds[0].name}: an earlier write was interrupted"
    else:
        names = ", ".join(p.name for p in olds)
        message = f"{out} is missing and several earlier copies are beside it ({names}); none moved"
    warnings.warn(message, stacklevel=4)
    return message


def trustgain_home() -> Path:
    """Folder for the user's keyring and trusted keys: $TRUSTGAIN_HOME or ~/.trustgain."""
    return Path(os.environ.get("TRUSTGAIN_HOME") or Path.home() / ".trustgain")
