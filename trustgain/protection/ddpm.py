"""Method ``"ddpm"``: a RAEDiff-style reversible adversarial example made through a pixel DDPM.

**This is our interpretation of RAEDiff** (Xing et al., arXiv 2311.12858), not the paper's
method: only its abstract is public ("diffuses datasets into a Biased Gaussian Distribution",
"utilizes the prior knowledge of the DDPM for generating and recovering RAEs", nothing
embedded). What we do, per image:

1. ``z = invert(x, t*)``: fixed-point DDIM inversion to a small timestep ``t*``
   (:mod:`trustgain.protection.ddim`), so that ``decode(z) == x`` almost exactly.
2. A keyed subspace ``U`` (``d x r``, orthonormal, ``d = C*H*W``) is derived from
   HMAC-SHA256(key, image id): nothing about it is stored.
3. The bias ``b = U c`` (the "biased Gaussian": a mean shift of the latent) has coefficients
   ``c`` optimised with Adam against the surrogates (CW margin, as in the PGD core) under an
   L-infinity fidelity constraint in pixel units (a penalty while optimising, then a
   per-image back-off so the rounded image meets ``eps`` exactly).
4. ``x_p = decode(z + b)``: the DDPM prior turns the bias into an image-like change.

Self-recovery (:func:`self_recover`) needs the key, the image id and the DDPM, nothing else:
invert ``x_p``; the part of the latent outside ``span(U)`` is exactly ``z``'s; the ``r``
coordinates inside it (``U^T z``, unknown because ``c`` is not stored) are re-estimated from the
rest by a smoothness prior in closed form (least squares on image gradients), which is where
the small recovery error comes from; then decode. Exact recovery is the sealed residual's job
(:mod:`trustgain.protection.api`).

Options ride in ``ProtectConfig.extra``: ``ddpm`` (folder from
:mod:`trustgain.protection.pixel_ddpm`), ``t_star`` (default 100 of 1000), ``ddim_steps`` (4),
``rank`` (16), ``fixed_point`` (8), ``lr`` (0.1). ``config.steps`` is the number of Adam steps.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trustgain.errors import ConfigError, InputError
from trustgain.protection import ddim
from trustgain.protection.pixel_ddpm import PixelDDPM, load_ddpm

if TYPE_CHECKING:
    from trustgain.protection.api import ProtectConfig

DEFAULTS: dict[str, Any] = {"t_star": 100, "ddim_steps": 4, "rank": 16, "fixed_point": 8,
                            "lr": 0.1}
PENALTY = 1e4


@lru_cache(maxsize=4)
def _load_cached(path: str) -> PixelDDPM:
    return load_ddpm(path)


def resolve_ddpm(ddpm: PixelDDPM | str | Path | None) -> PixelDDPM:
    """A loaded model from a :class:`PixelDDPM` or a folder path (loaded once per path)."""
    if isinstance(ddpm, PixelDDPM):
        return ddpm
    if ddpm is None:
        raise ConfigError("the ddpm method needs a pixel DDPM",
                          hint="set config.extra['ddpm'] to a folder trained with "
                               "`python -m trustgain.protection.pixel_ddpm`")
    return _load_cached(str(Path(ddpm).resolve()))


def options(config: ProtectConfig | None, **overrides: Any) -> dict[str, Any]:
    """The mode's settings: defaults, then ``config.extra``, then non-None ``overrides``."""
    opts: dict[str, Any] = {**DEFAULTS, "ddpm": None}
    if config is not None:
        opts.update({k: v for k, v in config.extra.items() if k in DEFAULTS or k == "ddpm"})
    opts.update({k: v for k, v in overrides.items() if v is not None})
    return opts


def _check(model: PixelDDPM, x: torch.Tensor, t_star: int) -> None:
    if x.shape[1] != model.channels:
        raise InputError(f"the DDPM models {model.channels}-channel images, got {x.shape[1]}",
                         hint="train a DDPM with matching --channels")
    if x.shape[-1] % 4 or x.shape[-2] % 4:
        raise InputError(f"ddpm mode needs sides divisible by 4, got {tuple(x.shape[-2:])}")
    if not 0 <= t_star <= model.max_timestep:
        raise ConfigError(f"t_star {t_star} is outside the DDPM's trained range "
                          f"0..{model.max_timestep}")


