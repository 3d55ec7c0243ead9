"""Benchmark area ``models``: how good and how fast the embedded models are.

    python -m trustgain.bench models [--quick] [--json PATH] [--device cpu|cuda]

1. Fidelity: the judge names the prompted digit in >= 90% of trustgain-mini-sd samples
   (full: 50 per digit, 25 DDIM steps, guidance ``GUIDANCE``).
2. Judge accuracy on its held-out real digits (the fixed test split): >= 97%.
3. DDIM inversion round trip: generate from known z_T, VAE-encode the image, invert with
   ``DDIMInverseScheduler`` (same steps, same prompt and guidance), regenerate from the
   inverted latent; latent error and pixel error of the regenerated image.
4. Speed: images per second at batch 1 and 16 (25 steps, guidance on), torch on 1 and on 2
   threads.

``--quick`` uses 30 fidelity samples and 10 inversions at 10 steps, and times 5 steps on one
thread only.

No peer is run beside these figures: no other model of this kind is installable offline.
Needs scikit-learn (the digits) on top of the runtime dependencies.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..models import load_judge, load_mini_sd
from ..models.data import WORDS
from ..models.judge import classify
from . import Row

GUIDANCE = 4.0
STEPS = 25
TEMPLATES = ("a handwritten {w}", "the digit {n}", "a {n}", "the number {w}", "a small {w}")


def prompts_for(n_per_digit: int) -> tuple[list[str], list[int]]:
    """Prompts cycling through ``TEMPLATES`` for every digit, and their digits."""
    prompts, digits = [], []
    for d in range(10):
        for i in range(n_per_digit):
            prompts.append(TEMPLATES[i % len(TEMPLATES)].format(w=WORDS[d], n=d))
            digits.append(d)
    return prompts, digits


def latent_shape(pipe) -> tuple[int, int, int]:
    """The initial latents' shape per image (4x8x8 for trustgain-mini-sd)."""
    size = pipe.unet.config.sample_size
    return (pipe.unet.config.in_channels, size, size)


