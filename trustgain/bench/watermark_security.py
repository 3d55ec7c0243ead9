"""Benchmark area ``watermark-security``: attacks on the pixel mark's key and patterns.

- Wrong keys: ``n_keys`` random keys tried on every marked image (analysed once per image,
  the same statistic as ``detect``); the target is no detection at all.
- Averaging: an attacker averages the high-pass residuals of 20 marked images (same key,
  per-image nonces) to estimate the mark, then (a) subtracts it from a new marked image,
  scaled to the mark's strength, and (b) adds it to a clean image. Reported: detection rate
  after removal (the mark should survive) and forgery rate (should be 0).
- Nonces: correlation between the same key's patterns under different nonces.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from trustgain.bench import Row
from trustgain.bench.watermark import load_images, wilson
from trustgain.watermark import pixel

FPR = 1e-3


def _residual(image: Image.Image) -> np.ndarray:
    y = pixel.luminance(image)
    return y - ndimage.gaussian_filter(y, 4.0)


def _apply(image: Image.Image, delta: np.ndarray) -> Image.Image:
    array = np.asarray(image, dtype=np.float64) + delta[..., None]
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))


def run(quick: bool = False, device: str = "cpu", data=None) -> list[Row]:
    del device
    images = [im for _, im in load_images(data, 12 if quick else None)]
    key = bytes(range(32))
    rng = np.random.default_rng(2026)
    n_keys = 20 if quick else 100
    marked = [pixel.embed(im, key, rng.bytes(4))[0] for im in images]
    wrong = [rng.bytes(32) for _ in range(n_keys)]
    zs = np.array([pixel.max_z(m, wrong) for m in marked])
    rows = []
    for fpr in (1e-3, 1e-6):
        threshold = pixel.threshold(fpr)
        hits = int((zs >= threshold).sum())
        rows.append(Row(f"wrong key detections at FPR {fpr:g}", hits, f"of {zs.size} tests",
                        "0", hits == 0, f"max z {zs.max():.2f} vs threshold {threshold:.2f}"))

    group = 20
    pool = marked[:group] if len(marked) > group else marked[:-2]
    estimate = np.mean([_residual(m) for m in pool], axis=0)
    estimate *= pixel.STRENGTH / (estimate.std() + 1e-12)
    victims = [(o, m) for o, m in zip(images, marked, strict=True)][len(pool):]
    removed = [pixel.detect(_apply(m, -estimate), key, fpr=FPR).detected for _, m in victims]
    forged = [pixel.detect(_apply(o, estimate), key, fpr=FPR).detected for o, _ in victims]
    for name, results, target, good in (
        ("averaging: mark survives removal", removed, ">= 0.95", lambda r: r >= 0.95),
        ("averaging: forgery onto clean image", forged, "0", lambda r: r == 0),
    ):
        k, n = int(sum(results)), len(results)
        lo, hi = wilson(k, n)
        rate = k / n if n else float("nan")
        rows.append(Row(name, rate, f"of {n}", target, good(rate) if n else None,
                        f"{len(pool)} images averaged; 95% CI {lo:.3f}-{hi:.3f}"))

    patterns = [pixel.pattern(key, n, b"\0\0\0\0").ravel() for n in range(pixel.NONCES)]
    corr = np.corrcoef(np.stack(patterns))
    off = np.abs(corr[~np.eye(len(patterns), dtype=bool)])
    rows.append(Row("same key, other nonce: |correlation|", float(off.mean()), "mean",
                    "< 0.05", bool(off.mean() < 0.05), f"max {off.max():.3f} over "
                    f"{off.size} pairs; 1/sqrt(chips) = {1 / np.sqrt(32 * 32):.3f}"))
    return rows
