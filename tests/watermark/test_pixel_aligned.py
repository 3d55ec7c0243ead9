"""The aligned read-back (``pixel.detect_aligned``) against the full detector, and its use by
the checked embed."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from skimage import data as skdata

from trustgain.watermark import pixel
from trustgain.watermark.pixel_check import embed_checked

KEY = bytes(range(32))
PAYLOAD = b"\x0b\xad\xc0\xde"


def _photo(name: str, size: int) -> Image.Image:
    image = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    side = min(image.size)
    return image.crop((0, 0, side, side)).resize((size, size), Image.Resampling.BICUBIC)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    """``image`` as the CLI writes it (JPEG at quality 95)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _kept(image: Image.Image, fmt: str) -> Image.Image:
    """``image`` as written and read back, like the CLI's checked embed does."""
    with Image.open(io.BytesIO(_encoded(image, fmt))) as opened:
        opened.load()
        return opened.copy()


def _same(a: pixel.Detection, b: pixel.Detection) -> None:
    assert (a.z, a.p_value, a.payload, a.nonce, a.period, a.angle, a.detected, a.present) == (
        b.z, b.p_value, b.payload, b.nonce, b.period, b.angle, b.detected, b.present)
    assert a.bit_errors == b.bit_errors and (a.code_bits == b.code_bits).all()


@pytest.mark.parametrize(
    ("name", "size", "fmt", "nonce"),
    [
        ("astronaut", 512, "PNG", 3),
        ("coffee", 512, "JPEG", 17),
        ("chelsea", 256, "PNG", 30),
        ("rocket", 384, "JPEG", 0),
    ],
)
def test_aligned_read_equals_the_full_detector_on_the_embedders_output(name, size, fmt, nonce):
    image = _photo(name, size)
    if size == 384:  # a side that is not a whole number of tiles
        image = image.crop((0, 0, 384, 300))
    marked, _ = pixel.embed(image, KEY, PAYLOAD, nonce=nonce)
    kept = _kept(marked, fmt)
    full = pixel.detect(kept, KEY, require_payload=True)
    aligned = pixel.detect_aligned(kept, KEY, nonce, require_payload=True)
    assert full.present and full.nonce == nonce and (full.period, full.angle) == (128.0, 0.0)
    # chelsea at 256 px: the payload is not read at the default strength (the check raises it)
    assert (full.payload == PAYLOAD) == (name != "chelsea")
    _same(aligned, full)


def test_aligned_read_gives_the_full_detectors_answer_where_it_would_not_read_there():
    image = _photo("astronaut", 512)
    marked, nonce = pixel.embed(image, KEY, PAYLOAD, nonce=9)
    moved = marked.crop((37, 21, 512, 512))  # the offset is no longer 0: searched, found
    full = pixel.detect(moved, KEY, require_payload=True)
    assert full.detected and full.payload == PAYLOAD
    _same(pixel.detect_aligned(moved, KEY, nonce, require_payload=True), full)
    # unmarked: nothing at offset 0 for this nonce, so the full detector's answer (no mark)
    _same(pixel.detect_aligned(image, KEY, nonce), pixel.detect(image, KEY))


def test_checked_embed_reads_back_without_the_full_search(monkeypatch):
    def no_search(*args, **kwargs):
        raise AssertionError("the checked embed ran the full detector on its own output")

    image = _photo("astronaut", 512)
    expected = pixel.detect_aligned(
        _kept(pixel.embed(image, KEY, PAYLOAD, nonce=4)[0], "JPEG"), KEY, 4)
    monkeypatch.setattr(pixel, "detect", no_search)
    mark = embed_checked(image, KEY, PAYLOAD, nonce=4, encode=lambda im: _encoded(im, "JPEG"))
    assert mark.strength == pixel.STRENGTH and mark.p_value == expected.p_value < 1e-20
    monkeypatch.undo()
    assert pixel.detect(_kept(mark.image, "JPEG"), KEY, require_payload=True).payload == PAYLOAD

