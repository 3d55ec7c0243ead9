"""Benchmark area ``watermark-latent``: the Gaussian-Shading latent mark on trustgain-mini-sd.

    python -m trustgain.bench watermark-latent [--quick] [--json PATH]
    python -m trustgain.bench.watermark_latent [--quick] [--json PATH]

1. Detection: marked samples (10 per digit, 25 DDIM steps, guidance 4) are attacked, resized to
   32x32, encoded with the detector-side encoder (``vae_detector``; ``--encoder pipeline``: the
   pipeline's own VAE) and DDIM-inverted with the empty prompt (25 steps, no guidance). TPR at
   FPR 1e-6 (exact threshold, no tuning) with Wilson 95% intervals, in two modes: ``record``
   (nonce and payload from the provenance record: |z|-rank-weighted matches over all 256 latent
   elements, and the plain binomial beside it) and ``blind`` (metadata stripped: 256 counter
   nonces tried, payload unknown: weighted fold statistic, Sidak-corrected). Also sign accuracy
   of the inverted latents, payload bit accuracy and exact payload recovery (blind mode), and
   the model-free mechanics: TPR against an imposed sign accuracy.
2. Null: clean (unmarked) samples, inverted, times independent keys (and their random
   nonce/payload in record mode): at least 10,000 clean-inversion x key reads, count at 1e-6 and
   observed rates at 1e-3 / 1e-2 against the analytic ones; wrong keys on marked samples.
3. Normality of marked initial latents (KS on all elements, Shapiro-Wilk on 5,000); the judge's
   accuracy on marked and unmarked samples of the same prompts (1,000 each in a full run); sign
   accuracy on prompts in the style of the model's training captions, outside the prompt
   family above (which the detector encoder was tuned on), with either encoder.
4. Security: averaging 20 marked images (pixels, and inverted latents for an attacker who holds
   the model) to estimate the mark, then subtracting it from new marked images (removal) or
   imprinting it on clean ones (forgery), each removal beside a control that applies the same
   kind of change without any mark information; a single-image imprint; sign correlation
   between two nonces of one key.

5. ``--ideas`` (standalone entry point only): what each known remedy does to the inverted
   latents' sign accuracy on a small set (``ideas_rows``): exact decoder inversion, fixed-point
   DDIM inversion, the generation prompt and guidance, more steps, the ceilings without the
   VAE, calibrated position weights and a DCT basis, and generation at 64x64.

No peer runs beside these figures: no other in-generation watermark installs offline on CPU
(MarkDiffusion's Gaussian Shading needs CUDA); the pixel-mark area runs invisible-watermark.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import stats

from ..keys import KeyRing
from ..models import classify_digits, detector_vae_for, load_judge, load_mini_sd
from ..watermark.attacks import SUITE
from ..watermark.latent import (
    LEVELS,
    LatentReading,
    counter_nonce,
    latent_key,
    marked_latents,
    payload_from_record_id,
)
from ..watermark.latent_invert import (
    Candidate,
    ddim_invert,
    encode,
    images_to_tensor,
    invert_candidates,
    invert_images,
    model_size,
    read_candidates,
)
from ..watermark.latent_stats import matches_sf, rank_weights
from . import Row, format_table
from .models import GUIDANCE, STEPS, generate, latent_shape, prompts_for

FPR = 1e-6
NONCE_SPACE = 256
PAYLOAD_BITS = 64
ATTACKS = ("none", "jpeg50", "resize0.5_restored", "crop_centre_50", "blur1", "noise0.05")
#: The one detector configuration used for every condition, the null included: fixed-point
#: refinements per inversion step, and the centre-crop side ratios tried besides 1.
REFINE = 0
SCALES = (1.0, 0.7071)  # 0.7071: a centre crop to 50% area, undone by unzoom
#: The VAE the detector encodes with: the detector-side encoder shipped with trustgain-mini-sd
#: (``vae_detector``, :func:`trustgain.models.load_detector_vae`), or None for the pipeline's
#: own VAE (``--encoder pipeline``). Set by :func:`run`.
ENCODER = None
#: Samples per digit for the judge rows of a full run (marked and unmarked each).
JUDGE_PER_DIGIT = 100


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


def _invert(pipe, images, steps: int, prompt="") -> list[Candidate]:
    return invert_candidates(pipe, images, num_inference_steps=steps, scales=SCALES,
                             refine=REFINE, encoder=ENCODER, prompt=prompt)


def _read(cands: list[Candidate], key, nonces=None, payloads=None, levels: int = LEVELS,
          ) -> list[LatentReading]:
    """Record mode with ``nonces`` and ``payloads``, blind mode without."""
    return read_candidates(cands, key, payload_bits=PAYLOAD_BITS, nonces=nonces,
                           nonce_space=NONCE_SPACE, expected_payloads=payloads, fpr=FPR,
                           levels=levels)


def _subset(cands: list[Candidate], index) -> list[Candidate]:
    return [(s, inv[index], m) for s, inv, m in cands]


def _tpr_rows(name: str, readings: list[LatentReading], note: str, target: bool) -> list[Row]:
    k, n = sum(r.detected for r in readings), len(readings)
    lo, hi = wilson(k, n)
    tpr = k / n
    ok = bool(tpr >= 0.99) if target else None
    return [Row(name, tpr, "TPR", ">= 0.99" if target else "", ok,
                f"Wilson 95% [{lo:.3f}, {hi:.3f}], n={n}; {note}")]


def detection(pipe, key, images, latents, nonces, payloads, steps, prompts,
              ) -> tuple[list[Row], dict]:
    """TPR per attack in both modes, with sign, bit and payload accuracy; and record mode
    with the generation prompt known to the verifier (inversion conditioned on it)."""
    rows, inverted_by_attack = [], {}
    rng = np.random.default_rng(7)
    for name in ATTACKS:
        attacked = [SUITE[name](im, rng) for im in images]
        inv = _invert(pipe, attacked, steps)
        inverted_by_attack[name] = inv
        sign_acc = float(((inv[0][1] > 0) == (latents > 0)).float().mean())
        rec = _read(inv, key, nonces, payloads)
        plain = _read(inv, key, nonces, payloads, levels=1)
        blind = _read(inv, key)
        bit_acc = float(np.mean([r.bit_accuracy for r in rec]))
        exact = float(np.mean([r.payload == p for r, p in zip(blind, payloads, strict=True)]))
        rows += _tpr_rows(f"TPR@1e-6 record mode, {name}", rec,
                          f"|z|-rank weighted; sign acc {sign_acc:.3f}", True)
        rows += _tpr_rows(f"TPR@1e-6 record mode unweighted, {name}", plain,
                          "plain binom.sf on matched signs", False)
        rows += _tpr_rows(f"TPR@1e-6 blind mode, {name}", blind,
                          f"payload bit acc {bit_acc:.3f}, exact payload {exact:.3f}", False)
        inv_p = _invert(pipe, attacked, steps, prompt=list(prompts))
        sign_p = float(((inv_p[0][1] > 0) == (latents > 0)).float().mean())
        rows += _tpr_rows(f"TPR@1e-6 record mode + prompt, {name}",
                          _read(inv_p, key, nonces, payloads),
                          f"inverted under the generation prompt; sign acc {sign_p:.3f}", False)
    return rows, inverted_by_attack


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
        rec = np.mean([r.detected for r in _read(cands, key, nonces, payloads)])
        blind = np.mean([r.detected for r in _read(cands, key)])
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


def prompt_null_rows(clean_inv, n_keys: int) -> list[Row]:
    """Record-mode false positives on clean images inverted under their own prompts."""
    rng = np.random.default_rng(12)
    p = []
    for _ in range(n_keys):
        key = latent_key(KeyRing.generate())
        _, nonces, payloads = _marked_set(key, len(clean_inv[0][1]), rng,
                                       tuple(clean_inv[0][1].shape[1:]))
        p += [r.p_value for r in _read(clean_inv, key, nonces, payloads)]
    p = np.array(p)
    fp = int((p <= FPR).sum())
    return [Row("false positives at 1e-6, record mode + prompt, clean inversions", fp,
                f"of {len(p)}", "0", fp == 0,
                f"{len(clean_inv[0][1])} x {n_keys} keys; rate at p<=1e-3: "
                f"{(p <= 1e-3).mean():.2e}, p<=1e-2: {(p <= 1e-2).mean():.2e}; "
                f"min p {p.min():.1e}")]


def inversion_rows(pipe, prompts, latents, steps) -> list[Row]:
    """Where the sign errors come from: the sampler's own latents inverted without the VAE,
    and the VAE's round trip (decode, 8-bit image, encode) in latent space."""
    out = []
    for i in range(0, len(prompts), 50):
        res = pipe(prompts[i:i + 50], num_inference_steps=steps, guidance_scale=GUIDANCE,
                   latents=latents[i:i + 50], output_type="latent").images
        out.append(res.float().cpu())
    clean = torch.cat(out)
    direct = ddim_invert(pipe, clean, num_inference_steps=steps)
    acc = float(((direct > 0) == (latents > 0)).float().mean())
    images = to_pil(generate(pipe, prompts, seed=0, steps=steps, latents=latents))
    pixels = images_to_tensor(images, model_size(pipe))
    rows = [Row("inversion sign accuracy without the VAE", acc, "share", "", None,
                f"{len(prompts)} marked samples' final latents, empty-prompt DDIM inversion")]
    encoders = [("pipeline VAE", None)]
    if ENCODER is not None:
        encoders.append(("detector encoder", ENCODER))
    for label, encoder in encoders:
        encoded = encode(pipe, pixels, encoder)
        err = (encoded - clean).flatten(1).norm(dim=1) / clean.flatten(1).norm(dim=1)
        inv = ddim_invert(pipe, encoded, num_inference_steps=steps)
        sign = float(((inv > 0) == (latents > 0)).float().mean())
        rows.append(Row(f"VAE round trip ({label}): relative latent error", float(err.mean()),
                        "", "", None, f"|E(D(x0)) - x0| / |x0| through an 8-bit image; "
                        f"sign accuracy after inversion, no attack: {sign:.3f}"))
    return rows


