"""Writing a detector-training run: the output folder's checks, and the tuned ``AutoencoderKL``
plus ``training.json`` written beside it and swapped into place (never a diverged encoder).

Part of :mod:`trustgain.watermark.detector_train`, which re-exports its public names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trustgain.fileio import write_folder
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

    def write(tmp: Path) -> None:
        vae.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(report, indent=2) + "\n",
                                           encoding="utf-8")

    write_folder(out, write, replace=overwrite)
    return out
