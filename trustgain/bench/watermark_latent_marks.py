"""The latent-mark bench's marks and statistics that need no detector configuration: marked sets
(random record ids and nonces), reading inverted candidates at FPR 1e-6 in record or blind mode,
Wilson intervals, and the rows computed from given latents or inversions: the model-free
mechanics, the null (false positives over many keys), normality of marked latents and the judge
gap.

Part of the ``watermark-latent`` bench area (:mod:`trustgain.bench.watermark_latent`), which
re-exports its public names.
"""

from __future__ import annotations

import uuid

import numpy as np
import torch
from PIL import Image
from scipy import stats

from ..keys import KeyRing
from ..models import classify_digits
from ..watermark.latent import (
    LEVELS,
    LatentReading,
    counter_nonce,
    latent_key,
    marked_latents,
    payload_from_record_id,
)
from ..watermark.latent_invert import Candidate, average_candidates, best_of, read_candidates
from . import Row

FPR = 1e-6
NONCE_SPACE = 256
PAYLOAD_BITS = 64
ATTACKS = ("none", "jpeg50", "resize0.5_restored", "crop_centre_50", "blur1", "noise0.05")
#: The detector's per-element reliability weights (``Reliability``), or None for |z|-rank
#: levels; set by :func:`trustgain.bench.watermark_latent.run`.
RELIABILITY = None
#: The weights for reads inverted under the generation prompt (the model's
#: ``reliability_prompted.json`` where it ships one, else :data:`RELIABILITY`); set by ``run``.
PROMPTED_RELIABILITY = None


