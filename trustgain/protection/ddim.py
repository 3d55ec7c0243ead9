"""Deterministic DDIM decoding and fixed-point (near-exact) DDIM inversion for a pixel DDPM.

DDIM (Song et al., arXiv 2010.02502) with eta = 0 maps a latent at timestep ``t*`` to an image
deterministically. Its usual inversion replaces the noise prediction at the unknown point by
the one at the known point, which leaves a round-trip error. Here each inversion step instead
solves the implicit DDIM equation by fixed-point iteration (as in "ReNoise", Garibi et al.,
arXiv 2403.14602, and the fixed-point inversion of Pan et al., arXiv 2312.12540), so that
``decode(invert(x)) == x`` up to the iteration's convergence; with small ``t*`` the map is a
contraction and a few iterations suffice. Written here rather than taken from diffusers'
``DDIMInverseScheduler``: that scheduler has no fixed-point option, and the protection mode
needs gradients through the decoder and the same grid for both directions.

Images live on the [-1, 1] scale inside this module; timestep ``-1`` stands for the clean
image (alpha-bar = 1).
"""

from __future__ import annotations

import itertools

import torch

from trustgain.errors import ConfigError


def grid(t_star: int, steps: int) -> list[int]:
    """Timesteps ``[-1, ..., t_star]`` (clean image first), ``steps`` DDIM steps long."""
    if steps < 1 or t_star < 0:
        raise ConfigError(f"DDIM needs steps >= 1 and t* >= 0, got {steps}, {t_star}")
    pts = torch.linspace(-1, t_star, steps + 1).round().long().tolist()
    out = [pts[0]]
    for p in pts[1:]:
        if p > out[-1]:
            out.append(p)
    return out


def _abar(acp: torch.Tensor, t: int, like: torch.Tensor) -> torch.Tensor:
    value = 1.0 if t < 0 else float(acp[t])
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def eps_at(unet, z: torch.Tensor, t: int) -> torch.Tensor:
    """The UNet's noise prediction at integer timestep ``t`` (``-1`` is treated as 0)."""
    tt = torch.full((z.shape[0],), max(t, 0), dtype=torch.long, device=z.device)
    return unet(z, tt).sample


def decode_step(unet, acp: torch.Tensor, z: torch.Tensor, s: int, t: int) -> torch.Tensor:
    """One DDIM (eta = 0) step from timestep ``s`` down to ``t < s``."""
    a_s, a_t = _abar(acp, s, z), _abar(acp, t, z)
    eps = eps_at(unet, z, s)
    x0 = (z - (1 - a_s).sqrt() * eps) / a_s.sqrt()
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps


def decode(unet, acp: torch.Tensor, z: torch.Tensor, ts: list[int]) -> torch.Tensor:
    """Latent at ``ts[-1]`` -> image (timestep ``ts[0] == -1``); differentiable."""
    for s, t in zip(ts[:0:-1], ts[-2::-1], strict=True):
        z = decode_step(unet, acp, z, s, t)
    return z


@torch.no_grad()
def invert(unet, acp: torch.Tensor, x: torch.Tensor, ts: list[int], *,
           fixed_point: int = 8, tol: float = 1e-6) -> torch.Tensor:
    """Image -> latent at ``ts[-1]`` such that :func:`decode` maps it back to ``x``.

    Each step solves ``z_s = sqrt(a_s / a_t) z_t + (sqrt(1 - a_s) - sqrt(a_s / a_t)
    sqrt(1 - a_t)) eps(z_s, s)`` for ``z_s`` by up to ``fixed_point`` iterations, starting
    from the usual approximation ``eps(z_t, t)``; ``fixed_point=0`` is plain DDIM inversion.
    """
    z = x
    for t, s in itertools.pairwise(ts):
        a_s, a_t = _abar(acp, s, z), _abar(acp, t, z)
        ratio = (a_s / a_t).sqrt()
        coef = (1 - a_s).sqrt() - ratio * (1 - a_t).sqrt()
        base = ratio * z
        eps = eps_at(unet, z, t)
        z_s = base + coef * eps
        for _ in range(fixed_point):
            new = base + coef * eps_at(unet, z_s, s)
            done = (new - z_s).abs().max() < tol
            z_s = new
            if done:
                break
        z = z_s
    return z


def diffuse(x: torch.Tensor, acp: torch.Tensor, t: int, g: torch.Generator) -> torch.Tensor:
    """Forward process: ``x`` noised to timestep ``t`` with seeded Gaussian noise."""
    a = _abar(acp, t, x)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    return a.sqrt() * x + (1 - a).sqrt() * noise
