"""Fine-tuning data: an image folder with ``metadata.jsonl``, or arrays with captions.

The folder layout is Hugging Face's ``imagefolder`` convention: image files plus one JSON
line per image, ``{"file_name": "0001.png", "text": "a red seven"}``. Each image is one
record, the unit that differential privacy protects. Read with Pillow; the ``datasets``
library is not a dependency and would only add a cache layer here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from trustgain.digest import short_repr
from trustgain.errors import InputError
from trustgain.privacy.metadata import METADATA, read_metadata


def load_records(
    data: str | os.PathLike[str] | tuple[np.ndarray, list[str]], *, resolution: int
) -> tuple[np.ndarray, list[str]]:
    """``(images uint8 (N, resolution, resolution, 3), captions)`` from a folder or arrays."""
    if isinstance(data, tuple):
        images, captions = data
        images = _as_uint8(np.asarray(images))
        captions = [str(c) for c in captions]
    else:
        images, captions = _read_folder(Path(data), resolution)
    if len(images) != len(captions):
        raise InputError(f"{len(images)} images but {len(captions)} captions")
    if len(images) < 2:
        raise InputError("fine-tuning needs at least 2 images")
    if images.shape[1:3] != (resolution, resolution):
        images = _resize(images, resolution)
    return images, captions


def dataset_digest(images: np.ndarray, captions: list[str]) -> str:
    """SHA-256 over every image's bytes and caption, in order (names the data in records)."""
    h = hashlib.sha256()
    for img, cap in zip(images, captions, strict=True):
        h.update(np.ascontiguousarray(img).tobytes())
        h.update(cap.encode() + b"\0")
    return h.hexdigest()


def _as_uint8(images: np.ndarray) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise InputError(f"images must be (N, H, W, C), got shape {images.shape}")
    if images.shape[-1] in (3, 4):
        images = images[..., :3]
    elif images.shape[1] in (1, 3, 4):  # channels-first
        images = np.moveaxis(images[:, :3], 1, -1)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.dtype != np.uint8:
        if images.min() < 0 or images.max() > 1:
            raise InputError("float images must be in [0, 1]", hint="or give uint8 0-255")
        images = (images * 255).round().astype(np.uint8)
    return images


def _read_folder(folder: Path, resolution: int) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    meta = folder / METADATA
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    if not meta.is_file():
        raise InputError(
            f"{folder} has no {METADATA}",
            hint='write one JSON line per image: {"file_name": "a.png", "text": "a caption"}',
        )
    images, captions = [], []
    for path, name, text in read_metadata(folder, need_text=True):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (resolution, resolution):
                    im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
                images.append(np.asarray(im, dtype=np.uint8))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"{meta}: cannot read image {short_repr(name)}: {exc}") from None
        captions.append(str(text))
    if not images:
        raise InputError(f"{meta} lists no images")
    return np.stack(images), captions


def _resize(images: np.ndarray, resolution: int) -> np.ndarray:
    from PIL import Image

    return np.stack([
        np.asarray(Image.fromarray(im).resize((resolution, resolution),
                                              Image.Resampling.BICUBIC), dtype=np.uint8)
        for im in images
    ])


def write_folder(folder: str | os.PathLike[str], images: np.ndarray, captions: list[str]) -> Path:
    """Write ``images`` (uint8 NxHxWx3) and captions as an imagefolder; refuses a used folder."""
    from PIL import Image

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} is not empty", hint="choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (img, cap) in enumerate(zip(images, captions, strict=True)):
        name = f"{i:05d}.png"
        Image.fromarray(img).save(folder / name)
        lines.append(json.dumps({"file_name": name, "text": cap}))
    (folder / METADATA).write_text("\n".join(lines) + "\n")
    return folder