def wilson(k: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[0, 1] NCHW tensors as 8-bit RGB images (what a saved PNG holds)."""
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def _marked_set(key, n: int, rng: np.random.Generator, shape: tuple[int, int, int]):
    """Random record ids and nonce counters, and the latents they give."""
    record_ids = [uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63)),
                            version=4).hex for _ in range(n)]
    counters = [int(c) for c in rng.integers(0, NONCE_SPACE, n)]
    nonces = [counter_nonce(key, c) for c in counters]
    latents = torch.cat([
        marked_latents(key, [nc], payload_from_record_id(r, PAYLOAD_BITS), (1, *shape),
                       salt=r.encode())
        for nc, r in zip(nonces, record_ids, strict=True)])
    return latents, nonces, [r[: PAYLOAD_BITS // 4] for r in record_ids]


def _removal(before: list[LatentReading], after: list[LatentReading]) -> tuple[float, str]:
    """Share of the images detected before the attack that it made undetected."""
    hit = [a.detected for b, a in zip(before, after, strict=True) if b.detected]
    rate = 1 - float(np.mean(hit)) if hit else float("nan")
    return rate, f"{len(hit)} of {len(before)} detected before"


def _read(cands: list[Candidate], key, nonces=None, payloads=None, levels: int | None = None,
          prompted: bool = False) -> list[LatentReading]:
    """Record mode with ``nonces`` and ``payloads``, blind mode without. Weights: ``levels``
    |z|-rank levels where given, else the detector's: :data:`RELIABILITY` (for candidates
    inverted under the prompt, ``prompted``: :data:`PROMPTED_RELIABILITY`) where the run set
    one, else :data:`LEVELS` ranks."""
    chosen = PROMPTED_RELIABILITY if prompted else RELIABILITY
    reliability = chosen if levels is None else None
    return read_candidates(cands, key, payload_bits=PAYLOAD_BITS, nonces=nonces,
                           nonce_space=NONCE_SPACE, expected_payloads=payloads, fpr=FPR,
                           levels=LEVELS if levels is None else levels, reliability=reliability)


def _subset(cands: list[Candidate], index) -> list[Candidate]:
    return [(s, inv[index], m) for s, inv, m in cands]


def _tpr_rows(name: str, readings: list[LatentReading], note: str, target: bool) -> list[Row]:
    k, n = sum(r.detected for r in readings), len(readings)
    lo, hi = wilson(k, n)
    tpr = k / n
    ok = bool(tpr >= 0.99) if target else None
    return [Row(name, tpr, "TPR", ">= 0.99" if target else "", ok,
                f"Wilson 95% [{lo:.3f}, {hi:.3f}], n={n}; {note}")]


def mechanics_rows(key, n: int, shape: tuple[int, int, int]) -> list[Row]:
    """TPR at 1e-6 when each latent sign is flipped independently with rate ``1 - accuracy``:
    what inversion quality the detector needs, independent of any model."""
    rows = []
    rng = np.random.default_rng(5)
    latents, nonces, payloads = _marked_set(key, n, rng, shape)
    for acc in (0.65, 0.70, 0.75, 0.80, 0.85, 0.90):
        flips = torch.from_numpy(rng.random(latents.shape) < 1 - acc)
        noisy = torch.where(flips, -latents, latents)
        cands = [(1.0, noisy, None)]
        rec = np.mean([r.detected for r in _read(cands, key, nonces, payloads, levels=LEVELS)])
        blind = np.mean([r.detected for r in _read(cands, key, levels=LEVELS)])
        rows.append(Row(f"mechanics: TPR@1e-6 at sign accuracy {acc:.2f}", float(rec), "TPR",
                        "", None, f"record mode; blind mode {blind:.3f}; {n} latents, "
                        "independent sign flips, no model"))
    return rows


def null_rows(clean_inv, marked_inv, n_keys: int) -> list[Row]:
    """False positives on clean inversions x keys, and on marked inversions x wrong keys."""
    rng = np.random.default_rng(11)
    rows = []
    for label, inv in (("clean inversions", clean_inv), ("marked inversions, wrong key",
                                                         marked_inv)):
        p_rec, p_plain, p_blind = [], [], []
        for _ in range(n_keys):
            key = latent_key(KeyRing.generate())
            _, nonces, payloads = _marked_set(key, len(inv[0][1]), rng,
                                           tuple(inv[0][1].shape[1:]))
            p_rec += [r.p_value for r in _read(inv, key, nonces, payloads)]
            p_plain += [r.p_value for r in _read(inv, key, nonces, payloads, levels=1)]
            p_blind += [r.p_value for r in _read(inv, key)]
        for mode, p in (("record", np.array(p_rec)), ("record unweighted", np.array(p_plain)),
                        ("blind", np.array(p_blind))):
            fp = int((p <= FPR).sum())
            note = (f"{len(inv[0][1])} x {n_keys} keys; rate at p<=1e-3: {(p <= 1e-3).mean():.2e}, "
                    f"p<=1e-2: {(p <= 1e-2).mean():.2e} (analytic: at most 1e-3, 1e-2); "
                    f"min p {p.min():.1e}")
            rows.append(Row(f"false positives at 1e-6, {mode} mode, {label}", fp,
                            f"of {len(p)}", "0", fp == 0, note))
    return rows


def prompt_null_rows(clean_inv, n_keys: int, mode: str = "record mode + prompt",
                     unprompted_inv=None, average: bool = False) -> list[Row]:
    """Record-mode false positives on clean images inverted under their own prompts (or under
    prompts guessed from them: ``mode`` names the row); with ``unprompted_inv`` (the same
    images inverted under the empty prompt) each image is read both ways and the better read
    kept at twice its p-value, as ``detect_latent(also_unprompted=True)`` does, or with
    ``average`` the mean of the two inversions read once (``combine="average"``)."""
    if average:
        if unprompted_inv is None:
            raise ValueError("average needs the unprompted inversions")
        clean_inv, unprompted_inv = average_candidates(unprompted_inv, clean_inv), None
    rng = np.random.default_rng(12)
    p = []
    for _ in range(n_keys):
        key = latent_key(KeyRing.generate())
        _, nonces, payloads = _marked_set(key, len(clean_inv[0][1]), rng,
                                       tuple(clean_inv[0][1].shape[1:]))
        reads = _read(clean_inv, key, nonces, payloads, prompted=not average)
        if unprompted_inv is not None:
            reads = best_of([_read(unprompted_inv, key, nonces, payloads), reads], FPR)
        p += [r.p_value for r in reads]
    p = np.array(p)
    fp = int((p <= FPR).sum())
    return [Row(f"false positives at 1e-6, {mode}, clean inversions", fp,
                f"of {len(p)}", "0", fp == 0,
                f"{len(clean_inv[0][1])} x {n_keys} keys; rate at p<=1e-3: "
                f"{(p <= 1e-3).mean():.2e}, p<=1e-2: {(p <= 1e-2).mean():.2e}; "
                f"min p {p.min():.1e}")]


def normality_rows(latents: torch.Tensor) -> list[Row]:
    values = latents.flatten().double().numpy()
    sub = np.random.default_rng(3).choice(values, size=min(5000, values.size), replace=False)
    ks = stats.kstest(values, "norm").pvalue
    sw = stats.shapiro(sub).pvalue
    ref = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5)).double()
    ks_ref = stats.kstest(ref.flatten().numpy(), "norm").pvalue
    return [
        Row("normality of marked latents: KS p", float(ks), "p", "> 0.01", bool(ks > 0.01),
            f"{values.size} elements vs N(0,1); torch.randn of the same size: p={ks_ref:.3f}"),
        Row("normality of marked latents: Shapiro-Wilk p", float(sw), "p", "> 0.01",
            bool(sw > 0.01),
            f"{sub.size} random elements"),
        Row("marked latents: mean / std", float(values.mean()), "", "", None,
            f"std {values.std():.4f}"),
    ]


def judge_rows(judge, marked_images, clean_images, digits) -> list[Row]:
    """The judge on marked and unmarked samples of the same prompts (other latents)."""
    d = np.array(digits)
    acc_m = float((classify_digits(marked_images, judge)[0].numpy() == d).mean())
    acc_c = float((classify_digits(clean_images, judge)[0].numpy() == d).mean())
    gap = 100 * (acc_m - acc_c)
    note = f"{len(d)} prompts each, same prompts; unmarked {acc_c:.3f}"
    return [Row("judge accuracy, marked samples", acc_m, "share", "", None, note),
            Row("judge accuracy gap marked - unmarked", gap, "points", "|gap| <= 1",
                abs(gap) <= 1.0, "marked Wilson 95% [{:.3f}, {:.3f}]".format(
                    *wilson(round(acc_m * len(d)), len(d))))]


def decoder_rows(judge, mark_images, plain_images, digits) -> list[Row]:
    """The mark VAE's decoder against the pipeline's own on the same latents (unmarked): judge
    accuracy of each and the PSNR between their 8-bit images."""
    d = np.array(digits)
    acc_m = float((classify_digits(mark_images, judge)[0].numpy() == d).mean())
    acc_p = float((classify_digits(plain_images, judge)[0].numpy() == d).mean())
    a = (mark_images.clamp(0, 1) * 255 + 0.5).floor()
    b = (plain_images.clamp(0, 1) * 255 + 0.5).floor()
    psnr = 10 * np.log10(255**2 / max(float((a - b).pow(2).mean()), 1e-12))
    note = f"{len(d)} unmarked samples, same latents and prompts"
    return [Row("judge accuracy, mark decoder - pipeline decoder", 100 * (acc_m - acc_p),
                "points", "", None, f"{note}; {acc_m:.3f} vs {acc_p:.3f}"),
            Row("PSNR, mark decoder vs pipeline decoder", psnr, "dB", "", None, note)]
