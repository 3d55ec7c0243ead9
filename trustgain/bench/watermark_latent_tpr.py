"""The latent mark's six TPR rows on a larger marked set (``--tpr N`` of the standalone bench).

A full run reads 100 marked samples per attack, where one miss moves a row by a whole point and
the Wilson interval around 0.98 spans 0.93-0.99: two candidate models cannot be told apart
there. This reads ``n`` fresh samples (the same prompt family, other seeds, so no image of the
full run recurs), in chunks of 100 with a progress bar, and reports per attack the record-mode
TPR at FPR 1e-6 with its interval, the per-image sign accuracy (mean, 5th percentile, minimum)
and the digits of the misses: detection fails in the tail, not at the mean. Each row comes
twice: read under the empty prompt (``detect-latent --no-guess-prompt``), and with the
generation prompt known to the verifier (inverted under it at the sampler's guidance); with a
``guess``, a third time, under a prompt guessed from each attacked image, and a fourth, the
better of the empty-prompt and the guessed read at twice its p-value (what ``detect-latent
--guess-prompt`` does: ``detect_latent(also_unprompted=True)``, the default of ``detect-latent
--mark-vae`` on trustgain-mini-sd; no further inversion). The same both-ways read with the
given prompt comes always (:data:`BOTH_GIVEN`): what a verifier who knows the prompt gets by
reading the empty-prompt inversion as well, again with no further inversion. With a ``guess``,
also :data:`AVERAGED`: the element-wise mean of the empty-prompt and the guessed inversion,
read once with the empty-prompt weights and no correction (``detect_latent(also_unprompted=True,
combine="average")``; no further inversion either).

``seed`` draws another, disjoint sample set (other prompts order, latents, nonces, attack
randomness and generation seeds), so that runs can be pooled; 0 is the historical set.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from ..watermark.attacks import SUITE
from ..watermark.latent_invert import average_candidates, best_of
from . import Row
from .models import generate, prompts_for
from .watermark_latent_marks import ATTACKS, FPR, _marked_set, _tpr_rows, to_pil

#: Samples generated, attacked and read at once.
CHUNK = 100
#: The mode that reads each image both ways, empty and guessed prompt.
SEARCH = "record mode, empty or guessed prompt"
#: The mode that reads the mean of the empty-prompt and the guessed inversion, once.
AVERAGED = "record mode, empty and guessed averaged"
#: The mode that reads each image both ways, empty and given prompt.
BOTH_GIVEN = "record mode, empty or given prompt"
#: Generation seeds of one ``seed`` lie in their own block of this size.
SEED_BLOCK = 100_000


def tpr_rows(pipe, key, invert: Callable, read: Callable, shape: tuple[int, ...], *,
             steps: int, n: int, guess: Callable | None = None, seed: int = 0) -> list[Row]:
    """``invert(images, prompt="")`` gives the detector's candidates (``prompt``: one per
    image), ``read(candidates, nonces, payloads, prompted)`` its record-mode readings (with the
    weights for inversions under the prompt where ``prompted``); ``n`` is rounded up to whole
    digits (10 prompts); ``guess(images)``: a prompt per image, from the image alone;
    ``seed`` > 0: another sample set, disjoint from seed 0's."""
    if seed < 0:
        raise ValueError(f"seed must be 0 or more, got {seed}")

    def rng(base: int) -> np.random.Generator:
        return np.random.default_rng(base if seed == 0 else (seed, base))

    prompts, digits = prompts_for(-(-n // 10))
    order = rng(21).permutation(len(prompts))  # chunks mix the digits
    prompts, digits = [prompts[i] for i in order], [digits[i] for i in order]
    latents, nonces, payloads = _marked_set(key, len(prompts), rng(22), shape)
    modes = ("record mode", "record mode + prompt") + (
        ("record mode + guessed prompt",) if guess is not None else ())
    every = modes + ((AVERAGED,) if guess is not None else ())
    readings = {(m, a): [] for m in every for a in ATTACKS}
    accuracy = {(m, a): [] for m in every for a in ATTACKS}
    attack_rng = rng(23)
    for i in tqdm(range(0, len(prompts), CHUNK), desc="tpr chunks", unit="chunk"):
        s = slice(i, i + CHUNK)
        images = to_pil(generate(pipe, prompts[s], seed=60 + i + SEED_BLOCK * seed,
                                 steps=steps,
                                 latents=latents[s]))
        for name in ATTACKS:
            attacked = [SUITE[name](im, attack_rng) for im in images]
            told = ("", prompts[s], *([list(guess(attacked))] if guess is not None else []))
            kept = {}
            for mode, prompt in zip(modes, told, strict=True):
                kept[mode] = cands = invert(attacked, prompt)
                agree = (cands[0][1] > 0) == (latents[s] > 0)  # scale 1: the uncropped read
                accuracy[mode, name] += agree.flatten(1).float().mean(1).tolist()
                readings[mode, name] += read(cands, nonces[s], payloads[s], bool(prompt))
            if guess is not None:
                mean = average_candidates(kept[modes[0]], kept[modes[2]])
                agree = (mean[0][1] > 0) == (latents[s] > 0)
                accuracy[AVERAGED, name] += agree.flatten(1).float().mean(1).tolist()
                readings[AVERAGED, name] += read(mean, nonces[s], payloads[s], False)
    both = ((BOTH_GIVEN, 1),) + (((SEARCH, 2),) if guess is not None else ())
    for mode, j in both:  # the better of the empty and the prompted read, per image
        for name in ATTACKS:
            empty, other = readings[modes[0], name], readings[modes[j], name]
            other = [dataclasses.replace(r, prompted=True) for r in other]
            readings[mode, name] = best_of([empty, other], FPR)
            accuracy[mode, name] = [
                accuracy[modes[j if r.prompted else 0], name][i]
                for i, r in enumerate(readings[mode, name])]
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
            f"misses by digit: {misses}", mode in (modes[0], SEARCH, AVERAGED))
    return rows