def keyed_basis(key: bytes, image_id: str, dim: int, rank: int) -> torch.Tensor:
    """Orthonormal ``(dim, rank)`` basis from HMAC-SHA256(key, image id); float64."""
    if not 1 <= rank <= min(dim, 256):
        raise ConfigError(f"rank must be in 1..{min(dim, 256)}, got {rank}")
    digest = hmac.new(bytes(key), b"trustgain/ddpm-bias/v1\0" + image_id.encode(),
                      hashlib.sha256).digest()
    rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
    q, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
    return torch.from_numpy(q)


def _ids(image_id: str, n: int) -> list[str]:
    return [image_id] if n == 1 else [f"{image_id}/{i}" for i in range(n)]


def _bases(key: bytes, image_id: str, x: torch.Tensor, rank: int) -> torch.Tensor:
    d = x[0].numel()
    return torch.stack([keyed_basis(key, i, d, rank) for i in _ids(image_id, len(x))]).float()


def _loss_terms(models: Sequence[torch.nn.Module], refs: Sequence[Any], xa: torch.Tensor,
                kappa: float) -> torch.Tensor:
    from trustgain.protection.pgd import margin_loss

    total = xa.new_zeros(())
    for m, ref in zip(models, refs, strict=True):
        total = total + (m.adv_loss(xa, ref) if hasattr(m, "adv_loss")
                         else margin_loss(m(xa), ref, kappa))
    return total


def perturb(x: torch.Tensor, *, key: bytes, config: ProtectConfig,
            surrogates: Sequence[torch.nn.Module], labels: int | Sequence[int] | None = None,
            image_id: str = "", ddpm: PixelDDPM | str | None = None) -> torch.Tensor:
    """``x`` [B, C, H, W] in [0, 1] -> protected images (float, same shape), within
    ``config.eps`` after rounding. Image ``i`` of a batch uses id ``f"{image_id}/{i}"``
    (``image_id`` itself when B == 1); :func:`self_recover` needs the same id."""
    from trustgain.protection.pgd import references

    opts = options(config, ddpm=ddpm)
    model = resolve_ddpm(opts["ddpm"])
    t_star, rank = int(opts["t_star"]), int(opts["rank"])
    _check(model, x, t_star)
    if not surrogates:
        raise ConfigError("the ddpm method needs at least one surrogate model")
    unet, acp = model.unet, model.alphas_cumprod
    ts = ddim.grid(t_star, int(opts["ddim_steps"]))
    refs = references(surrogates, x, labels)
    z = ddim.invert(unet, acp, x * 2 - 1, ts, fixed_point=int(opts["fixed_point"]))
    basis = _bases(key, image_id, x, rank)  # (B, d, r)
    d = x[0].numel()
    scale = 2 * config.eps / 255 * (d / rank) ** 0.5  # latent norm of an eps-sized change
    eps = config.eps / 255
    w = torch.zeros(len(x), rank, requires_grad=True)
    opt = torch.optim.Adam([w], lr=float(opts["lr"]))

    def image(coef: torch.Tensor) -> torch.Tensor:
        bias = torch.bmm(basis, coef[:, :, None]).view_as(z) * scale
        return (ddim.decode(unet, acp, z + bias, ts) + 1) / 2

    for _ in range(config.steps):
        xa = image(w)
        over = ((xa - x).abs() - eps).clamp_min(0).pow(2).sum()
        loss = -_loss_terms(surrogates, refs, xa.clamp(0, 1), config.kappa) + PENALTY * over
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        # largest shrink factor of c (1, 0.85, 0.85^2, ...) meeting the budget after rounding
        limit = (config.eps - 0.5) / 255
        out = image(torch.zeros_like(w)).clamp(0, 1)
        open_ = torch.ones(len(x), dtype=torch.bool)
        for k in range(25):
            cand = image(w * 0.85**k).clamp(0, 1)
            fits = (cand - x).flatten(1).abs().amax(1) <= limit
            take = fits & open_
            out[take] = cand[take]
            open_ &= ~fits
            if not open_.any():
                break
    return out.detach()


