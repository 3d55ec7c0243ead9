"""The pixel DDPM's output folder: what it holds (a model, an interrupted run's checkpoint),
:func:`check_output` (is it safe to write there, before anything loads) and
:func:`_write_folder` (a finished model written beside it and renamed into place).

Part of :mod:`trustgain.protection.pixel_ddpm`, which re-exports its public names.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from trustgain.errors import OutputExistsError, OutputWriteError, TrustgainError
from trustgain.fileio import write_folder

CHECKPOINT_NAME = ".ddpm-checkpoint.pt"
TRAINING_NAME = "training.json"
# what a finished model folder holds (DDPMPipeline.save_pretrained plus training.json)
MODEL_ENTRIES = {"unet", "scheduler", "model_index.json", TRAINING_NAME}
PACKAGE = Path(__file__).resolve().parents[1]


def _ours(name: str) -> bool:
    """A name this command writes into ``-o``: the model, the checkpoint, or a checkpoint's
    temporary file left by a killed run (fileio.write_atomic names them ``.NAME.*.tmp``)."""
    return (name in MODEL_ENTRIES or name == CHECKPOINT_NAME
            or (name.startswith(f".{CHECKPOINT_NAME}.") and name.endswith(".tmp")))


class OutputInUseError(OutputExistsError):
    """``-o`` is a non-empty folder this command did not write (``overwrite`` replaces it)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        TrustgainError.__init__(self, message, hint=hint)


def check_output(out: str | Path, *, overwrite: bool = False,
                 data_paths: Iterable[str | Path] = ()) -> Path:
    """``out`` resolved, once it is safe for :func:`train_ddpm` to write there, else a
    one-line :class:`TrustgainError`. Checked before any training (and before the data loads,
    from the command line):

    * never replaced, even with ``overwrite``: a folder that is or holds one of
      ``data_paths``, the current folder, the home folder or the trustgain package; a file;
    * a finished model needs ``overwrite`` (:class:`OutputExistsError`), and so does any other
      non-empty folder except one holding only an interrupted run's checkpoint
      (:class:`OutputInUseError`);
    * ``out`` (when it exists) and the folder beside it must be writable: a read-only ``-o``
      fails now, not at the first checkpoint (:class:`OutputWriteError`).
    """
    if not str(out).strip():
        raise TrustgainError("the output path is empty")
    given = Path(out).expanduser()
    try:
        return _check_output(given, overwrite, data_paths)
    except OSError as exc:  # e.g. a parent that cannot be searched
        if isinstance(exc, TrustgainError):
            raise
        raise OutputWriteError(given, exc) from None


def _check_output(given: Path, overwrite: bool, data_paths: Iterable[str | Path]) -> Path:
    resolved = given.resolve()
    guarded = {Path.cwd().resolve(), PACKAGE}
    with contextlib.suppress(RuntimeError):  # no home folder known
        guarded.add(Path.home().resolve())
    if any(g.is_relative_to(resolved) for g in guarded):
        raise TrustgainError(f"refusing to replace {given}: it holds the current folder, the "
                             "home folder or the trustgain package",
                             hint="choose a new or empty output folder")
    for path in data_paths:
        path = Path(path).expanduser().resolve()
        if path.is_relative_to(resolved):
            raise TrustgainError(f"refusing to replace {given}: it holds the training data "
                                 f"({path})", hint="choose an output folder outside the data")
    blocker = next((p for p in resolved.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise TrustgainError(f"cannot write {given}: {blocker} is a file, not a folder")
    if resolved.exists() and not resolved.is_dir():
        raise TrustgainError(f"{given} is a file, not a folder",
                             hint="choose a new or empty output folder")
    if resolved.is_dir():
        try:
            names = {entry.name for entry in os.scandir(resolved)}
        except OSError as exc:
            raise OutputWriteError(given, exc) from None
        if not overwrite and any(not _ours(name) for name in names):
            raise OutputInUseError(
                f"{given} is not empty and holds no pixel_ddpm model or checkpoint; the model "
                "would replace everything in it",
                hint="choose a new or empty folder, or pass overwrite=True to replace it")
        if not overwrite and names & MODEL_ENTRIES:
            raise OutputExistsError(given)
    # the checkpoint goes into out, the finished model into a folder beside it
    nearest = next(p for p in (resolved.parent, *resolved.parent.parents) if p.exists())
    for folder in ([resolved] if resolved.is_dir() else []) + [nearest]:
        try:
            fd, probe = tempfile.mkstemp(prefix=".pixel_ddpm-probe.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputWriteError(given, exc) from None
    return resolved


def _write_folder(out: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a new folder beside ``out`` and rename it into place; the old
    ``out``, if any, goes only once the new one is there (:func:`trustgain.fileio.write_folder`)."""
    write_folder(out, write)