def caption_rows(pipe, n: int, steps: int) -> list[Row]:
    """Sign accuracy on prompts in the style of the model's training captions (colours, sizes,
    positions), outside the benchmark's prompt family that the detector encoder was tuned on:
    pipeline encoder vs detector encoder, unmarked z_T ~ N(0, I), guidance 4."""
    from ..models import data

    rng = np.random.default_rng(31)
    looks = data.draw_looks(n, rng)
    captions = [data.caption(int(d), lk, rng) for d, lk in
                zip(rng.integers(0, 10, n), looks, strict=True)]
    z = torch.randn((n, *latent_shape(pipe)), generator=torch.Generator().manual_seed(32))
    images = to_pil(generate(pipe, captions, seed=0, steps=steps, latents=z))
    rows = []
    encoders = [("pipeline VAE", None)]
    if ENCODER is not None:
        encoders.append(("detector encoder", ENCODER))
    for label, encoder in encoders:
        inv = invert_images(pipe, images, num_inference_steps=steps, encoder=encoder)
        acc = float(((inv > 0) == (z > 0)).float().mean())
        rows.append(Row(f"sign accuracy, training-caption prompts ({label})", acc, "share", "",
                        None, f"{n} captions such as {captions[0]!r}; no attack, scale 1"))
    return rows


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


