"""Opening images and applying a luminance change to every pixel format the marks accept.

Accepted for marking: 8-bit RGB and grayscale (L), with or without alpha (RGBA, LA: the
alpha channel is kept bit for bit), and 16-bit grayscale (I;16, marked at 16-bit precision).
Refused, with the reason: CMYK, palette, 1-bit, float and 32-bit images (convert them to RGB
yourself, so the conversion is a choice you made), and images under the minimum size.
Detection reads the luminance of any mode Pillow opens.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from trustgain.errors import InputError

EMBED_MODES = ("RGB", "RGBA", "L", "LA", "I;16")
MAX_PIXELS = 8192 * 8192
_REFUSED = {
    "CMYK": "CMYK image: convert it to RGB first (the mark lives in luminance)",
    "P": "palette image: convert it to RGB first (marking would change its palette)",
    "PA": "palette image: convert it to RGBA first",
    "1": "1-bit image: a bilevel image cannot carry an invisible mark",
    "F": "32-bit float image: convert it to 8- or 16-bit first",
    "I": "32-bit integer image: convert it to 8- or 16-bit first",
    "YCbCr": "YCbCr image: convert it to RGB first",
    "LAB": "Lab image: convert it to RGB first",
    "HSV": "HSV image: convert it to RGB first",
}


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and decode an image fully, or raise a one-line :class:`InputError`."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            if image.width * image.height > MAX_PIXELS:
                raise InputError(
                    f"{path}: {image.width}x{image.height} is larger than {MAX_PIXELS} pixels"
                )
            remember_orientation(image)
            image.load()
            if image.format == "TIFF" and tiff_loader_orients():
                image.info[_ORIENTATION] = 1  # the pixels are upright already
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{path}: image is too large to decode safely") from None
    except OSError as exc:
        raise InputError(f"{path}: corrupt or truncated image ({exc})") from None
    return image


_ORIENTATION = "trustgain.orientation"


def _orientation(image: Image.Image) -> int | None:
    try:
        value = image.getexif().get(0x0112)
    except (OSError, SyntaxError, ValueError, TypeError):  # unreadable EXIF: nothing to keep
        return None
    return value if isinstance(value, int) else None


@functools.cache
def tiff_loader_orients() -> bool:
    """Whether this Pillow turns a TIFF's pixels upright as it loads them (Pillow 13 does,
    and drops the tag): then an output must not carry the orientation again, or every reader
    would turn it twice. Probed once on a 2x1 image, so no Pillow version is assumed."""
    buf = io.BytesIO()
    Image.frombytes("L", (2, 1), bytes([0, 255])).save(buf, "TIFF", tiffinfo={0x0112: 2})
    with Image.open(io.BytesIO(buf.getvalue())) as probe:
        probe.load()
        return probe.getpixel((0, 0)) == 255  # orientation 2: mirrored left-right


def remember_orientation(image: Image.Image) -> None:
    """Note the EXIF orientation in ``image.info`` before ``load()``: Pillow's TIFF reader
    forgets its tags once the pixels are decoded."""
    image.info[_ORIENTATION] = _orientation(image) or 1


def display_metadata(image: Image.Image, fmt: str = "PNG") -> dict[str, Any]:
    """Save keywords that make an output display as ``image`` did: ICC profile and orientation.

    Outputs of ``trustgain watermark embed`` and ``trustgain protect`` keep the pixels in their
    stored orientation (what a model reading the file sees), so a camera JPEG whose EXIF says
    "rotate 90 degrees" must keep saying so, and a wide-gamut photo its colour profile. The rest
    of EXIF (GPS position, camera serial number, ...) is dropped on purpose: marked and protected
    images are made to be published. ``fmt`` is the Pillow format the keywords are for: PNG,
    JPEG and WebP take EXIF bytes, TIFF the orientation as a tag; BMP can hold neither.
    """
    out: dict[str, Any] = {}
    if fmt == "BMP":
        return out
    icc = image.info.get("icc_profile")
    if isinstance(icc, bytes) and icc:
        out["icc_profile"] = icc
    orientation = image.info.get(_ORIENTATION)
    if orientation is None:
        orientation = _orientation(image)
    if isinstance(orientation, int) and 2 <= orientation <= 8 and fmt == "TIFF":
        out["tiffinfo"] = {0x0112: orientation}
    elif isinstance(orientation, int) and 2 <= orientation <= 8:
        exif = Image.Exif()
        exif[0x0112] = orientation
        out["exif"] = exif.tobytes()
    return out


def check_embeddable(image: Image.Image, min_side: int) -> None:
    if image.mode in _REFUSED:
        raise InputError(_REFUSED[image.mode])
    if image.mode not in EMBED_MODES:
        raise InputError(f"{image.mode} image: not supported; convert it to RGB first")
    if min(image.size) < min_side:
        raise InputError(
            f"image is {image.width}x{image.height}; the mark needs at least "
            f"{min_side}x{min_side} pixels"
        )


def add_luminance(image: Image.Image, delta: np.ndarray) -> Image.Image:
    """``image`` with ``delta`` (8-bit units, HxW) added to its luminance, alpha untouched."""
    array = np.asarray(image)
    if image.mode == "I;16":
        out = np.clip(np.rint(array.astype(np.float64) + 257.0 * delta), 0, 65535)
        return Image.fromarray(out.astype(np.uint16))  # 2-D uint16 -> I;16
    colour = (
        array[..., :3]
        if image.mode in ("RGB", "RGBA")
        else (array[..., 0] if image.mode == "LA" else array)
    )
    shifted = colour.astype(np.float32) + (delta[..., None] if colour.ndim == 3 else delta)
    shifted = np.clip(np.rint(shifted), 0, 255).astype(np.uint8)
    if image.mode in ("RGBA", "LA"):
        alpha = array[..., -1:]
        shifted = np.concatenate(
            [shifted if shifted.ndim == 3 else shifted[..., None], alpha], axis=-1
        )
    out = Image.fromarray(shifted)  # the mode follows from the array's shape and dtype
    if out.mode != image.mode:
        raise InputError(f"cannot rebuild a {image.mode} image")
    return out
