"""The RAEDiff-style ddpm mode on a tiny seeded UNet built in code (no trained weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trustgain.errors import ConfigError, InputError
from trustgain.protection import ddim, ddpm
from trustgain.protection.api import ProtectConfig
from trustgain.protection.pixel_ddpm import PixelDDPM, build_scheduler, build_unet

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


@pytest.fixture(scope="module")
def model() -> PixelDDPM:
    torch.manual_seed(0)
    unet = build_unet(channels=1, size=16, width=8).eval()
    unet.requires_grad_(False)
    return PixelDDPM(unet, build_scheduler().alphas_cumprod.double(), 999)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two smooth 16x16 grey images (a blob and a bar), on the uint8 grid."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blob = torch.exp(-((yy - 7) ** 2 + (xx - 8) ** 2) / 18)
    bar = torch.sigmoid((xx - 8) * 1.5) * 0.8 + 0.1
    return torch.stack([blob, bar])[:, None].mul(255).round().div(255)


@pytest.fixture(scope="module")
def surrogate() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(256, 3)).eval()
    net.requires_grad_(False)
    return net


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_fixed_point_inversion_is_near_exact_and_beats_plain_ddim(model, images):
    ts = ddim.grid(150, 3)
    acp = model.alphas_cumprod
    errs = {}
    for fp in (0, 8):
        z = ddim.invert(model.unet, acp, images * 2 - 1, ts, fixed_point=fp)
        errs[fp] = float((ddim.decode(model.unet, acp, z, ts) - (images * 2 - 1)).abs().max())
    assert errs[8] < 1e-4
    assert errs[0] > 20 * errs[8]


def test_grid_starts_clean_and_ends_at_t_star():
    assert ddim.grid(100, 4) == [-1, 24, 50, 75, 100]
    assert ddim.grid(2, 10) == [-1, 0, 1, 2]  # no repeated timesteps
    with pytest.raises(ConfigError):
        ddim.grid(100, 0)


def test_keyed_basis_is_orthonormal_and_keyed():
    b = ddpm.keyed_basis(KEY, "img", 64, 8)
    assert torch.allclose(b.T @ b, torch.eye(8, dtype=b.dtype), atol=1e-10)
    assert torch.equal(b, ddpm.keyed_basis(KEY, "img", 64, 8))
    assert not torch.allclose(b, ddpm.keyed_basis(OTHER, "img", 64, 8))
    assert not torch.allclose(b, ddpm.keyed_basis(KEY, "img2", 64, 8))


@pytest.fixture(scope="module")
def protected(model, images, surrogate):
    cfg = ProtectConfig(method="ddpm", eps=24, steps=6,
                        extra={"t_star": 150, "ddim_steps": 3, "rank": 4, "lr": 0.5})
    out = ddpm.perturb(images, key=KEY, config=cfg, surrogates=[surrogate], image_id="t",
                       ddpm=model)
    return out.mul(255).round().div(255), cfg


def test_perturb_meets_the_budget_and_changes_the_image(protected, images):
    x_p, cfg = protected
    linf = (x_p - images).abs().amax() * 255
    assert linf <= cfg.eps + 1e-4
    assert linf >= 2  # the bias did something


def test_self_recovery_with_the_key_removes_the_bias(model, protected, images):
    x_p, cfg = protected
    right = torch.from_numpy(ddpm.self_recover(x_p, key=KEY, ddpm=model, image_id="t",
                                               config=cfg)).float() / 255
    wrong = torch.from_numpy(ddpm.self_recover(x_p, key=OTHER, ddpm=model, image_id="t",
                                               config=cfg)).float() / 255
    assert _psnr(right, images) > _psnr(x_p, images) + 6
    assert _psnr(right, images) > _psnr(wrong, images) + 6


def test_self_recover_takes_a_uint8_image(model, protected, images):
    x_p, cfg = protected
    one = x_p[0, 0].mul(255).round().to(torch.uint8).numpy()  # HxW, batch of 1 -> id "t/0"
    rec = ddpm.self_recover(one, key=KEY, ddpm=model, image_id="t/0", config=cfg)
    assert rec.shape == one.shape and rec.dtype == np.uint8
    batch = ddpm.self_recover(x_p, key=KEY, ddpm=model, image_id="t", config=cfg)
    assert np.abs(rec.astype(int) - batch[0, 0].astype(int)).max() <= 1


def test_purify_is_seeded_and_denoises(model, images):
    noisy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
             ).clamp(0, 1)
    a = ddpm.purify(noisy, model, 50, steps=2, seed=3)
    assert torch.equal(a, ddpm.purify(noisy, model, 50, steps=2, seed=3))
    assert not torch.equal(a, ddpm.purify(noisy, model, 50, steps=2, seed=4))
    assert a.shape == images.shape and float(a.min()) >= 0 and float(a.max()) <= 1


def test_bad_inputs_are_refused(model, images, surrogate):
    cfg = ProtectConfig(method="ddpm", eps=8, steps=1)
    with pytest.raises(InputError, match="1-channel"):
        ddpm.perturb(images.expand(-1, 3, -1, -1), key=KEY, config=cfg, surrogates=[surrogate],
                     ddpm=model)
    with pytest.raises(ConfigError, match="pixel DDPM"):
        ddpm.perturb(images, key=KEY, config=cfg, surrogates=[surrogate])
    small = PixelDDPM(model.unet, model.alphas_cumprod, 50)
    with pytest.raises(ConfigError, match="trained range"):
        ddpm.perturb(images, key=KEY, config=cfg, surrogates=[surrogate], ddpm=small)
    with pytest.raises(InputError, match="uint8"):
        ddpm.self_recover(np.zeros((16, 16), np.float32), key=KEY, ddpm=model)


def test_through_the_api_with_a_saved_ddpm(tmp_path, model, images, surrogate):
    from diffusers import DDPMPipeline

    from trustgain.protection import api

    DDPMPipeline(unet=model.unet, scheduler=build_scheduler()).save_pretrained(tmp_path / "m")
    cfg = ProtectConfig(method="ddpm", eps=24, steps=4, extra={
        "ddpm": str(tmp_path / "m"), "t_star": 150, "ddim_steps": 3, "rank": 4, "lr": 0.5})
    image = images[1, 0].mul(255).round().to(torch.uint8).numpy()
    protected, sealed = api.protect(image, key=KEY, config=cfg, surrogates=[surrogate],
                                    image_id="")
    assert np.abs(protected.astype(int) - image.astype(int)).max() <= 24
    assert np.array_equal(api.recover(protected, sealed, key=KEY), image)
    rec = ddpm.self_recover(protected, key=KEY, config=cfg)
    as_t = lambda a: torch.from_numpy(a).float() / 255  # noqa: E731
    assert _psnr(as_t(rec), as_t(image)) > _psnr(as_t(protected), as_t(image)) + 6
