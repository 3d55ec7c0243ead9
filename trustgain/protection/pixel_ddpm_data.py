"""Training images for the pixel DDPM: random crops of a folder's images (8-bit, and 16-bit
grey at full precision), the digits, or the natural 32x32 patches (:func:`named_images`), and
the paths they come from (:func:`data_paths`), which an output folder must never hold.

Part of :mod:`trustgain.protection.pixel_ddpm`, which re-exports its public names.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F

from trustgain.errors import InputError, TrustgainError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

# 16-bit grayscale (Pillow opens such a PNG as I;16, an older Pillow as I) is read at full
# precision, 65535 -> 1.0; 32-bit integer and float images are skipped with the reason (as the
# protection inputs refuse them: the conversion is the user's choice).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
REFUSED_MODES = {
    "I": "32-bit integer image: convert it to 8 or 16 bits first",
    "F": "32-bit float image: convert it to 8 or 16 bits first",
}


def image_files(folder: str | Path) -> list[Path]:
    """The files under ``folder`` (recursively) with an image suffix, sorted."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _training_image(path: Path, mode: str) -> Any:
    """``path`` as an 8-bit ``mode`` ('L' or 'RGB') image, or as a float ('F') grey image in
    [0, 1] when it is 16-bit; :class:`InputError` (the reason) for 32-bit images."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in SIXTEEN_BIT_MODES or (im.mode == "I" and im.format == "PNG"):
            return Image.fromarray(np.asarray(im).astype(np.float32) / 65535.0)
        if im.mode in REFUSED_MODES:
            raise InputError(REFUSED_MODES[im.mode])
        return im.convert(mode)


def folder_images(folder: str | Path, *, size: int, channels: int, crops_per_image: int = 64,
                  seed: int = 0) -> np.ndarray:
    """Random ``size``x``size`` crops of every image under ``folder``: float32 (N, C, S, S) in
    [0, 1]. Images are first scaled so their short side is 4x ``size`` (large photos then give
    natural-looking patches rather than flat colour). 16-bit grayscale images are read at full
    precision. Unreadable files and 32-bit images are skipped with a reason on stderr; a folder
    with no readable image is an error."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder", hint="pass --data DIR, digits or patches")
    rng = np.random.default_rng(seed)
    mode = "L" if channels == 1 else "RGB"
    out = []
    for p in image_files(folder):
        try:
            im = _training_image(p, mode)
        except InputError as exc:
            print(f"skipping {p}: {exc}", file=sys.stderr)
            continue
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            print(f"skipping {p}: {exc}", file=sys.stderr)  # UnidentifiedImageError is an OSError
            continue
        scale = 4 * size / min(im.size)
        if scale < 1:
            new = (max(size, round(im.width * scale)), max(size, round(im.height * scale)))
            im = im.resize(new, Image.BICUBIC)
        if im.mode == "F":  # 16-bit grey, already in [0, 1]; bicubic may overshoot a little
            arr = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        else:
            arr = np.asarray(im, dtype=np.float32) / 255.0
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.shape[2] != channels:
            arr = np.repeat(arr, channels, axis=2)
        h, w = arr.shape[:2]
        if h < size or w < size:
            print(f"skipping {p}: smaller than {size}x{size}", file=sys.stderr)
            continue
        ys = rng.integers(0, h - size + 1, crops_per_image)
        xs = rng.integers(0, w - size + 1, crops_per_image)
        out += [arr[y:y + size, x:x + size].transpose(2, 0, 1) for y, x in zip(ys, xs, strict=True)]
    if not out:
        raise InputError(f"no readable image of at least {size}x{size} under {folder}")
    return np.stack(out).astype(np.float32)


def digits_images(size: int = 32) -> np.ndarray:
    """The digits' fixed train split (trustgain.models.data), upsampled ink maps (N,1,S,S)."""
    from trustgain.models.data import load_split, upsample

    images, _ = load_split("train")
    x = upsample(images)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.numpy()


def named_images(data: str, *, size: int, channels: int) -> np.ndarray:
    """``digits``, ``patches`` (natural 32x32 training patches) or a folder."""
    if data == "digits":
        if channels != 1:
            raise TrustgainError("the digits domain is grey: use --channels 1")
        return digits_images(size)
    if data == "patches":
        from trustgain.protection.patches import load

        if size != 32:
            raise TrustgainError("natural patches are 32x32: use --size 32")
        imgs, _, _ = load("train", 400)
        x = imgs.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return x if channels == 3 else x.mean(1, keepdims=True)
    return folder_images(data, size=size, channels=channels)


def data_paths(data: str) -> list[Path]:
    """The files and folders ``data`` (as :func:`named_images` takes it) is read from: an output
    folder must never hold one of them."""
    if data == "digits":
        return []
    if data == "patches":
        from trustgain.protection.patches import photos_dir

        folder = photos_dir()
        return [] if folder is None else [folder]
    folder = Path(data).expanduser()
    return [folder, *image_files(folder)] if folder.is_dir() else [folder]
