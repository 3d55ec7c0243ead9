"""Data for detector-encoder training: pipeline samples from seeded z_T (:func:`generate`),
the attacks applied to them in a process pool (random ones for training, the suite's for the
evaluation), and the clean + attacked training set (:class:`TrainSet`).

Part of :mod:`trustgain.watermark.detector_train`, which re-exports its public names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import Pool
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from trustgain.watermark import attacks
from trustgain.watermark.detector_train_setup import (
    EVAL_ATTACKS,
    EVAL_CROP,
    Settings,
    geometry,
)
from trustgain.watermark.latent_invert import aligned_mask, unzoom


@dataclasses.dataclass
class Samples:
    """Pipeline samples: initial latents, final latents, decoded images (N, H, W, 3 uint8)."""

    z: torch.Tensor
    x0: torch.Tensor
    images: np.ndarray


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW -> uint8 NHWC on the CPU, rounded as image files are."""
    u8 = ((images.float() / 2 + 0.5).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return u8.permute(0, 2, 3, 1).cpu()


def to_pixels(u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (any device) -> float [-1, 1] NCHW."""
    return u8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def generate(pipe: Any, prompts: Sequence[str], n: int, seed: int, settings: Settings,
             *, desc: str = "generate", progress: bool = True) -> Samples:
    """``n`` samples from seeded z_T ~ N(0, I) with prompts drawn (seeded) from ``prompts``."""
    shape, _, _ = geometry(pipe)
    z = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    picks = np.random.default_rng(seed).integers(0, len(prompts), n)
    vae, unet = pipe.vae, pipe.unet
    x0s, images = [], []
    for start in tqdm(range(0, n, settings.gen_batch), desc=desc, disable=not progress,
                      leave=False):
        batch = [prompts[i] for i in picks[start : start + settings.gen_batch]]
        latents = z[start : start + len(batch)].to(unet.device, unet.dtype)
        x0 = pipe(batch, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                  latents=latents, output_type="latent").images
        decoded = vae.decode(x0.to(vae.dtype) / vae.config.scaling_factor).sample
        x0s.append(x0.float().cpu())
        images.append(to_uint8(decoded))
    return Samples(z, torch.cat(x0s), torch.cat(images).numpy())


# ------------------------------------------------------------------------------------ attacks


def _full_mask(size: tuple[int, int], factor: int) -> np.ndarray:
    return np.ones((size[0] // factor, size[1] // factor), dtype=bool)


def _uncrop(image: Image.Image, area: float, size: tuple[int, int], factor: int,
            ) -> tuple[Image.Image, np.ndarray]:
    """A centre crop to ``area`` undone with :func:`unzoom`; the aligned latent cells' mask."""
    cropped = attacks.crop(area, random=False)(image, np.random.default_rng(0))
    canvas, box = unzoom(cropped, math.sqrt(area), size)
    h, w = size[0] // factor, size[1] // factor
    return canvas, aligned_mask(box, factor, (1, h, w)).reshape(h, w)


def random_attack(image: Image.Image, rng: np.random.Generator, size: tuple[int, int],
                  factor: int) -> tuple[Image.Image, np.ndarray]:
    """One of seven equally likely families at a random strength (the first: no attack); the
    image at ``size`` and the (h, w) mask of latent cells the loss may use."""
    kind = int(rng.integers(0, 7))
    if kind == 5:
        return _uncrop(image, float(rng.uniform(0.4, 0.9)), size, factor)
    attack: attacks.Attack | None = None
    if kind == 1:
        attack = attacks.jpeg(int(rng.integers(30, 95)))
    elif kind == 2:
        attack = attacks.resize(float(rng.uniform(0.4, 0.9)), restore=True)
    elif kind == 3:
        attack = attacks.blur(float(rng.uniform(0.3, 1.5)))
    elif kind == 4:
        attack = attacks.noise(float(rng.uniform(0.01, 0.08)))
    elif kind == 6:
        attack = attacks.cascade(attacks.blur(float(rng.uniform(0.3, 1.2))),
                                 attacks.jpeg(int(rng.integers(40, 90))))
    out = image if attack is None else attack(image, rng)
    return out.convert("RGB"), _full_mask(size, factor)


def named_attack(image: Image.Image, name: str, rng: np.random.Generator,
                 size: tuple[int, int], factor: int) -> tuple[Image.Image, np.ndarray]:
    """The suite's attack ``name``; the evaluation's crop is undone as the detector does."""
    if name == EVAL_CROP[0]:
        return _uncrop(image, EVAL_CROP[1], size, factor)
    return attacks.SUITE[name](image, rng).convert("RGB"), _full_mask(size, factor)


def _random_job(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    array, entropy, size, factor = job
    out, mask = random_attack(Image.fromarray(array), np.random.default_rng(entropy), size, factor)
    return np.asarray(out), mask


def _named_job(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    array, name, entropy, size, factor = job
    out, mask = named_attack(Image.fromarray(array), name, np.random.default_rng(entropy), size,
                             factor)
    return np.asarray(out), mask


def _ignore_interrupt() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops the pool: one message, not one
    traceback per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def map_attacks(fn: Callable[[tuple], tuple[np.ndarray, np.ndarray]], jobs: Sequence[tuple],
                workers: int, *, desc: str, progress: bool = True,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Run attack ``jobs`` in a process pool (``workers`` <= 1: here); stacked images, masks."""
    chunk = max(1, min(256, len(jobs) // max(1, 4 * workers)))
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(Pool(workers, initializer=_ignore_interrupt))
            results: Iterator = pool.imap(fn, jobs, chunk)
        else:
            results = map(fn, jobs)
        done = list(tqdm(results, total=len(jobs), desc=desc, disable=not progress,
                         leave=False))
    return np.stack([r[0] for r in done]), np.stack([r[1] for r in done])


@dataclasses.dataclass
class TrainSet:
    """Clean + attacked images (uint8 NHWC, on the training device), their cell masks, and the
    x0 / z_T of the sample each came from (row i of the images is sample i mod N)."""

    images: torch.Tensor
    masks: torch.Tensor
    x0: torch.Tensor
    z: torch.Tensor

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, len(self.images), (size,), generator=generator)
        src = idx % len(self.x0)
        dev = self.images.device
        idx, src = idx.to(dev), src.to(dev)
        return (to_pixels(self.images[idx]), self.masks[idx][:, None], self.x0[src],
                self.z[src])


def _workers(settings: Settings) -> int:
    return settings.workers or min(16, os.cpu_count() or 1)


def _eval_set(pipe: Any, prompts: Sequence[str], settings: Settings, progress: bool,
              ) -> tuple[Samples, dict[str, tuple[np.ndarray, np.ndarray]]]:
    _, size, factor = geometry(pipe)
    ev = generate(pipe, prompts, settings.eval_samples, settings.eval_seed, settings,
                  desc="generate (eval)", progress=progress)
    attacked = {
        name: map_attacks(_named_job, [(a, name, (settings.eval_seed, 2, i), size, factor)
                                       for i, a in enumerate(ev.images)],
                          _workers(settings), desc=f"attack {name}", progress=progress)
        for name in EVAL_ATTACKS
    }
    return ev, attacked


def _train_set(pipe: Any, prompts: Sequence[str], settings: Settings, progress: bool,
               ) -> TrainSet:
    _, size, factor = geometry(pipe)
    tr = generate(pipe, prompts, settings.samples, settings.seed, settings,
                  desc="generate (train)", progress=progress)
    att, masks = map_attacks(_random_job, [(a, (settings.seed, 1, i), size, factor)
                                           for i, a in enumerate(tr.images)],
                             _workers(settings), desc="attack (train)", progress=progress)
    dev = pipe.unet.device
    return TrainSet(
        images=torch.from_numpy(np.concatenate([tr.images, att])).to(dev),
        masks=torch.from_numpy(np.concatenate([_full_masks(len(tr.images), masks), masks]))
        .to(dev),
        x0=tr.x0.to(dev), z=tr.z.to(dev),
    )


def _full_masks(n: int, like: np.ndarray) -> np.ndarray:
    return np.ones((n, *like.shape[1:]), dtype=bool)
