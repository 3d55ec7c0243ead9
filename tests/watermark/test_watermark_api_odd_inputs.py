"""Odd inputs to the watermark library API: one-line errors that name the problem, never a raw
traceback from numpy/PIL/hmac, and never a silently wrong mark or reading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trustgain.errors import InputError
from trustgain.keys import KeyRing
from trustgain.watermark import latent as L
from trustgain.watermark import pixel
from trustgain.watermark.pixel_check import embed_checked

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(60, 200, (256, 256, 3), dtype=np.uint8))


@pytest.mark.parametrize("call", [
    lambda im: pixel.embed(np.asarray(im), KEY, b"abcd"),
    lambda im: pixel.detect(np.asarray(im), KEY),
    lambda im: embed_checked(np.asarray(im), KEY, b"abcd"),
])
def test_arrays_are_refused_with_the_reason(photo, call):
    with pytest.raises(TypeError, match=r"PIL\.Image"):
        call(photo)


@pytest.mark.parametrize("key, error", [("k" * 32, TypeError), (KeyRing, TypeError),
                                        (b"", ValueError), (b"short", ValueError)])
def test_bad_keys(photo, key, error):
    with pytest.raises(error, match="watermark key"):
        pixel.embed(photo, key, b"abcd")
    with pytest.raises(error, match="watermark key"):
        pixel.detect(photo, key)


def test_bytearray_key_works(photo):
    marked, nonce = pixel.embed(photo, bytearray(KEY), b"abcd", nonce=3)
    assert marked.size == photo.size and nonce == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"payload": "abcd"}, "payload"), ({"payload": 5}, "payload"),
    ({"nonce": 99}, "nonce"), ({"nonce": -1}, "nonce"),  # 99: a mark no detector searches for
    ({"strength": float("nan")}, "strength"), ({"strength": -3.0}, "strength"),
    ({"strength": 0.0}, "strength"),
])
def test_bad_embed_arguments(photo, kwargs, match):
    args = {"payload": b"abcd", **kwargs}
    payload = args.pop("payload")
    with pytest.raises(ValueError, match=match):
        pixel.embed(photo, KEY, payload, **args)


def test_embed_checked_refuses_nan_strength_instead_of_marking_at_8(photo):
    with pytest.raises(ValueError, match="strength"):
        embed_checked(photo, KEY, b"abcd", strength=float("nan"))


@pytest.mark.parametrize("fpr", [0.0, 1.0, 2.0, float("nan")])
def test_fpr_outside_0_1_refused(photo, fpr):
    """fpr=2 used to report every image as detected (p=1 <= 2)."""
    with pytest.raises(ValueError, match="fpr"):
        pixel.detect(photo, KEY, fpr=fpr)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_image_refused(bad):
    arr = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    arr[3, 3] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        pixel.detect(Image.fromarray(arr), KEY)


def test_unconvertible_mode_is_one_line_error():
    with pytest.raises(InputError, match="La image"):
        pixel.detect(Image.new("La", (64, 64)), KEY)


def test_16_bit_big_endian_detected_like_native():
    """I;16B used to go through convert("RGB"), which clips 16-bit values to 255."""
    y, x = np.mgrid[0:256, 0:256]
    smooth = (20000 + 80 * x + 60 * y).astype(np.uint16)
    marked, _ = pixel.embed(Image.fromarray(smooth), KEY, b"abcd", nonce=1, strength=4.0)
    native = np.asarray(marked)
    big = Image.frombytes("I;16B", marked.size, native.astype(">u2").tobytes())
    assert np.array_equal(np.asarray(big), native)
    want = pixel.luminance(marked)
    assert np.allclose(pixel.luminance(big), want)


# -- latent ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lkey():
    return L.latent_key(KeyRing.generate())


SHAPE = (1, 4, 16, 16)
RID = "0123456789abcdef0123"


def _marked(lkey):
    nonce = L.counter_nonce(lkey, 3)
    return L.marked_latents(lkey, [nonce], L.payload_from_record_id(RID, 64), SHAPE,
                            salt=b"r")


def test_latent_key_must_be_derived(lkey):
    z = _marked(lkey)
    with pytest.raises(TypeError, match="DerivedKey"):
        L.read_latent_mark(z, lkey.material)
    with pytest.raises(TypeError, match="DerivedKey"):
        L.marked_latents(lkey.material, [bytes(12)], np.zeros(64, np.uint8), SHAPE, salt=b"r")


def test_non_binary_payload_refused_not_nan_latents(lkey):
    """Payload bits of 2 used to make NaN latents without a word."""
    pay = L.payload_from_record_id(RID, 64) * 2
    with pytest.raises(ValueError, match="0/1 bits"):
        L.marked_latents(lkey, [L.counter_nonce(lkey, 0)], pay, SHAPE, salt=b"r")


def test_bad_nonce_and_salt_types(lkey):
    pay = L.payload_from_record_id(RID, 64)
    with pytest.raises(ValueError, match="12 bytes"):
        L.marked_latents(lkey, ["abc"], pay, SHAPE, salt=b"r")
    with pytest.raises(TypeError, match="salt"):
        L.marked_latents(lkey, [L.counter_nonce(lkey, 0)], pay, SHAPE, salt="r")


def test_non_finite_latents_refused(lkey):
    """A few NaN latents used to pass as detected with a wrong payload."""
    z = _marked(lkey).clone()
    z[0, 0, :8] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        L.read_latent_mark(z, lkey)


def test_numpy_latents_read_like_tensors(lkey):
    z = _marked(lkey)
    (a,) = L.read_latent_mark(z, lkey)
    (b,) = L.read_latent_mark(z.numpy(), lkey)
    assert a.detected and (a.p_value, a.payload) == (b.p_value, b.payload)


def test_expected_payload_longer_than_bits_refused_not_cut(lkey):
    """A full record id used to be cut to its *last* 64 bits, never matching the mark."""
    z = _marked(lkey)
    with pytest.raises(ValueError, match="does not fit 64 bits"):
        L.read_latent_mark(z, lkey, expected_payload=RID)
    with pytest.raises(ValueError, match="not a hex string"):
        L.read_latent_mark(z, lkey, expected_payload="xyz")
    (r,) = L.read_latent_mark(z, lkey, expected_payload=RID[:16])
    assert r.detected and r.bit_accuracy == 1.0


def test_latent_fpr_and_shape(lkey):
    with pytest.raises(ValueError, match="fpr"):
        L.read_latent_mark(torch.randn(SHAPE), lkey, fpr=2)
    with pytest.raises(ValueError, match="batch"):
        L.read_latent_mark(torch.randn(10), lkey)
