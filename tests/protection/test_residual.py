"""The sealed residual: exact recovery, wrong key, tampering, lenient mode, storage."""

from __future__ import annotations

import numpy as np
import pytest

from trustgain.errors import OutputExistsError, TrustgainError
from trustgain.protection import residual as R


def _pair(seed=0, shape=(16, 16, 3), eps=8):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    d = rng.integers(-eps, eps + 1, shape)
    xp = np.clip(x.astype(int) + d, 0, 255).astype(np.uint8)
    return x, xp


@pytest.fixture(scope="module")
def key(keyring):
    return keyring.derive("protect.rae", "residual").material


@pytest.mark.parametrize("shape", [(16, 16, 3), (12, 20), (9, 9, 1)])
def test_round_trip_exact(key, shape):
    x, xp = _pair(1, shape)
    sealed = R.seal(x, xp, key=key, image_id="img-1", method="pgd", eps=8)
    assert np.array_equal(R.open_and_apply(xp, sealed, key=key), x)
    info = R.parse(sealed)
    assert info["shape"] == shape and info["image_id"] == "img-1" and info["eps"] == 8
    assert info["method"] == "pgd"


def test_nonce_is_random(key):
    x, xp = _pair()
    a = R.seal(x, xp, key=key, image_id="a", method="pgd", eps=8)
    b = R.seal(x, xp, key=key, image_id="a", method="pgd", eps=8)
    assert a != b


def test_wrong_key_rejected(key, other_keyring):
    x, xp = _pair()
    sealed = R.seal(x, xp, key=key, image_id="a", method="pgd", eps=8)
    with pytest.raises(R.WrongKeyError, match="another key"):
        R.open_and_apply(xp, sealed, key=other_keyring.derive("protect.rae", "residual").material)
    assert isinstance(R.WrongKeyError("x"), TrustgainError)


def test_every_bit_flip_of_residual_detected(key):
    x, xp = _pair(2, (8, 8, 1), eps=2)
    sealed = R.seal(x, xp, key=key, image_id="d", method="pgd", eps=2)
    assert len(sealed) < 200
    for i in range(len(sealed) * 8):
        bad = bytearray(sealed)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(R.RecoveryError):
            R.open_and_apply(xp, bytes(bad), key=key)
    for cut in (0, 3, 10, len(sealed) - 1):  # truncation
        with pytest.raises(R.RecoveryError):
            R.open_and_apply(xp, sealed[:cut], key=key)


def test_every_bit_flip_of_protected_image_detected(key):
    x, xp = _pair(3, (8, 8, 3))
    sealed = R.seal(x, xp, key=key, image_id="p", method="pgd", eps=8)
    flat = xp.reshape(-1)
    for i in range(flat.size * 8):
        bad = flat.copy()
        bad[i // 8] ^= np.uint8(1 << (i % 8))
        with pytest.raises(R.ProtectedImageModifiedError, match="modified"):
            R.open_and_apply(bad.reshape(xp.shape), sealed, key=key)


def test_lenient_applies_to_reencoded_image_and_warns(key):
    x, xp = _pair(4)
    sealed = R.seal(x, xp, key=key, image_id="l", method="pgd", eps=8)
    noisy = np.clip(xp.astype(int) + 1, 0, 255).astype(np.uint8)
    with pytest.warns(R.RecoveryWarning):
        out = R.open_and_apply(noisy, sealed, key=key, lenient=True)
    assert np.abs(out.astype(int) - x).max() <= 1
    with pytest.raises(R.ProtectedImageModifiedError, match="shape"):
        R.open_and_apply(noisy[:8], sealed, key=key, lenient=True)


def test_budget_enforced_at_seal(key):
    x, _ = _pair()
    xp = x.copy()
    xp[0, 0, 0] = 255 if x[0, 0, 0] < 200 else 0
    with pytest.raises(TrustgainError, match="budget"):
        R.seal(x, xp, key=key, image_id="b", method="pgd", eps=8)


def test_bad_key_length():
    x, xp = _pair()
    with pytest.raises(R.RecoveryError, match="32 bytes"):
        R.seal(x, xp, key=b"short", image_id="k", method="pgd", eps=8)


def test_png_chunk_and_sidecar_storage(key, tmp_path):
    x, xp = _pair(5)
    sealed = R.seal(x, xp, key=key, image_id="s", method="pgd", eps=8)
    paths = R.save(tmp_path / "a.png", xp, sealed, store="png")
    assert paths == [tmp_path / "a.png"]
    pixels, got = R.load(tmp_path / "a.png")
    assert got == sealed and np.array_equal(R.open_and_apply(pixels, got, key=key), x)
    R.save(tmp_path / "b.png", xp, sealed, store="sidecar")
    assert (tmp_path / "b.png.rae").read_bytes() == sealed
    pixels, got = R.load(tmp_path / "b.png")
    assert got == sealed and np.array_equal(pixels, xp)
    with pytest.raises(OutputExistsError):
        R.save(tmp_path / "a.png", xp, sealed)
    from trustgain.protection import recover

    assert np.array_equal(recover(xp, tmp_path / "b.png.rae", key=key), x)
    assert np.array_equal(recover(xp, str(tmp_path / "a.png"), key=key), x)
    (tmp_path / "c.png").write_bytes(R.to_png(xp))
    with pytest.raises(R.RecoveryError, match="no residual chunk"):
        recover(xp, tmp_path / "c.png", key=key)
    with pytest.raises(R.RecoveryError, match="no residual"):
        R.load(tmp_path / "c.png")


def test_codecs_round_trip():
    rng = np.random.default_rng(0)
    r = rng.integers(-8, 9, 3072).astype(np.int16)
    for shape in [(3072,), (32, 32, 3), (7, 9), (5, 6, 1)]:
        rr = r[: int(np.prod(shape))].reshape(shape)
        for codec in R.CODECS:
            if codec in (3, 5) and len(shape) == 1:
                continue
            out = R.decode_residual(R.encode_residual(rr, codec), codec, shape)
            assert np.array_equal(out, rr) and out.shape == shape


def test_block_codec_wins_on_block_constant_residual(key):
    rng = np.random.default_rng(1)
    blocks = rng.choice([-8, 8], (16, 16, 3))
    x = rng.integers(20, 236, (32, 32, 3), dtype=np.uint8)
    xp = (x.astype(int) - blocks.repeat(2, 0).repeat(2, 1)).astype(np.uint8)
    sealed = R.seal(x, xp, key=key, image_id="blk", method="pgd", eps=8)
    assert R.parse(sealed)["codec"] in (3, 5)
    assert len(sealed) * 8 / x.size < 0.6
    assert np.array_equal(R.open_and_apply(xp, sealed, key=key), x)
