"""Odd inputs to the protection library API: one-line errors that name the problem, never a
raw traceback from torch/struct/PIL, and recovery that fails closed."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from trustgain.errors import ConfigError, InputError
from trustgain.protection import (
    ProtectConfig,
    ProtectedImageModifiedError,
    RecoveryError,
    TamperedResidualError,
    WrongKeyError,
    poison,
    protect,
    recover,
)
from trustgain.protection import residual as R

CFG = ProtectConfig(steps=1, eot=(), diversity=0.0)


@pytest.fixture(scope="module")
def key(keyring):
    return keyring.derive("protect.rae", "residual").material


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 3)).eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (33, 17, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def protected(image, key, net):
    return protect(image, key=key, config=CFG, surrogates=[net], image_id="a")


def _protect(img, key, net, **kw):
    return protect(img, key=key, config=CFG, surrogates=[net], image_id=kw.pop("image_id", "a"),
                   **kw)


@pytest.mark.parametrize("make", [
    lambda a: Image.fromarray(a), lambda a: a.astype(np.uint16), lambda a: a / 255.0,
    lambda a: a.astype(np.float32), lambda a: a > 128,
    lambda a: torch.from_numpy(a.transpose(2, 0, 1).copy()),
])
def test_non_uint8_inputs_refused(image, key, net, make):
    with pytest.raises(InputError, match="uint8"):
        _protect(make(image), key, net)


@pytest.mark.parametrize("shape", [(33, 17, 4), (33, 17, 2), (3, 33, 17), (7, 7, 3), (1, 1)])
def test_bad_shapes_refused(key, net, shape):
    with pytest.raises(InputError, match=r"HxW|smaller"):
        _protect(np.zeros(shape, np.uint8), key, net)


def test_side_over_65535_refused_before_any_work(key, net):
    """Used to run the whole attack, then fail in struct.pack with a raw struct.error."""
    huge = np.broadcast_to(np.uint8(0), (70000, 8, 3))
    with pytest.raises(InputError, match="65535"):
        _protect(huge, key, net)


def test_image_id_must_be_a_string(image, key, net):
    with pytest.raises(TypeError, match="image ids must be strings"):
        _protect(image, key, net, image_id=None)


def test_grayscale_into_rgb_surrogate_is_a_config_error(image, key, net):
    with pytest.raises(ConfigError, match=r"surrogate 0 .* cannot take images of shape"):
        _protect(image[..., 0], key, net)


@pytest.mark.parametrize("labels, match", [(99, "not classes"), (-1, "not classes"),
                                           ("cat", "class indices")])
def test_bad_labels(image, key, net, labels, match):
    with pytest.raises(InputError, match=match):
        _protect(image, key, net, labels=labels)


def test_poison_checks_labels_too(image, key, net):
    x = torch.from_numpy(image.transpose(2, 0, 1).copy()).float()[None] / 255
    cfg = ProtectConfig(method="poison", steps=1, eot=(), diversity=0.0)
    with pytest.raises(InputError, match="not classes"):
        poison.perturb(x, key=key, config=cfg, surrogates=[net], labels=7)


def test_poison_dataset_refuses_alpha_and_empty(key):
    cfg = ProtectConfig(method="poison", extra={"poison": "shortcut"})
    with pytest.raises(InputError, match="4 channels"):
        poison.protect_dataset(np.zeros((2, 8, 8, 4), np.uint8), [0, 1], key=key, config=cfg)
    with pytest.raises(InputError, match="empty"):
        poison.protect_dataset(np.zeros((0, 8, 8, 3), np.uint8), [], key=key, config=cfg)


@pytest.mark.parametrize("bad", ["k" * 32, b"k" * 16, None])
def test_bad_keys_named(image, net, bad):
    with pytest.raises(RecoveryError, match="32 bytes, got"):
        _protect(image, bad, net)


def test_recovery_fails_closed(image, key, net, protected, other_keyring):
    xp, sealed = protected
    assert np.array_equal(recover(xp, sealed, key=key), image)
    with pytest.raises(WrongKeyError):
        recover(xp, sealed, key=other_keyring.derive("protect.rae", "residual").material)
    with pytest.raises(ProtectedImageModifiedError):
        recover(image, sealed, key=key)  # an unprotected image
    other = np.random.default_rng(5).integers(0, 256, image.shape, dtype=np.uint8)
    _, sealed_other = _protect(other, key, net)
    with pytest.raises(ProtectedImageModifiedError):
        recover(xp, sealed_other, key=key)  # a residual of another image
    twice, sealed2 = _protect(xp, key, net)
    assert np.array_equal(recover(twice, sealed2, key=key), xp)
    with pytest.raises(ProtectedImageModifiedError):
        recover(twice, sealed, key=key)
    for n in (0, 3, 20, len(sealed) - 1):
        with pytest.raises(RecoveryError):
            recover(xp, sealed[:n], key=key)


def test_residual_argument_types(protected, key):
    xp, sealed = protected
    assert np.array_equal(recover(xp, memoryview(sealed), key=key),
                          recover(xp, bytearray(sealed), key=key))
    with pytest.raises(TypeError, match="residual must be"):
        recover(xp, None, key=key)


def test_truncated_residual_files(protected, key, tmp_path):
    xp, sealed = protected
    png, side = R.save(tmp_path / "p.png", xp, sealed, store="both")
    data = png.read_bytes()
    (tmp_path / "t.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError):
        recover(xp, tmp_path / "t.png", key=key)
    (tmp_path / "t.rae").write_bytes(side.read_bytes()[:-5])
    with pytest.raises(TamperedResidualError):
        recover(xp, tmp_path / "t.rae", key=key)


def _png_declaring(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = buf.getvalue()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return data[:8] + chunk + data[33:]


@pytest.mark.parametrize("size", [(20000, 20000), (9000, 10000)])
def test_decompression_bomb_png_refused(protected, key, tmp_path, size):
    """Used to raise PIL's raw DecompressionBombError (or warn and try to decode 90 Mpx)."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(*size))
    with pytest.raises(InputError, match="too large"):
        recover(protected[0], path, key=key)


def test_self_recover_checks_inputs_before_loading_a_ddpm(image, key):
    """A uint8 tensor used to be read as [0, 1] floats (values up to 255), and a str key
    failed deep in hmac; both are refused up front now, before any model is needed."""
    from trustgain.protection import self_recover

    as_u8 = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    with pytest.raises(InputError, match="float"):
        self_recover(as_u8, key=key)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        self_recover(as_u8.float(), key=key)
    with pytest.raises(RecoveryError, match="32 bytes"):
        self_recover(image, key="k" * 32)
    with pytest.raises(InputError, match="HxW"):
        self_recover(image[None], key=key)
    with pytest.raises(TypeError, match="protected must be"):
        self_recover(Image.fromarray(image), key=key)