def security_rows(pipe, key, images, latents, inverted, nonces, payloads, clean_images,
                  prompts, steps) -> list[Row]:
    """Averaging (pixels and latents), imprint, and nonce-to-nonce correlation."""
    n_avg = 20
    def mean_px(ims) -> np.ndarray:
        return np.mean([np.asarray(im, dtype=np.float32) for im in ims], axis=0)

    est_px = mean_px(images[:n_avg]) - mean_px(clean_images[:n_avg])
    targets = slice(n_avg, min(len(images), n_avg + 40))
    rows = []

    def px(ims, sign):
        return [Image.fromarray(np.clip(np.asarray(im, dtype=np.float32) + sign * est_px, 0,
                                        255).round().astype(np.uint8)) for im in ims]

    removed = _read(_invert(pipe, px(images[targets], -1), steps), key, nonces[targets],
                    payloads[targets])
    forged = _read(_invert(pipe, px(clean_images[targets], 1), steps), key)
    n_t = len(removed)
    before = _read(_subset(inverted, targets), key, nonces[targets], payloads[targets])
    inverted = inverted[0][1]  # scale 1: what an attacker with the model gets
    rate, note = _removal(before, removed)
    rows.append(Row("averaging 20 (pixels): removal rate", rate, "share", "0", rate == 0,
                    f"new marked images minus (mean marked - mean clean); record mode; {note}"))
    # control: the same kind of difference of means, between two unmarked sets of the same
    # prompts, so it carries no mark: what the pixel perturbation alone removes
    other = to_pil(generate(pipe, prompts[:n_avg], seed=25, steps=steps))
    est_px = mean_px(clean_images[:n_avg]) - mean_px(other)
    rate, note = _removal(before, _read(_invert(pipe, px(images[targets], -1), steps), key,
                                        nonces[targets], payloads[targets]))
    rows.append(Row("control: subtract (mean clean - mean other clean): removal", rate, "share",
                    "", None, f"the same perturbation without mark information; {note}"))
    rows.append(Row("averaging 20 (pixels): forgery rate", np.mean([r.detected for r in forged]),
                    "share", "0", not any(r.detected for r in forged),
                    f"{n_t} clean images plus the estimate; blind mode"))
    # an attacker who holds the model: the mean inverted latent of 20 marked images
    est_z = inverted[:n_avg].mean(0, keepdim=True)
    regen = generate(pipe, prompts[targets], seed=21, steps=steps,
                     latents=inverted[targets] - est_z)
    removed_z = _read(_invert(pipe, to_pil(regen), steps), key, nonces[targets],
                      payloads[targets])
    mags = torch.randn((n_t, *latent_shape(pipe)),
                       generator=torch.Generator().manual_seed(22)).abs()
    forged_z = _read(_invert(pipe, to_pil(generate(
        pipe, prompts[targets], seed=23, steps=steps, latents=mags * est_z.sign())), steps), key)
    rate, note = _removal(before, removed_z)
    rows.append(Row("averaging 20 (latents): removal rate", rate, "share", "0", rate == 0,
                    f"invert, subtract the mean inverted latent, regenerate; record mode; {note}"))
    control = generate(pipe, prompts[targets], seed=21, steps=steps, latents=inverted[targets])
    rate, note = _removal(before, _read(_invert(pipe, to_pil(control), steps), key,
                                        nonces[targets], payloads[targets]))
    rows.append(Row("control: invert and regenerate, nothing subtracted: removal", rate, "share",
                    "", None, f"what regeneration alone removes; {note}"))
    rows.append(Row("averaging 20 (latents): forgery rate", np.mean([r.detected for r in
                    forged_z]), "share", "0", not any(r.detected for r in forged_z),
                    f"{n_t}: generate from |N(0,1)| x sign(mean); blind mode"))
    imprint = generate(pipe, prompts[targets][::-1], seed=24, steps=steps,
                       latents=mags * inverted[:1].sign())
    copied = _read(_invert(pipe, to_pil(imprint), steps), key)
    rows.append(Row("single-image imprint: detected (as image 0's record)", np.mean(
        [r.detected and r.payload == payloads[0] for r in copied]), "share", "", None,
        "needs the model; forges an existing record, not a new one (documented limit)"))
    a = marked_latents(key, [counter_nonce(key, c) for c in range(200)],
                       payload_from_record_id(payloads[0], PAYLOAD_BITS),
                       (200, *latent_shape(pipe)), salt=b"bench")
    s = a.flatten(1).sign().numpy()
    corr = np.corrcoef(s)[np.triu_indices(200, 1)]
    rows.append(Row("same key, other nonce: sign correlation, mean |r|", float(np.abs(
        corr).mean()), "", "", None, f"{len(corr):,} pairs of {s.shape[1]} signs (same payload); "
        f"max |r| {np.abs(corr).max():.3f}; chance level mean |r| = "
        f"{np.sqrt(2 / np.pi / s.shape[1]):.3f}"))
    return rows


