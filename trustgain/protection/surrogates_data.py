"""Training images for surrogates from a user's folder (:func:`folder_dataset`): class
subfolders, or a flat folder whose images each give a class of random 32x32 crops; 8-bit
images only (:func:`read_image`).

Part of :mod:`trustgain.protection.surrogates`, which re-exports its public names.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trustgain.errors import InputError

#: Image files the training command reads (others are left alone).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})

#: Pixel formats refused for training, as ``trustgain protect`` refuses them: converting to
#: 8 bits is a choice (full range? window? gamma?) the user has to make, and the surrogates
#: should see the same 8-bit images that will be protected.
_WIDE_MODES = {"I;16": "a 16-bit", "I;16B": "a 16-bit", "I;16L": "a 16-bit",
               "I;16N": "a 16-bit", "I": "a 32-bit integer", "F": "a 32-bit float"}


def _visible(folder: Path) -> list[Path]:
    """``folder``'s entries not hidden (name starting with '.'), sorted."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise InputError(f"cannot read {folder}: {exc.strerror or exc}") from None


def _some(paths: Sequence[Path]) -> str:
    more = f", ... ({len(paths)} in all)" if len(paths) > 3 else ""
    return ", ".join(p.name for p in paths[:3]) + more


def read_image(path: Path) -> np.ndarray | None:
    """An image file as uint8 RGB; None (and a note on stderr) when it cannot be read.
    16-bit and float images raise :class:`~trustgain.errors.InputError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in _WIDE_MODES:
                raise InputError(
                    f"{path} is {_WIDE_MODES[image.mode]} image ({image.mode}); trustgain "
                    "protect takes 8-bit images only, so surrogates are trained on 8-bit ones",
                    hint="convert it (and the images you will protect) to 8 bits first")
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        why = "not an image Pillow can read"
    except Image.DecompressionBombError:
        why = "too large to decode safely"
    except (OSError, SyntaxError, ValueError) as exc:
        why = f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
    print(f"skipping unreadable {path} ({why})", file=sys.stderr)
    return None


def folder_dataset(data: Path, *, per_image: int = 64, seed: int = 0, progress: bool = False,
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images of a user's folder as 32x32 RGB with labels and class names.

    Subfolders are classes (hidden ones, name starting with '.', are skipped; a class folder
    without a readable image is refused, so the classes saved are the classes trained); with
    no subfolder, each image of at least 128x128 px is a class of ``per_image`` random
    crops. Images beside class folders are refused rather than silently left out. Unreadable
    files are skipped with a note; 16-bit and float images are refused (see
    :func:`read_image`).
    """
    from PIL import Image
    from tqdm import tqdm

    from trustgain.protection.patches import PATCH, crop

    data = Path(data)
    if not data.is_dir():
        raise InputError(f"{data} is not a folder")
    entries = _visible(data)
    subdirs = [p for p in entries if p.is_dir()]
    top = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    exts = ", ".join(sorted(IMAGE_SUFFIXES))
    if subdirs and top:
        raise InputError(
            f"{data} holds class folders ({_some(subdirs)}) and also images beside them "
            f"({_some(top)}), which would be left out",
            hint="move those images into a class folder, or the folders out (a flat folder "
                 "is one class per image); folders whose names start with '.' are skipped")
    if subdirs:
        classes = []
        for sub in subdirs:
            files = [p for p in _visible(sub) if p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise InputError(f"class folder {sub} holds no images ({exts})",
                                 hint="remove it, or rename it to start with '.' to skip it")
            classes.append((sub, files))
        jobs = [(label, path) for label, (_, files) in enumerate(classes) for path in files]
    else:
        jobs = [(0, path) for path in top]
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    names: list[str] = []
    found = np.zeros(len(subdirs), dtype=np.int64)
    rng = np.random.default_rng(seed)
    bar = tqdm(jobs, desc="reading", unit="image", disable=not progress or len(jobs) < 2,
               file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.5)
    for label, path in bar:
        img = read_image(path)
        if img is None:
            continue
        if subdirs:
            pil = Image.fromarray(img).resize((PATCH, PATCH), Image.Resampling.LANCZOS)
            xs.append(np.asarray(pil)[None])
            ys.append(np.asarray([label]))
            found[label] += 1
        elif min(img.shape[:2]) < 4 * PATCH:
            print(f"skipping {path}: {img.shape[1]}x{img.shape[0]} px is smaller than "
                  f"{4 * PATCH}x{4 * PATCH} (each image of a flat folder is a class of random "
                  f"{PATCH}x{PATCH} crops)", file=sys.stderr)
        else:
            xs.append(crop(img, per_image, "train", rng))
            ys.append(np.full(per_image, len(names)))
            names.append(path.name)
    if subdirs:
        names = [sub.name for sub, _ in classes]
        empty = [sub for (sub, _), n in zip(classes, found, strict=True) if n == 0]
        if empty:
            raise InputError(f"class folder {empty[0]} holds no readable image",
                             hint="remove it, or rename it to start with '.' to skip it")
        if len(names) < 2:
            raise InputError(f"{data} needs images of at least two classes; it has one class "
                             f"folder ({names[0]})", hint="add a folder per class")
    elif len(names) < 2:
        raise InputError(f"{data} needs images of at least two classes: a flat folder is one "
                         f"class per image of at least {4 * PATCH}x{4 * PATCH} px, and it "
                         f"holds {len(names)}",
                         hint="use one subfolder per class, or a flat folder of >= 2 images")
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), names
