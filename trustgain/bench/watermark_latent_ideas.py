"""``python -m trustgain.bench.watermark_latent --ideas``: what each known remedy does to the
inverted latents' sign accuracy (:func:`ideas_rows`): exact decoder inversion
(:func:`decoder_invert`), fixed-point DDIM inversion, the generation prompt and guidance, more
steps, the ceilings without the VAE, calibrated position weights, a DCT basis, and generation at
64x64; :func:`exact_tpr` scores each.

Part of the ``watermark-latent`` bench area (:mod:`trustgain.bench.watermark_latent`), which
re-exports its public names.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from ..keys import KeyRing
from ..models import classify_digits
from ..watermark.attacks import SUITE
from ..watermark.latent import LEVELS, latent_key
from ..watermark.latent_invert import ddim_invert, encode, images_to_tensor, model_size
from ..watermark.latent_stats import matches_sf, rank_weights
from . import Row
from .models import GUIDANCE, STEPS, generate, latent_shape, prompts_for
from .watermark_latent_marks import ATTACKS, FPR, _marked_set, to_pil


def decoder_invert(pipe, pixels: torch.Tensor, start: torch.Tensor, *, iters: int = 100,
                   lr: float = 0.05) -> torch.Tensor:
    """Latents whose decoding matches ``pixels`` (Adam on the MSE, from ``start``): the exact
    decoder inversion of Hong et al. 2023, "On Exact Inversion of DPM-Solvers"."""
    vae, scale = pipe.vae, pipe.vae.config.scaling_factor
    for param in vae.parameters():
        param.requires_grad_(False)
    z = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(iters):
        opt.zero_grad()
        loss = ((vae.decode(z / scale).sample - pixels) ** 2).mean()
        loss.backward()
        opt.step()
    return z.detach()


def exact_tpr(matches: np.ndarray, weights: np.ndarray, fpr: float = FPR) -> tuple[float, float]:
    """(TPR at ``fpr``, mean z) of the weighted-matches test, exact null per image."""
    hits, zs = [], []
    for m, w in zip(matches, weights, strict=True):
        score = int((m * w).sum())
        sf = matches_sf(w)
        hits.append(sf[min(score, len(sf) - 1)] <= fpr)
        zs.append((score - w.sum() / 2) / np.sqrt((w.astype(float) ** 2).sum() / 4))
    return float(np.mean(hits)), float(np.mean(zs))


def ideas_rows(pipe, judge, per_digit: int = 4, steps: int = STEPS) -> list[Row]:
    """Sign accuracy of the inverted latents (and exact TPR@1e-6, record mode) per remedy."""
    from scipy.fft import dctn

    prompts, digits = prompts_for(per_digit)
    key = latent_key(KeyRing.generate())
    latents, _, _ = _marked_set(key, len(prompts), np.random.default_rng(31),
                                 latent_shape(pipe))
    with torch.no_grad():
        x0 = pipe(prompts, num_inference_steps=steps, guidance_scale=GUIDANCE, latents=latents,
                  output_type="latent").images.float()
        decoded = pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample
    images = to_pil((decoded.clamp(-1, 1) + 1) / 2)
    pixels = images_to_tensor(images, model_size(pipe))
    enc = encode(pipe, pixels)
    t0 = time.time()
    dec = decoder_invert(pipe, pixels, enc)
    t_dec = time.time() - t0
    with torch.no_grad():
        fit = float(((pipe.vae.decode(dec / pipe.vae.config.scaling_factor).sample - pixels)
                     ** 2).mean().sqrt() * 127.5)

    def rel(z: torch.Tensor) -> float:
        return float(((z - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)).mean())

    truth = latents.flatten(1).numpy() > 0
    n = truth.shape[1]
    rows = []

    def report(name: str, inverted: torch.Tensor, note: str) -> np.ndarray:
        z = inverted.flatten(1).numpy()
        m = (z > 0) == truth
        flat = np.ones_like(z, dtype=np.int64)
        ranked = np.stack([rank_weights(np.abs(v), np.ones(n, bool), LEVELS) for v in z])
        tpr_u, z_u = exact_tpr(m, flat)
        tpr_r, z_r = exact_tpr(m, ranked)
        rows.append(Row(f"idea: {name}: sign accuracy", float(m.mean()), "share", "", None,
                        f"{note}; TPR@1e-6 unweighted {tpr_u:.2f} (mean z {z_u:.2f}), "
                        f"|z|-rank {tpr_r:.2f} (mean z {z_r:.2f})"))
        return z

    empty = ""
    base = report("baseline (encoder mean, empty prompt, plain DDIM)",
                  ddim_invert(pipe, enc, num_inference_steps=steps),
                  f"{len(prompts)} images, {steps} steps; x0 relative error {rel(enc):.3f}")
    report("exact decoder inversion (100 Adam steps)",
           ddim_invert(pipe, dec, num_inference_steps=steps),
           f"x0 relative error {rel(dec):.3f} (encoder: {rel(enc):.3f}); decoded RMS error "
           f"{fit:.2f}/255; {t_dec:.0f} s")
    report("fixed-point DDIM inversion, 3 refinements",
           ddim_invert(pipe, enc, num_inference_steps=steps, refine=3), "empty prompt")
    report(f"{2 * steps} inversion steps", ddim_invert(pipe, enc, num_inference_steps=2 * steps),
           "empty prompt")
    report("generation prompt, guidance 1", ddim_invert(pipe, enc, num_inference_steps=steps,
                                                        prompt=prompts), "")
    report(f"generation prompt, guidance {GUIDANCE}, 3 refinements",
           ddim_invert(pipe, enc, num_inference_steps=steps, prompt=prompts,
                       guidance_scale=GUIDANCE, refine=3), "exact inverse of the sampler")
    report("ceiling: true x0 (no VAE), empty prompt",
           ddim_invert(pipe, x0, num_inference_steps=steps, prompt=empty), "")
    report(f"ceiling: true x0, generation prompt, guidance {GUIDANCE}, 3 refinements",
           ddim_invert(pipe, x0, num_inference_steps=steps, prompt=prompts,
                       guidance_scale=GUIDANCE, refine=3), "")
    # calibrated per-position weights: log-likelihood ratios from one half, tested on the other
    half = len(prompts) // 2
    for basis, a, b in (("latent elements", truth, base),
                        ("DCT basis (orthonormal, per channel)",
                         dctn(latents.numpy(), axes=(2, 3), norm="ortho").reshape(len(truth), -1)
                         > 0, dctn(base.reshape(latents.shape), axes=(2, 3), norm="ortho"
                                   ).reshape(len(truth), -1))):
        m = (b > 0) == a
        order = np.arange(len(m)) % 2 == 0  # calibration: even images; test: odd images
        acc = m[order].mean(0).clip(0.5, 0.99)
        llr = np.log(acc / (1 - acc))
        pos = np.where(llr > 0, 1 + np.floor(3 * llr / llr.max()).clip(0, 2), 0).astype(np.int64)
        ranked = np.stack([rank_weights(np.abs(v), np.ones(n, bool), LEVELS) for v in b])
        tpr_p, z_p = exact_tpr(m[~order], np.broadcast_to(pos, m[~order].shape))
        tpr_pr, z_pr = exact_tpr(m[~order], pos * ranked[~order])
        rows.append(Row(f"idea: calibrated position weights, {basis}", tpr_p, "TPR@1e-6", "",
                        None, f"mean z {z_p:.2f}; with |z|-rank too: TPR {tpr_pr:.2f} (mean z "
                        f"{z_pr:.2f}); weights from {order.sum()} images, tested on "
                        f"{(~order).sum()}; sign acc {m[~order].mean():.3f}, best 32 positions "
                        f"{np.sort(acc)[-32:].mean():.3f}"))
    del half
    # 64x64: four times the latent elements, if the model still draws one digit
    big = torch.randn((len(prompts), 4, 16, 16), generator=torch.Generator().manual_seed(32))
    images64 = to_pil(generate(pipe, prompts, seed=0, steps=steps, latents=big))
    inv64 = ddim_invert(pipe, encode(pipe, images_to_tensor(images64, (64, 64))),
                        num_inference_steps=steps)
    m = ((inv64 > 0) == (big > 0)).flatten(1).numpy()
    ranked = np.stack([rank_weights(np.abs(v), np.ones(m.shape[1], bool), LEVELS)
                       for v in inv64.flatten(1).numpy()])
    tpr_u, z_u = exact_tpr(m, np.ones_like(m, dtype=np.int64))
    tpr_r, z_r = exact_tpr(m, ranked)
    d = np.array(digits)
    small = [im.resize((32, 32), Image.Resampling.BICUBIC) for im in images64]
    acc64 = float((classify_digits(small, judge)[0].numpy() == d).mean())
    acc32 = float((classify_digits(images, judge)[0].numpy() == d).mean())
    rows.append(Row("idea: generate at 64x64 (1024 latent elements): sign accuracy",
                    float(m.mean()), "share", "", None,
                    f"TPR@1e-6 unweighted {tpr_u:.2f} (mean z {z_u:.2f}), |z|-rank {tpr_r:.2f} "
                    f"(mean z {z_r:.2f}); judge on 32x32 downscales {acc64:.3f} vs {acc32:.3f} at "
                    "32x32 (the model tiles several digits at 64x64)"))
    rng = np.random.default_rng(7)
    for name in ATTACKS[1:]:
        attacked = [SUITE[name](im, rng) for im in images64]
        inv = ddim_invert(pipe, encode(pipe, images_to_tensor(attacked, (64, 64))),
                          num_inference_steps=steps).flatten(1).numpy()
        m = (inv > 0) == (big.flatten(1).numpy() > 0)
        ranked = np.stack([rank_weights(np.abs(v), np.ones(m.shape[1], bool), LEVELS)
                           for v in inv])
        tpr_r, z_r = exact_tpr(m, ranked)
        rows.append(Row(f"idea: 64x64, {name}: TPR@1e-6 |z|-rank", tpr_r, "TPR", "", None,
                        f"sign accuracy {m.mean():.3f}, mean z {z_r:.2f}; {len(m)} images"))
    return rows