def decoder_invert(pipe, pixels: torch.Tensor, start: torch.Tensor, *, iters: int = 100,
                   lr: float = 0.05) -> torch.Tensor:
    """Latents whose decoding matches ``pixels`` (Adam on the MSE, from ``start``): the exact
    decoder inversion of Hong et al. 2023, "On Exact Inversion of DPM-Solvers"."""
    vae, scale = pipe.vae, pipe.vae.config.scaling_factor
    for param in vae.parameters():
        param.requires_grad_(False)
    z = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(iters):
        opt.zero_grad()
        loss = ((vae.decode(z / scale).sample - pixels) ** 2).mean()
        loss.backward()
        opt.step()
    return z.detach()


def exact_tpr(matches: np.ndarray, weights: np.ndarray, fpr: float = FPR) -> tuple[float, float]:
    """(TPR at ``fpr``, mean z) of the weighted-matches test, exact null per image."""
    hits, zs = [], []
    for m, w in zip(matches, weights, strict=True):
        score = int((m * w).sum())
        sf = matches_sf(w)
        hits.append(sf[min(score, len(sf) - 1)] <= fpr)
        zs.append((score - w.sum() / 2) / np.sqrt((w.astype(float) ** 2).sum() / 4))
    return float(np.mean(hits)), float(np.mean(zs))


