"""Held-out evaluation of a detector encoder: sign accuracy of the inverted latents per attack,
the share of images whose sign agreement is significant at :data:`EVAL_FPR`, and the encoder's
relative x0 error.

Part of :mod:`trustgain.watermark.detector_train`, which re-exports its public names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import binom

from trustgain.watermark.detector_train_data import to_pixels
from trustgain.watermark.detector_train_phases import Inverter, encode_mean
from trustgain.watermark.detector_train_setup import EVAL_CROP, EVAL_FPR


def sign_scores(z_hat: torch.Tensor, z: torch.Tensor, mask: np.ndarray, candidates: int = 1,
                ) -> dict[str, float]:
    """Sign accuracy over the masked elements, and the share of images whose sign agreement
    is significant at :data:`EVAL_FPR` (one-sided binomial, times ``candidates``)."""
    n = len(z)
    m = torch.from_numpy(mask)[:, None].expand(-1, z.shape[1], -1, -1).reshape(n, -1)
    agree = ((z_hat > 0) == (z > 0)).reshape(n, -1) & m
    k, total = agree.sum(1).numpy(), m.sum(1).numpy()
    p = binom.sf(k - 1, total, 0.5) * candidates
    return {"sign_accuracy": round(float(k.sum() / max(1, total.sum())), 4),
            "tpr_sign_at_1e-6": round(float((p <= EVAL_FPR).mean()), 4)}


def evaluate(vae: Any, inverter: Inverter, z: torch.Tensor,
             attacked: dict[str, tuple[np.ndarray, np.ndarray]], batch: int,
             ) -> dict[str, dict[str, float]]:
    """Per attack: sign accuracy of the inverted latents of images encoded with ``vae``.
    The crop counts two candidates (the detector also reads the image as given)."""
    out = {}
    for name, (u8, mask) in attacked.items():
        z_hat = inverter.images(vae, torch.from_numpy(u8), batch)
        out[name] = sign_scores(z_hat, z, mask, 2 if name == EVAL_CROP[0] else 1)
    return out


@torch.no_grad()
def relative_x0_error(vae: Any, u8: np.ndarray, x0: torch.Tensor, batch: int) -> float:
    """||E(image) - x0|| / ||x0|| on clean images (how far the encoder is from the sampler)."""
    dev = vae.device
    pred = torch.cat([encode_mean(vae, to_pixels(torch.from_numpy(u8[i : i + batch]).to(dev)))
                      .float().cpu() for i in range(0, len(u8), batch)])
    return round(float((pred - x0).norm() / x0.norm()), 4)
