"""Embed the pixel mark, then read it back from what will be kept, raising the strength if needed.

The mark's detection statistic grows with the number of 128-px tiles an image holds. At the
default strength every one of 27 photos was found at 288 px and above, but at 256 px (two
tiles a side) 2 of 27 were not found even un-attacked (z 5.5 against a threshold of 6.6 at
FPR 1e-3); at 1.25x the strength (PSNR 38.7 instead of 40.7 dB) all 27 were
(BENCHMARKS.md, "Pixel mark on small images"). So the CLI and the ``watermark.pixel`` stage
check each mark as written and step the strength up (x1.25, x1.5, x2, never past
``max_strength``) only for the images that need it, reporting the strength used; an image
whose mark cannot be found even then is refused with the reason instead of being passed on
as marked.

The read-back is :func:`pixel.detect_aligned`, not the full :func:`pixel.detect`: the image
checked is the embedder's own output (decoded from the encoded bytes when an encoder is
given), so its geometry, offset and nonce are known and the lattice search has nothing to find
there. The aligned read confirms that this hypothesis is among those the full detector reads,
so the full detector's p-value on the kept image is at most the check's; on such images the
full detector picks this very hypothesis and returns the same p-value and payload, bit for bit
(800 of 800 embedder outputs, PNG and JPEG 95, 256 px to 600x400). It costs about a quarter
of the full detector's time (BENCHMARKS.md, "Pixel mark: checked embed time").
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from trustgain.errors import InputError
from trustgain.watermark import pixel

#: Strength multipliers tried in turn (each only when the one before was not found).
STEPS = (1.0, 1.25, 1.5, 2.0)
#: The check's false-positive rate: the CLI detector's default.
CHECK_FPR = 1e-3


class WeakMarkError(InputError):
    """The mark was not found in the marked image even at the highest strength allowed."""


@dataclass(frozen=True)
class CheckedMark:
    image: Image.Image  # the marked image, before ``encode``
    data: bytes | None  # the encoded file bytes, when an encoder was given
    nonce: int
    strength: float  # the strength used
    p_value: float  # the check's p-value on what is kept


def embed_checked(
    image: Image.Image,
    key: bytes,
    payload: bytes,
    *,
    strength: float = pixel.STRENGTH,
    max_strength: float | None = None,
    encode: Callable[[Image.Image], bytes] | None = None,
    nonce: int | None = None,
) -> CheckedMark:
    """:func:`pixel.embed`, checked: the kept image must show the mark and its payload.

    ``encode`` turns the marked image into the file's bytes (e.g. JPEG at quality 95); the
    check then reads those bytes back, so a lossy format is checked as written. Without it
    the marked image itself is checked. ``max_strength`` (default: twice ``strength``, at most
    8) bounds the steps; ``max_strength=strength`` checks without raising.
    """
    pixel.check_strength(strength)
    if max_strength is not None:
        pixel.check_strength(max_strength, "max_strength")
    top = min(8.0, 2.0 * strength) if max_strength is None else max_strength
    if top < strength:
        raise ValueError(f"max_strength {top:g} is below strength {strength:g}")
    nonce = secrets.randbelow(pixel.NONCES) if nonce is None else nonce
    tried = sorted({min(top, strength * k) for k in STEPS})
    for level in tried:
        marked, _ = pixel.embed(image, key, payload, strength=level, nonce=nonce)
        data = encode(marked) if encode is not None else None
        kept = _decode(data) if data is not None else marked
        found = pixel.detect_aligned(kept, key, nonce, fpr=CHECK_FPR, require_payload=True)
        if found.detected and found.payload == payload:
            return CheckedMark(marked, data, nonce, level, found.p_value)
    why = (f"p={found.p_value:.3g}, but its payload is not recovered" if found.present
           else f"p={found.p_value:.3g}, needs <= {CHECK_FPR:g}")
    raise WeakMarkError(
        f"the mark is not found in the marked image even at strength {tried[-1]:g} ({why}): "
        f"the image is too small or too busy for it ({image.width}x{image.height})",
        hint="a larger image holds the mark better; or allow a higher --max-strength")


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        return opened.copy()