def _estimate_inside(rest: torch.Tensor, basis_imgs: torch.Tensor) -> torch.Tensor:
    """Coordinates ``u`` minimising the squared image gradients of ``rest + sum u_j B_j``
    (closed-form least squares); ``rest`` (C, H, W), ``basis_imgs`` (r, C, H, W)."""
    def grads(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([(t[..., 1:] - t[..., :-1]).flatten(-3),
                          (t[..., 1:, :] - t[..., :-1, :]).flatten(-3)], -1)

    a = grads(basis_imgs).T  # (m, r)
    b = grads(rest[None])[0]  # (m,)
    return torch.linalg.lstsq(a, -b[:, None]).solution[:, 0]


@torch.no_grad()
def self_recover(protected: np.ndarray | torch.Tensor, *, key: bytes,
                 ddpm: PixelDDPM | str | Path | None = None, image_id: str = "",
                 config: ProtectConfig | None = None, t_star: int | None = None,
                 ddim_steps: int | None = None, rank: int | None = None,
                 fixed_point: int | None = None) -> np.ndarray:
    """Approximate original from a ddpm-mode protected image, the key and the DDPM only.

    ``protected``: uint8 HxW / HxWxC, or a float tensor [B, C, H, W] in [0, 1] (a batch
    protected together, ids as in :func:`perturb`). Returns uint8 in the input's layout.
    Settings must match the ones used to protect (``config`` or the keywords).
    """
    from trustgain.protection.residual import check_key

    check_key(key)
    if not isinstance(image_id, str):
        raise TypeError(f"image_id must be a string, got {image_id!r}")
    as_array = isinstance(protected, np.ndarray)
    if as_array:
        if protected.dtype != np.uint8:
            raise InputError("protected image must be uint8")
        if protected.ndim not in (2, 3):
            raise InputError(f"protected image shape {protected.shape} is not HxW or HxWxC")
        arr = protected[:, :, None] if protected.ndim == 2 else protected
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()[None] / 255
    elif isinstance(protected, torch.Tensor):
        if not protected.is_floating_point() or protected.ndim != 4:
            raise InputError("a protected tensor must be float [B, C, H, W] in [0, 1], got "
                             f"{protected.dtype} of shape {tuple(protected.shape)}",
                             hint="pass a uint8 numpy array HxW[xC] for 8-bit pixels")
        x = protected.detach().float()
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise InputError("a protected tensor must hold finite values in [0, 1]")
    else:
        raise TypeError("protected must be a uint8 numpy array or a float tensor, not "
                        f"{type(protected).__name__}")
    opts = options(config, ddpm=ddpm, t_star=t_star, ddim_steps=ddim_steps, rank=rank,
                   fixed_point=fixed_point)
    model = resolve_ddpm(opts["ddpm"])
    t_star_, rank_ = int(opts["t_star"]), int(opts["rank"])
    _check(model, x, t_star_)
    ts = ddim.grid(t_star_, int(opts["ddim_steps"]))
    zp = ddim.invert(model.unet, model.alphas_cumprod, x * 2 - 1, ts,
                     fixed_point=int(opts["fixed_point"]))
    basis = _bases(key, image_id, x, rank_)
    flat = zp.flatten(1)
    rest = flat - torch.bmm(basis, torch.bmm(basis.transpose(1, 2), flat[:, :, None]))[:, :, 0]
    zhat = torch.empty_like(flat)
    for i in range(len(x)):
        imgs = basis[i].T.reshape(rank_, *x.shape[1:])
        u = _estimate_inside(rest[i].view(x.shape[1:]), imgs)
        zhat[i] = rest[i] + basis[i] @ u
    out = (ddim.decode(model.unet, model.alphas_cumprod, zhat.view_as(zp), ts) + 1) / 2
    u8 = out.clamp(0, 1).mul(255).round().to(torch.uint8)
    if not as_array:
        return u8.numpy()
    res = u8[0].numpy().transpose(1, 2, 0)
    return res.reshape(protected.shape)


@torch.no_grad()
def purify(x: torch.Tensor, ddpm: PixelDDPM | str | Path, t_star: int, *, steps: int = 4,
           seed: int = 0) -> torch.Tensor:
    """DiffPure-like purification (Nie et al., arXiv 2205.07460; own code, DiffPure's is
    non-commercial): diffuse ``x`` [B, C, H, W] in [0, 1] to ``t_star`` with seeded noise,
    then denoise with ``steps`` DDIM steps. Returns [0, 1] images."""
    model = resolve_ddpm(ddpm)
    _check(model, x, t_star)
    g = torch.Generator().manual_seed(seed)
    ts = ddim.grid(t_star, steps)
    zt = ddim.diffuse(x * 2 - 1, model.alphas_cumprod, ts[-1], g)
    return ((ddim.decode(model.unet, model.alphas_cumprod, zt, ts) + 1) / 2).clamp(0, 1)
