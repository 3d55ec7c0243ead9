"""Benchmark area ``watermark-security``: attacks on the pixel mark's key and patterns.

- Wrong keys: ``n_keys`` random keys tried on every marked image (analysed once per image,
  the same statistic as ``detect``); the target is no detection at all. Reported at FPR 1e-3
  and 1e-6, with the payload required (``detect(..., require_payload=True)``: the keyed tag
  must verify too), and as the fit of the empirical tail to the analytic bound (share of
  tests beyond the thresholds of 1e-2, 1e-3 and 1e-4 against those levels).
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
        # the full decision with the payload required, wherever the statistic alone passes
        gated = sum(
            pixel.detect(marked[i], wrong[j], fpr=fpr, require_payload=True).detected
            for i, j in zip(*np.nonzero(zs >= threshold), strict=True))
        rows.append(Row(f"wrong key detections at FPR {fpr:g}, payload required", gated,
                        f"of {zs.size} tests", "0", gated == 0,
                        f"{hits} passed the statistic alone; analytic rate at most "
                        f"{fpr * pixel.PAYLOAD_FALSE_ACCEPT:.1e}"))
    tail = []
    for level in (1e-2, 1e-3, 1e-4):
        share = float((zs >= pixel.threshold(level)).mean())
        tail.append(f"{share:.1e} beyond the {level:g} threshold")
    rows.append(Row("wrong keys: empirical tail vs analytic bound", float(
        (zs >= pixel.threshold(1e-2)).mean()), "share at 1e-2", "<= 0.01",
        bool((zs >= pixel.threshold(1e-2)).mean() <= 1e-2), "; ".join(tail) +
        " (the bound: at most the level)"))

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
