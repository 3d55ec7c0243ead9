"""Pixel averaging against the latent mark, replicated: ``python -m
trustgain.bench.watermark_latent --averaging [--encoder mark]``.

The full run's security rows apply one averaging estimate to 40 new images, beside one
control. A removal rate of 1 in 40 cannot tell an attack that works from a perturbation of
that size. Here each of several estimates (mean of 20 marked images minus mean of 20 clean
images of the same prompts) is subtracted from the same larger set of new marked images. Each
has a control beside it: mean of 20 clean images minus mean of 20 other clean images of the
same prompts, the same kind and size of change with no mark information. The averaging attack
works if, and only if, its removal exceeds its controls'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image
from scipy import stats

from . import Row
from .models import generate, prompts_for
from .watermark_latent_marks import _marked_set, to_pil, wilson


def mean_pixels(images: Sequence[Image.Image]) -> np.ndarray:
    """The pixel-wise mean of ``images`` (float32 HWC)."""
    return np.mean([np.asarray(im, dtype=np.float32) for im in images], axis=0)


def shifted(images: Sequence[Image.Image], delta: np.ndarray) -> list[Image.Image]:
    """``images`` plus ``delta``, clipped and rounded back to 8 bits."""
    return [Image.fromarray(np.clip(np.asarray(im, dtype=np.float32) + delta, 0, 255).round()
                            .astype(np.uint8)) for im in images]


def averaging_rows(pipe, key, read: Callable, shape: tuple[int, ...], *, steps: int,
                   estimates: int = 5, targets: int = 200, n_avg: int = 20) -> list[Row]:
    """Removal by ``estimates`` independent averaging estimates and as many controls, each
    applied to the same ``targets`` new marked images; ``read(images, nonces, payloads)``
    gives the detector's readings (record mode)."""
    n = estimates * n_avg + targets
    every = prompts_for(-(-n // 10))[0]  # grouped by digit: shuffled, so each set mixes digits
    prompts = [every[i] for i in np.random.default_rng(11).permutation(len(every))[:n]]
    latents, nonces, payloads = _marked_set(key, n, np.random.default_rng(12), shape)
    marked = to_pil(generate(pipe, prompts, seed=50, steps=steps, latents=latents))
    used = prompts[: estimates * n_avg]
    clean = to_pil(generate(pipe, used, seed=51, steps=steps))
    other = to_pil(generate(pipe, used, seed=52, steps=steps))
    t = slice(estimates * n_avg, n)
    new, t_nonces, t_payloads = marked[t], nonces[t], payloads[t]
    before = read(new, t_nonces, t_payloads)
    removed = {"attack": [], "control": []}
    for k in range(estimates):
        s = slice(k * n_avg, (k + 1) * n_avg)
        for label, estimate in (("attack", mean_pixels(marked[s]) - mean_pixels(clean[s])),
                                ("control", mean_pixels(clean[s]) - mean_pixels(other[s]))):
            after = read(shifted(new, -estimate), t_nonces, t_payloads)
            hit = [a.detected for b, a in zip(before, after, strict=True) if b.detected]
            removed[label].append(len(hit) - sum(hit))
    base = sum(r.detected for r in before)
    rows = []
    for label, what in (("attack", "new marked images minus (mean marked - mean clean)"),
                        ("control", "minus (mean clean - mean other clean): no mark information")):
        count, total = sum(removed[label]), base * estimates
        lo, hi = wilson(count, max(total, 1))
        rows.append(Row(
            f"averaging 20 (pixels), replicated: removal, {label}", count / max(total, 1),
            "share", "", None,
            f"{what}; {estimates} estimates x {base} of {len(new)} detected before; per "
            f"estimate {removed[label]}; Wilson 95% [{lo:.3f}, {hi:.3f}]"))
    # the unit is the estimate, not the image: one estimate's change hits all targets at once
    # (its removals swing from a few to dozens), so images are not independent trials
    p = stats.mannwhitneyu(removed["attack"], removed["control"], alternative="greater").pvalue
    excess = (sum(removed["attack"]) - sum(removed["control"])) / max(base * estimates, 1)
    rows.append(Row("averaging 20 (pixels), replicated: removal beyond the control", excess,
                    "share", "not above (p > 0.05)", bool(p > 0.05),
                    "what the mark information in the estimate adds to a change of that size; "
                    f"one-sided Mann-Whitney U over the {estimates} estimates, p = {p:.3g}"))
    return rows


__all__ = ["averaging_rows", "mean_pixels", "shifted"]
