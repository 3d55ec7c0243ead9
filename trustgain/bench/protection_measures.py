"""What the protection bench's rows measure with: batched attacks (ours, and torchattacks' PGD
on averaged logits), attack success rates, the exact L-inf ceiling of a linear model, the
purifiers (JPEG, blur, a patch DDPM), PSNR/SSIM, and the digits set.

Part of the ``protection`` bench area (:mod:`trustgain.bench.protection`), which re-exports
its public names.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from trustgain.bench.protection_setup import EPS
from trustgain.protection import ProtectConfig, pgd
from trustgain.protection import surrogates as S


class _Mean(torch.nn.Module):
    """Averaged logits of an ensemble, for attacks that take a single model (torchattacks)."""

    def __init__(self, models: list[torch.nn.Module]) -> None:
        super().__init__()
        self.models = torch.nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.models]).mean(0)


def _quantize_batch(x: np.ndarray, adv: torch.Tensor, eps: int = EPS) -> np.ndarray:
    """Round to uint8 within ``eps`` pixel units of ``x``, as ``protect`` does."""
    a = np.rint(adv.detach().numpy().transpose(0, 2, 3, 1) * 255)
    base = x.astype(np.int16)
    return np.clip(np.clip(a, base - eps, base + eps), 0, 255).astype(np.uint8)


def _attack_batches(x: np.ndarray, y: np.ndarray, models: list[torch.nn.Module],
                    cfg: ProtectConfig, batch: int = 50) -> tuple[np.ndarray, float]:
    out, t0 = [], time.perf_counter()
    for i in range(0, len(x), batch):
        xt = S.to_tensor(x[i:i + batch])
        adv = pgd.perturb(xt, key=b"", config=cfg, surrogates=models,
                          labels=y[i:i + batch].tolist(), image_id=f"batch-{i}")
        out.append(_quantize_batch(x[i:i + batch], adv, cfg.eps))
    return np.concatenate(out), (time.perf_counter() - t0) / len(x)


def _peer_batches(x: np.ndarray, y: np.ndarray, models: list[torch.nn.Module],
                  cfg: ProtectConfig, batch: int = 50) -> tuple[np.ndarray, float] | None:
    try:
        import torchattacks
    except ImportError:
        return None
    atk = torchattacks.PGD(_Mean(models).eval(), eps=cfg.eps / 255, alpha=cfg.alpha / 255,
                           steps=cfg.steps, random_start=True)
    torch.manual_seed(0)
    out, t0 = [], time.perf_counter()
    for i in range(0, len(x), batch):
        adv = atk(S.to_tensor(x[i:i + batch]), torch.as_tensor(y[i:i + batch]))
        out.append(_quantize_batch(x[i:i + batch], adv, cfg.eps))
    return np.concatenate(out), (time.perf_counter() - t0) / len(x)


def linear_ceiling(model: Any, x: np.ndarray, y: np.ndarray, eps: int) -> float | None:
    """Exact white-box ASR of a linear scikit-learn classifier (optionally after a
    ``StandardScaler``) under an integer L-inf budget of ``eps``: the image is misclassified
    by some perturbation iff, for some wrong class j, moving every pixel ``eps`` against
    ``sign(w_true - w_j)`` (clipped to 0..255) flips that pair. None for other models."""
    steps = getattr(model, "steps", [(None, model)])
    clf, scale = steps[-1][1], 1.0
    if not hasattr(clf, "coef_") or len(steps) > 2 or clf.coef_.shape[0] < 3:
        return None
    if len(steps) == 2:
        if not hasattr(steps[0][1], "scale_"):
            return None
        scale = steps[0][1].scale_
    w = clf.coef_ / scale
    flat = x.reshape(len(x), -1).astype(np.float32)
    right = S.predict(model, x) == y
    hit = np.zeros(int(right.sum()), dtype=bool)
    for j in range(len(w)):
        d = w[y[right]] - w[j]
        adv = np.clip(flat[right] - eps * np.sign(d), 0, 255)
        hit |= (y[right] != j) & (model.predict(adv / 255) != y[right])
    return float(hit.mean()) if right.any() else None


def asr(model: Any, x: np.ndarray, xp: np.ndarray, y: np.ndarray,
        purifier: Any = None) -> float:
    """Share of images the model gets right (clean, and clean-purified when a purifier is
    given) that it gets wrong once protected (and purified)."""
    right = S.predict(model, x) == y
    if purifier is not None:
        right &= S.predict(model, purifier(x)) == y
        xp = purifier(xp)
    if not right.any():
        return float("nan")
    return float((S.predict(model, xp)[right] != y[right]).mean())


def jpeg(images: np.ndarray, quality: int = 50) -> np.ndarray:
    import io

    from PIL import Image

    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.stack(out)


def blur(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    t = pgd.gaussian_blur(S.to_tensor(images), sigma)
    return np.clip(np.rint(t.numpy().transpose(0, 2, 3, 1) * 255), 0, 255).astype(np.uint8)


def _ddpm_purifier() -> Any:
    folder = os.environ.get("TRUSTGAIN_PATCH_DDPM")
    if not folder:
        return None
    try:
        from trustgain.protection.ddpm import purify
    except ImportError:
        return None

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = torch.cat([purify(S.to_tensor(images[i:i + 100]), folder, 100, seed=0)
                             for i in range(0, len(images), 100)])
        return np.clip(np.rint(out.numpy().transpose(0, 2, 3, 1) * 255), 0, 255).astype(
            np.uint8)

    return run


def psnr_ssim(x: np.ndarray, xp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ps = np.array([peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(x, xp,
                                                                                   strict=True)])
    ss = np.array([structural_similarity(a, b, channel_axis=-1, data_range=255)
                   for a, b in zip(x, xp, strict=True)])
    return ps, ss


def digits_images(n: int) -> np.ndarray:
    """``n`` 32x32 grey digits (uint8), the judge's input domain."""
    from trustgain.models.data import load_split, upsample

    imgs, _ = load_split("all")
    ink = upsample(imgs[:n])[:, 0].numpy()
    return np.clip(np.rint(ink * 255), 0, 255).astype(np.uint8)


def _ratio(after: list[float], before: dict[str, float]) -> float:
    """Mean ASR after a purifier over mean ASR before (NaN when nothing was fooled)."""
    base = np.nanmean(list(before.values()))
    return float(np.nanmean(after) / base) if base > 0 else float("nan")


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (several trainings of one family): one
    training's transfer ASR swings by up to 30 points with its seed, so a family's mean over
    a few trainings is read with its interval (BENCHMARKS.md, protection, 2026-12-08)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        raise ValueError("an interval needs at least two values")
    lo, hi = stats.t.interval(level, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    return float(lo), float(hi)
