"""Writing files without losing data: temporary file in the same folder, fsync, then rename."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
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


def trustgain_home() -> Path:
    """Folder for the user's keyring and trusted keys: $TRUSTGAIN_HOME or ~/.trustgain."""
    return Path(os.environ.get("TRUSTGAIN_HOME") or Path.home() / ".trustgain")
