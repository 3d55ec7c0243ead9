"""Writing a detector-training run: the output folder's checks, and the tuned ``AutoencoderKL``
plus ``training.json`` written beside it and swapped into place (never a diverged encoder).

Part of :mod:`trustgain.watermark.detector_train`, which re-exports its public names.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trustgain.errors import OutputWriteError
from trustgain.watermark.detector_train_setup import DetectorTrainError, check_finite


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse a file, a non-empty folder unless ``overwrite``, or a place no folder can be
    made (under a file, or in a folder this user cannot write)."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise DetectorTrainError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DetectorTrainError(f"{out} exists and is not empty (pass --overwrite to replace)")
    parent = next(p for p in out.parents if p.exists())
    if not parent.is_dir():
        raise DetectorTrainError(f"cannot write {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DetectorTrainError(f"cannot write {out}: {parent} is not writable")


def save_output(vae: Any, report: dict[str, Any], out: str | os.PathLike,
                overwrite: bool = False) -> Path:
    """``vae.save_pretrained`` + ``training.json`` into a temporary sibling folder, then renamed
    to ``out`` (an existing folder is replaced only with ``overwrite``). A ``vae`` with a NaN
    or infinite weight (a diverged run) is refused and nothing is written."""
    out = Path(out).absolute()
    check_output(out, overwrite)
    check_finite(vae)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise OutputWriteError(out, exc) from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        vae.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(report, indent=2) + "\n",
                                           encoding="utf-8")
        _swap_in(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputWriteError(out, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_in(tmp: Path, out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)  # also over an empty folder