def ideas_rows(pipe, judge, per_digit: int = 4, steps: int = STEPS) -> list[Row]:
    """Sign accuracy of the inverted latents (and exact TPR@1e-6, record mode) per remedy."""
    from scipy.fft import dctn

    prompts, digits = prompts_for(per_digit)
    key = latent_key(KeyRing.generate())
    latents, _, _ = _marked_set(key, len(prompts), np.random.default_rng(31),
                                 latent_shape(pipe))
    with torch.no_grad():
        x0 = pipe(prompts, num_inference_steps=steps, guidance_scale=GUIDANCE, latents=latents,
                  output_type="latent").images.float()
        decoded = pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample
    images = to_pil((decoded.clamp(-1, 1) + 1) / 2)
    pixels = images_to_tensor(images, model_size(pipe))
    enc = encode(pipe, pixels)
    t0 = time.time()
    dec = decoder_invert(pipe, pixels, enc)
    t_dec = time.time() - t0
    with torch.no_grad():
        fit = float(((pipe.vae.decode(dec / pipe.vae.config.scaling_factor).sample - pixels)
                     ** 2).mean().sqrt() * 127.5)

    def rel(z: torch.Tensor) -> float:
        return float(((z - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)).mean())

    truth = latents.flatten(1).numpy() > 0
    n = truth.shape[1]
    rows = []

    def report(name: str, inverted: torch.Tensor, note: str) -> np.ndarray:
        z = inverted.flatten(1).numpy()
        m = (z > 0) == truth
        flat = np.ones_like(z, dtype=np.int64)
        ranked = np.stack([rank_weights(np.abs(v), np.ones(n, bool), LEVELS) for v in z])
        tpr_u, z_u = exact_tpr(m, flat)
        tpr_r, z_r = exact_tpr(m, ranked)
        rows.append(Row(f"idea: {name}: sign accuracy", float(m.mean()), "share", "", None,
                        f"{note}; TPR@1e-6 unweighted {tpr_u:.2f} (mean z {z_u:.2f}), "
                        f"|z|-rank {tpr_r:.2f} (mean z {z_r:.2f})"))
        return z

    empty = ""
    base = report("baseline (encoder mean, empty prompt, plain DDIM)",
                  ddim_invert(pipe, enc, num_inference_steps=steps),
                  f"{len(prompts)} images, {steps} steps; x0 relative error {rel(enc):.3f}")
    report("exact decoder inversion (100 Adam steps)",
           ddim_invert(pipe, dec, num_inference_steps=steps),
           f"x0 relative error {rel(dec):.3f} (encoder: {rel(enc):.3f}); decoded RMS error "
           f"{fit:.2f}/255; {t_dec:.0f} s")
    report("fixed-point DDIM inversion, 3 refinements",
           ddim_invert(pipe, enc, num_inference_steps=steps, refine=3), "empty prompt")
    report(f"{2 * steps} inversion steps", ddim_invert(pipe, enc, num_inference_steps=2 * steps),
           "empty prompt")
    report("generation prompt, guidance 1", ddim_invert(pipe, enc, num_inference_steps=steps,
                                                        prompt=prompts), "")
    report(f"generation prompt, guidance {GUIDANCE}, 3 refinements",
           ddim_invert(pipe, enc, num_inference_steps=steps, prompt=prompts,
                       guidance_scale=GUIDANCE, refine=3), "exact inverse of the sampler")
    report("ceiling: true x0 (no VAE), empty prompt",
           ddim_invert(pipe, x0, num_inference_steps=steps, prompt=empty), "")
    report(f"ceiling: true x0, generation prompt, guidance {GUIDANCE}, 3 refinements",
           ddim_invert(pipe, x0, num_inference_steps=steps, prompt=prompts,
                       guidance_scale=GUIDANCE, refine=3), "")
    # calibrated per-position weights: log-likelihood ratios from one half, tested on the other
    half = len(prompts) // 2
    for basis, a, b in (("latent elements", truth, base),
                        ("DCT basis (orthonormal, per channel)",
                         dctn(latents.numpy(), axes=(2, 3), norm="ortho").reshape(len(truth), -1)
                         > 0, dctn(base.reshape(latents.shape), axes=(2, 3), norm="ortho"
                                   ).reshape(len(truth), -1))):
        m = (b > 0) == a
        order = np.arange(len(m)) % 2 == 0  # calibration: even images; test: odd images
        acc = m[order].mean(0).clip(0.5, 0.99)
        llr = np.log(acc / (1 - acc))
        pos = np.where(llr > 0, 1 + np.floor(3 * llr / llr.max()).clip(0, 2), 0).astype(np.int64)
        ranked = np.stack([rank_weights(np.abs(v), np.ones(n, bool), LEVELS) for v in b])
        tpr_p, z_p = exact_tpr(m[~order], np.broadcast_to(pos, m[~order].shape))
        tpr_pr, z_pr = exact_tpr(m[~order], pos * ranked[~order])
        rows.append(Row(f"idea: calibrated position weights, {basis}", tpr_p, "TPR@1e-6", "",
                        None, f"mean z {z_p:.2f}; with |z|-rank too: TPR {tpr_pr:.2f} (mean z "
                        f"{z_pr:.2f}); weights from {order.sum()} images, tested on "
                        f"{(~order).sum()}; sign acc {m[~order].mean():.3f}, best 32 positions "
                        f"{np.sort(acc)[-32:].mean():.3f}"))
    del half
    # 64x64: four times the latent elements, if the model still draws one digit
    big = torch.randn((len(prompts), 4, 16, 16), generator=torch.Generator().manual_seed(32))
    images64 = to_pil(generate(pipe, prompts, seed=0, steps=steps, latents=big))
    inv64 = ddim_invert(pipe, encode(pipe, images_to_tensor(images64, (64, 64))),
                        num_inference_steps=steps)
    m = ((inv64 > 0) == (big > 0)).flatten(1).numpy()
    ranked = np.stack([rank_weights(np.abs(v), np.ones(m.shape[1], bool), LEVELS)
                       for v in inv64.flatten(1).numpy()])
    tpr_u, z_u = exact_tpr(m, np.ones_like(m, dtype=np.int64))
    tpr_r, z_r = exact_tpr(m, ranked)
    d = np.array(digits)
    small = [im.resize((32, 32), Image.Resampling.BICUBIC) for im in images64]
    acc64 = float((classify_digits(small, judge)[0].numpy() == d).mean())
    acc32 = float((classify_digits(images, judge)[0].numpy() == d).mean())
    rows.append(Row("idea: generate at 64x64 (1024 latent elements): sign accuracy",
                    float(m.mean()), "share", "", None,
                    f"TPR@1e-6 unweighted {tpr_u:.2f} (mean z {z_u:.2f}), |z|-rank {tpr_r:.2f} "
                    f"(mean z {z_r:.2f}); judge on 32x32 downscales {acc64:.3f} vs {acc32:.3f} at "
                    "32x32 (the model tiles several digits at 64x64)"))
    rng = np.random.default_rng(7)
    for name in ATTACKS[1:]:
        attacked = [SUITE[name](im, rng) for im in images64]
        inv = ddim_invert(pipe, encode(pipe, images_to_tensor(attacked, (64, 64))),
                          num_inference_steps=steps).flatten(1).numpy()
        m = (inv > 0) == (big.flatten(1).numpy() > 0)
        ranked = np.stack([rank_weights(np.abs(v), np.ones(m.shape[1], bool), LEVELS)
                           for v in inv])
        tpr_r, z_r = exact_tpr(m, ranked)
        rows.append(Row(f"idea: 64x64, {name}: TPR@1e-6 |z|-rank", tpr_r, "TPR", "", None,
                        f"sign accuracy {m.mean():.3f}, mean z {z_r:.2f}; {len(m)} images"))
    return rows


