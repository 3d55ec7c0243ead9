"""The ``watermark.pixel`` stage: mark every image output with the provenance record id.

The payload is the first 32 bits of the record id, so a file whose metadata was stripped
still leads back to its signed record (a soft binding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from trustgain.errors import ConfigError
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult
from trustgain.watermark import pixel
from trustgain.watermark.pixel_check import WeakMarkError, embed_checked

KEY_PURPOSE = "pixel"


def payload_for(record_id: str) -> bytes:
    """The 4-byte payload that links a mark to ``record_id`` (its first 8 hex digits)."""
    return bytes.fromhex(record_id[: 2 * (pixel.PAYLOAD_BITS // 8)])


@dataclass(frozen=True)
class PixelMark:
    """Keyed luminance mark on each image output (``strength``: RMS change, 8-bit units).

    Each mark is read back before the stage returns; where it is not found the strength is
    raised for that image, up to ``max_strength`` (default twice ``strength``), and an image
    whose mark cannot be found even then fails the stage (:mod:`trustgain.watermark.pixel_check`).
    The strength used and the check's p-value are recorded per image.
    """

    name: ClassVar[str] = "watermark.pixel"
    phase: ClassVar[Phase] = Phase.PROTECT
    version: ClassVar[str] = "2"  # 2: each mark checked, strength raised where needed
    requires: ClassVar[frozenset[str]] = frozenset({"images"})

    strength: float = pixel.STRENGTH
    max_strength: float | None = None

    def __post_init__(self) -> None:
        if not 0.5 <= self.strength <= 8.0:
            raise ValueError("strength must be in [0.5, 8] (RMS luminance change, 8-bit units)")
        top = self.max_strength
        if top is not None and not self.strength <= top <= 8.0:
            raise ValueError("max_strength must be in [strength, 8]")

    def check_request(self, request: Any) -> None:
        """Refuse, before generating, outputs this stage could not mark."""
        output_type = request.extra.get("output_type", "pil")
        if output_type != "pil":
            raise ConfigError(f"it marks PIL images, and output_type is {output_type!r}",
                              hint="leave output_type as 'pil' with this stage")
        if request.height and request.width and min(request.height, request.width) < (
                pixel.MIN_SIDE):
            raise ConfigError(f"{request.width}x{request.height} outputs are too small for the "
                              f"mark (it needs at least {pixel.MIN_SIDE}x{pixel.MIN_SIDE})")

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        images = [o for o in item.outputs if isinstance(o, Image.Image)]
        if len(images) != len(item.outputs):
            raise ValueError("outputs are not images: use output_type='pil' with this stage")
        key = ctx.key(KEY_PURPOSE)
        payload = payload_for(ctx.run_id)
        marked, marks = [], []
        for image in images:
            try:
                mark = embed_checked(image, key.material, payload, strength=self.strength,
                                     max_strength=self.max_strength)
            except WeakMarkError as exc:  # its hint names the CLI's flag; a stage has a setting
                raise WeakMarkError(str(exc), hint="a larger image holds the mark better; or "
                                    "raise this stage's max_strength setting (at most 8), e.g. "
                                    "in trustgain.json") from None
            marked.append(mark.image)
            marks.append({"nonce": mark.nonce, "strength": mark.strength,
                          "check_p_value": mark.p_value, "psnr_db": psnr(image, mark.image)})
        params: dict[str, Any] = {
            "key_id": key.key_id,
            "payload": payload.hex(),
            "payload_source": "record_id[:8]",
            "strength": self.strength,
            "marks": marks,
        }
        return StageResult(item.replace(outputs=tuple(marked)), params)


def psnr(a: Image.Image, b: Image.Image) -> float | None:
    """PSNR of ``b`` against ``a`` in dB (None when identical); 16-bit aware."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    peak = 65535.0 if a.mode == "I;16" else 255.0
    return None if mse == 0 else round(10 * np.log10(peak**2 / mse), 3)
