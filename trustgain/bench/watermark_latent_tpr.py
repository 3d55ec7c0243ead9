"""The latent mark's six TPR rows on a larger marked set (``--tpr N`` of the standalone bench).

A full run reads 100 marked samples per attack, where one miss moves a row by a whole point
and the Wilson interval around 0.98 spans 0.93-0.99: two candidate models cannot be told apart
there. This reads ``n`` fresh samples (the same prompt family, other seeds, so no image of the
full run recurs), in chunks of 100 with a progress bar, and reports per attack the record-mode
TPR at FPR 1e-6 with its interval, the per-image sign accuracy (mean, 5th percentile,
minimum) and the digits of the misses: detection fails in the tail, not at the mean. Each row
comes twice: read as the detector does by default (empty prompt), and with the generation
prompt known to the verifier (inverted under it at the sampler's guidance); with a ``guess``,
a third time, under a prompt guessed from each attacked image, and a fourth, the better of the
empty-prompt and the guessed read at twice its p-value (what ``detect-latent --guess-prompt``
does: ``detect_latent(also_unprompted=True)``; no further inversion).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from ..watermark.attacks import SUITE
from ..watermark.latent_invert import best_of
from . import Row
from .models import generate, prompts_for
from .watermark_latent_marks import ATTACKS, FPR, _marked_set, _tpr_rows, to_pil

#: Samples generated, attacked and read at once.
CHUNK = 100
#: The mode that reads each image both ways, empty and guessed prompt.
SEARCH = "record mode, empty or guessed prompt"


def tpr_rows(pipe, key, invert: Callable, read: Callable, shape: tuple[int, ...], *,
             steps: int, n: int, guess: Callable | None = None) -> list[Row]:
    """``invert(images, prompt="")`` gives the detector's candidates (``prompt``: one per
    image), ``read(candidates, nonces, payloads, prompted)`` its record-mode readings (with the
    weights for inversions under the prompt where ``prompted``); ``n`` is rounded up to whole
    digits (10 prompts); ``guess(images)``: a prompt per image, from the image alone."""
    prompts, digits = prompts_for(-(-n // 10))
    order = np.random.default_rng(21).permutation(len(prompts))  # chunks mix the digits
    prompts, digits = [prompts[i] for i in order], [digits[i] for i in order]
    latents, nonces, payloads = _marked_set(key, len(prompts), np.random.default_rng(22), shape)
    modes = ("record mode", "record mode + prompt") + (
        ("record mode + guessed prompt",) if guess is not None else ())
    readings = {(m, a): [] for m in modes for a in ATTACKS}
    accuracy = {(m, a): [] for m in modes for a in ATTACKS}
    rng = np.random.default_rng(23)
    for i in tqdm(range(0, len(prompts), CHUNK), desc="tpr chunks", unit="chunk"):
        s = slice(i, i + CHUNK)
        images = to_pil(generate(pipe, prompts[s], seed=60 + i, steps=steps,
                                 latents=latents[s]))
        for name in ATTACKS:
            attacked = [SUITE[name](im, rng) for im in images]
            told = ("", prompts[s], *([list(guess(attacked))] if guess is not None else []))
            for mode, prompt in zip(modes, told, strict=True):
                cands = invert(attacked, prompt)
                agree = (cands[0][1] > 0) == (latents[s] > 0)  # scale 1: the uncropped read
                accuracy[mode, name] += agree.flatten(1).float().mean(1).tolist()
                readings[mode, name] += read(cands, nonces[s], payloads[s], bool(prompt))
    if guess is not None:  # the better of the empty and the guessed read, per image
        for name in ATTACKS:
            empty, guessed = (readings[m, name] for m in (modes[0], modes[2]))
            guessed = [dataclasses.replace(r, prompted=True) for r in guessed]
            readings[SEARCH, name] = best_of([empty, guessed], FPR)
            accuracy[SEARCH, name] = [
                accuracy[modes[2 if r.prompted else 0], name][i]
                for i, r in enumerate(readings[SEARCH, name])]
    rows = []
    for mode, name in readings:
        acc = np.array(accuracy[mode, name])
        missed = Counter(d for d, r in zip(digits, readings[mode, name], strict=True)
                         if not r.detected)
        misses = ", ".join(f"{d}: {c}" for d, c in sorted(missed.items())) or "none"
        rows += _tpr_rows(
            f"TPR@1e-6 {mode}, {name}", readings[mode, name],
            f"sign acc per image (scale-1 read) mean {acc.mean():.3f}, "
            f"5th pct {np.percentile(acc, 5):.3f}, min {acc.min():.3f}; "
            f"misses by digit: {misses}", mode in (modes[0], SEARCH))
    return rows