class _Seq(list):
    """A list that slices to the same type (prompts, nonces, images)."""

    def __getitem__(self, i):
        out = super().__getitem__(i)
        return _Seq(out) if isinstance(i, slice) else out


def run(quick: bool = False, device: str = "cpu", *, model: str | None = None,
        refine: int | None = None, scales: tuple[float, ...] | None = None,
        encoder: str = "detector") -> list[Row]:
    """All figures of the area; ``quick`` shrinks every count to run in about a minute.

    ``model`` (a pipeline folder) replaces trustgain-mini-sd, for development only; ``refine``
    and ``scales`` override the detector's :data:`REFINE` and :data:`SCALES`; ``encoder``:
    ``"detector"`` (the model's ``vae_detector`` folder where it has one) or ``"pipeline"``.
    """
    global REFINE, SCALES, ENCODER
    saved = (REFINE, SCALES, ENCODER)
    REFINE = REFINE if refine is None else refine
    SCALES = SCALES if scales is None else scales
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        if model is None:
            pipe = load_mini_sd(device)
        else:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(model).to(device)
            pipe.set_progress_bar_config(disable=True)
        ENCODER = detector_vae_for(model, device) if encoder == "detector" else None
        try:
            judge = load_judge(device)
        except FileNotFoundError:
            if model is None:
                raise
            judge = None  # development models come without the judge: its rows are left out
        per_digit, n_keys = (3, 4) if quick else (10, 100)
        steps = 10 if quick else STEPS
        key = latent_key(KeyRing.generate())
        prompts, digits = prompts_for(per_digit)
        prompts = _Seq(prompts)
        shape = latent_shape(pipe)
        latents, nonces, payloads = _marked_set(key, len(prompts), np.random.default_rng(1),
                                                shape)
        nonces, payloads = _Seq(nonces), _Seq(payloads)
        rows_m = mechanics_rows(key, 200 if quick else 2000, shape)
        marked = generate(pipe, prompts, seed=0, steps=steps, latents=latents)
        clean = generate(pipe, prompts, seed=1, steps=steps)
        marked_pil, clean_pil = _Seq(to_pil(marked)), _Seq(to_pil(clean))
        rows, inverted = detection(pipe, key, marked_pil, latents, nonces, payloads, steps,
                                   prompts)
        clean_inv = _invert(pipe, clean_pil, steps)
        rows += null_rows(clean_inv, inverted["none"], n_keys)
        rows += prompt_null_rows(_invert(pipe, clean_pil, steps, prompt=list(prompts)), n_keys)
        rows += inversion_rows(pipe, prompts, latents, steps) + normality_rows(latents) + rows_m
        rows += caption_rows(pipe, 30 if quick else 200, steps)
        if judge is not None:
            if not quick:  # a larger set: at 100 samples one misread digit is a whole point
                j_prompts, digits = prompts_for(JUDGE_PER_DIGIT)
                j_latents, _, _ = _marked_set(key, len(j_prompts), np.random.default_rng(2),
                                              shape)
                marked = generate(pipe, j_prompts, seed=2, steps=steps, latents=j_latents)
                clean = generate(pipe, j_prompts, seed=3, steps=steps)
            rows += judge_rows(judge, marked, clean, digits)
        rows += security_rows(pipe, key, marked_pil, latents, inverted["none"], nonces, payloads,
                              clean_pil, prompts, steps)
    finally:
        used = "detector encoder (vae_detector)" if ENCODER is not None else "pipeline VAE"
        torch.set_num_threads(threads)
        REFINE, SCALES, ENCODER = saved
    note = (f"{len(prompts)} samples, {steps} steps, guidance {GUIDANCE}; detector: "
            f"{refine if refine is not None else REFINE} refinements, scales "
            f"{scales if scales is not None else SCALES}, {used}"
            + (f"; model {model}" if model else ""))
    return [Row("setup", len(prompts), "samples", "", None, note), *rows]


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point with the development options (``--model``, ``--refine``...)."""
    p = argparse.ArgumentParser(
        prog="python -m trustgain.bench.watermark_latent",
        description="Latent-mark bench: TPR at FPR 1e-6 under attacks, the null on 10,000 "
                    "reads, normality, judge gap and security rows.",
        epilog="examples:\n  python -m trustgain.bench.watermark_latent --quick\n"
               "  python -m trustgain.bench.watermark_latent --json out.json\n"
               "  python -m trustgain.bench.watermark_latent --model DIR --encoder pipeline",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="every count shrunk (about a minute on 2 cores); figures are rough")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--model", default=None, help="pipeline folder instead of trustgain-mini-sd")
    p.add_argument("--refine", type=int, default=None,
                   help="fixed-point refinements per inversion step (detector default 0)")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="un-zoom candidates tried by the detector (default 1.0 0.7071)")
    p.add_argument("--encoder", choices=("detector", "pipeline"), default="detector",
                   help="encode with the shipped detector-side VAE or the pipeline's own")
    p.add_argument("--ideas", action="store_true", help="only the remedies' sign accuracies")
    p.add_argument("--threads", type=int, default=None, help="torch threads for --ideas (1)")
    args = p.parse_args(argv)
    t0 = time.time()
    if args.ideas:
        torch.set_num_threads(args.threads or 1)
        rows = ideas_rows(load_mini_sd(args.device), load_judge(args.device),
                          per_digit=2 if args.quick else 3, steps=10 if args.quick else STEPS)
        print(format_table(rows))
        print(f"\n{time.time() - t0:.0f} s, 1-min load average {os.getloadavg()[0]:.1f}")
        if args.json:
            args.json.write_text(json.dumps({"rows": [r.as_dict() for r in rows]}, indent=2))
        return 0
    rows = run(args.quick, args.device, model=args.model, refine=args.refine,
               scales=None if args.scales is None else tuple(args.scales), encoder=args.encoder)
    print(format_table(rows))
    print(f"\n{time.time() - t0:.0f} s, {os.cpu_count()} CPUs visible, device {args.device}")
    if args.json:
        doc = {"rows": [r.as_dict() for r in rows], "seconds": round(time.time() - t0)}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