@torch.no_grad()
def generate(pipe, prompts: list[str], seed: int, steps: int = STEPS,
             guidance: float = GUIDANCE, batch: int = 50, latents: torch.Tensor | None = None,
             ) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [0, 1] for ``prompts``; seeded, optionally from ``latents``."""
    out = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(prompts), batch):
        lat = None if latents is None else latents[i:i + batch].to(pipe.device)
        if lat is None:
            lat = torch.randn((len(prompts[i:i + batch]), *latent_shape(pipe)),
                              generator=gen).to(pipe.device)
        res = pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance,
                   latents=lat, output_type="pt")
        out.append(res.images.float().cpu())
    return torch.cat(out)


def fidelity(pipe, judge, n_per_digit: int, steps: int = STEPS,
             guidance: float = GUIDANCE) -> tuple[float, np.ndarray]:
    """Share of samples the judge names as the prompted digit; also per-digit shares."""
    prompts, digits = prompts_for(n_per_digit)
    images = generate(pipe, prompts, seed=1234, steps=steps, guidance=guidance)
    pred, _ = classify(judge, images)
    hit = pred.numpy() == np.array(digits)
    return float(hit.mean()), hit.reshape(10, n_per_digit).mean(axis=1)


def judge_accuracy(judge) -> tuple[float, float]:
    """Accuracy on the 360 held-out scans: plain (centred, white) and augmented (seed 7)."""
    from ..models import data

    images, labels = data.load_split("test")
    plain, _ = classify(judge, data.upsample(images))
    x, y, _ = data.augmented_set(images, labels, 1, seed=7)
    aug, _ = classify(judge, (x + 1) / 2)
    return float((plain.numpy() == labels).mean()), float((aug == y).float().mean())


@torch.no_grad()
def invert(pipe, images: torch.Tensor, prompts: list[str], steps: int, guidance: float,
           ) -> torch.Tensor:
    """DDIM inversion of images in [0, 1]: VAE posterior mean, then the inverse scheduler."""
    from diffusers import DDIMInverseScheduler

    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(steps)
    dev = pipe.device
    vae = pipe.vae
    z = vae.encode(images.to(dev) * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    cond, uncond = pipe.encode_prompt(prompts, dev, 1, True, [""] * len(prompts))
    states = torch.cat([uncond, cond])
    for t in inverse.timesteps:
        eps_u, eps_c = pipe.unet(torch.cat([z, z]), t, states).sample.chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
        z = inverse.step(eps, t, z).prev_sample
    return z


def inversion(pipe, judge, n: int, steps: int, guidance: float) -> dict[str, float]:
    """Round trip of ``n`` generated images; errors in latent and pixel space."""
    prompts, digits = prompts_for(max(1, n // 10))
    prompts, digits = prompts[:n], digits[:n]
    z_t = torch.randn((len(prompts), *latent_shape(pipe)),
                      generator=torch.Generator().manual_seed(99))
    z_t = z_t * pipe.scheduler.init_noise_sigma
    images = generate(pipe, prompts, seed=0, steps=steps, guidance=guidance, latents=z_t)
    z_inv = torch.cat([invert(pipe, images[i:i + 50], prompts[i:i + 50], steps, guidance).cpu()
                       for i in range(0, len(prompts), 50)])
    again = generate(pipe, prompts, seed=0, steps=steps, guidance=guidance, latents=z_inv)
    diff = (z_inv - z_t).flatten(1)
    mse = ((again - images) ** 2).flatten(1).mean(1)
    pred, _ = classify(judge, again)
    return {
        "latent_mae": float(diff.abs().mean()),
        "latent_rel_l2": float((diff.norm(dim=1) / z_t.flatten(1).norm(dim=1)).mean()),
        "pixel_mae": float((again - images).abs().mean()),
        "pixel_psnr": float((10 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean()),
        "regen_fidelity": float((pred.numpy() == np.array(digits)).mean()),
    }


def speed(pipe, batch: int, steps: int, repeats: int, warm_up: bool = True) -> float:
    """Images per second at ``batch`` (one warm-up call, then the mean of ``repeats``)."""
    prompts = ["a handwritten seven"] * batch
    if warm_up:
        pipe(prompts, num_inference_steps=steps, guidance_scale=GUIDANCE, output_type="pt")
    t0 = time.perf_counter()
    for _ in range(repeats):
        pipe(prompts, num_inference_steps=steps, guidance_scale=GUIDANCE, output_type="pt")
    return batch * repeats / (time.perf_counter() - t0)


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    """All figures of the area; ``quick`` shrinks every sample count to fit in a minute.

    On the CPU the quality figures run on one torch thread (on a shared machine, two
    threads can be many times slower than one); speed is timed with 1 and with 2 threads.
    """
    threads = torch.get_num_threads()
    speeds: dict[tuple[int, int], float] = {}
    try:
        if device == "cpu":
            torch.set_num_threads(1)
        pipe, judge = load_mini_sd(device), load_judge(device)
        n_fid, n_inv, reps = (3, 10, 1) if quick else (50, 100, 3)
        steps = 10 if quick else STEPS
        speed_steps = 5 if quick else STEPS
        acc, per_digit = fidelity(pipe, judge, n_fid, steps)
        plain, aug = judge_accuracy(judge)
        inv = inversion(pipe, judge, n_inv, steps, GUIDANCE)
        inv1 = inversion(pipe, judge, n_inv, steps, 1.0)
        cpu_threads = (1,) if quick else (1, 2)
        for n_threads in (cpu_threads if device == "cpu" else (threads,)):
            torch.set_num_threads(n_threads)
            speeds[(n_threads, 1)] = speed(pipe, 1, speed_steps, reps + 1)
            speeds[(n_threads, 16)] = speed(pipe, 16, speed_steps, reps, warm_up=not quick)
    finally:
        torch.set_num_threads(threads)
    worst = int(per_digit.argmin())
    fid_note = f"{10 * n_fid} samples, {steps} steps, guidance {GUIDANCE}; worst digit " \
               f"{worst}: {per_digit[worst]:.0%}"
    rows = [
        Row("fidelity: judge names prompted digit", acc, "share", ">= 0.90", acc >= 0.90,
            fid_note),
        Row("judge accuracy, held-out real digits", plain, "share", ">= 0.97", plain >= 0.97,
            "360 test-split scans, centred"),
        Row("judge accuracy, held-out augmented", aug, "share", "", None,
            "test split, one augmentation each (seed 7)"),
    ]
    for g, res in ((GUIDANCE, inv), (1.0, inv1)):
        tag = f"inversion (guidance {g:g})"
        note = f"{n_inv} images, {steps} steps"
        rows += [
            Row(f"{tag}: mean |z_T inv - z_T|", res["latent_mae"], "", "", None, note),
            Row(f"{tag}: relative L2 of z_T", res["latent_rel_l2"], "", "", None, note),
            Row(f"{tag}: regenerated pixel MAE", res["pixel_mae"], "[0,1]", "", None, note),
            Row(f"{tag}: regenerated PSNR", res["pixel_psnr"], "dB", "", None, note),
            Row(f"{tag}: regenerated judged right", res["regen_fidelity"], "share", "", None,
                note),
        ]
    for (n_threads, batch), ips in speeds.items():
        where = f"{n_threads} torch thread{'s' if n_threads > 1 else ''}" \
            if device == "cpu" else device
        rows.append(Row(f"speed, batch {batch}, {where}", ips, "images/s", "", None,
                        f"{speed_steps} steps, guidance {GUIDANCE}"))
    return rows
