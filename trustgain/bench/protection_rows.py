"""The protection bench's parts, each a list of rows: one attack setting (white-box and
transfer ASR, purifiers, fidelity, residual size), the APGD-T ceiling per model, recovery and
tamper detection through ``protect()``/``recover()``, and the cost per image.

Part of the ``protection`` bench area (:mod:`trustgain.bench.protection`), which re-exports
its public names.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from trustgain.bench import Row
from trustgain.bench.protection_measures import (
    _attack_batches,
    _ddpm_purifier,
    _quantize_batch,
    _ratio,
    asr,
    blur,
    jpeg,
    linear_ceiling,
    mean_interval,
    psnr_ssim,
)
from trustgain.bench.protection_setup import ENSEMBLE, EPS, SKLEARN, _target, retrain_seeds
from trustgain.protection import ProtectConfig, protect, protect_batch, recover
from trustgain.protection import patches as P
from trustgain.protection import residual as R
from trustgain.protection import surrogates as S


def ceiling_rows(quick: bool, models: dict[str, Any], xte: np.ndarray, yte: np.ndarray,
                 batch: int = 100) -> list[Row]:
    """How far a strong attack gets on each torch model *alone*, per pixel, at the same budget:
    torchattacks' APGD-T (Croce & Hein, arXiv 2003.01690; every wrong class as a target, 100
    steps). Not our attack: the reference the white-box target is read against (on the patch
    data, attacking the surrogates together has stayed well below these figures)."""
    try:
        import torchattacks
    except ImportError:
        return []
    steps = 5 if quick else 100
    rows = []
    for name, model in models.items():
        if not isinstance(model, torch.nn.Module):
            exact = linear_ceiling(model, xte, yte, EPS)
            if exact is not None:
                rows.append(Row(f"ceiling: exact L-inf attack on {name} alone, white-box ASR "
                                f"@{EPS}/255", 100 * exact, "%", "", None,
                                "held out; a linear model's best integer perturbation is "
                                "x - eps*sign(w_true - w_other) for some other class: exact"))
            continue  # other scikit-learn models: no gradients
        atk = torchattacks.APGDT(model.eval(), norm="Linf", eps=EPS / 255, steps=steps,
                                 n_restarts=1, n_classes=int(yte.max()) + 1, seed=0)
        t0, out = time.perf_counter(), []
        for i in range(0, len(xte), batch):
            adv = atk(S.to_tensor(xte[i:i + batch]), torch.as_tensor(yte[i:i + batch]))
            out.append(_quantize_batch(xte[i:i + batch], adv))
        ms = 1000 * (time.perf_counter() - t0) / len(xte)
        role = "surrogate" if name in ENSEMBLE else "held out"
        rows.append(Row(f"ceiling: APGD-T on {name} alone, white-box ASR @{EPS}/255",
                        100 * asr(model, xte, np.concatenate(out), yte), "%", "", None,
                        f"{role}; torchattacks APGD-T, {steps} steps, all target classes, "
                        f"per pixel, no EoT; {ms:.0f} ms/img"))
    return rows


def recovery_rows(images: list[tuple[str, np.ndarray]], surrogates: dict[str, list[Any]],
                  cfg: ProtectConfig) -> tuple[list[Row], list[int]]:
    from trustgain.keys import KeyRing

    key = KeyRing.generate().derive("protect.rae", "residual").material
    wrong = KeyRing.generate().derive("protect.rae", "residual").material
    rng = np.random.default_rng(0)
    exact = wrong_ok = res_flip = img_flip = 0
    sizes: list[int] = []
    for i, (domain, img) in enumerate(images):
        xp, sealed = protect(img, key=key, config=cfg, surrogates=surrogates[domain],
                             image_id=f"{domain}-{i}")
        if domain == "patches":
            sizes.append(len(sealed))
        exact += int(np.array_equal(recover(xp, sealed, key=key), img))
        try:
            recover(xp, sealed, key=wrong)
        except R.WrongKeyError:
            wrong_ok += 1
        bad = bytearray(sealed)
        bit = int(rng.integers(0, len(bad) * 8))
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            recover(xp, bytes(bad), key=key)
        except R.RecoveryError:
            res_flip += 1
        flat = xp.copy().reshape(-1)
        bit = int(rng.integers(0, flat.size * 8))
        flat[bit // 8] ^= np.uint8(1 << (bit % 8))
        try:
            recover(flat.reshape(xp.shape), sealed, key=key)
        except R.ProtectedImageModifiedError:
            img_flip += 1
    n = len(images)
    # every single-bit flip of one full residual (a natural patch)
    domain, img = next(d for d in images if d[0] == "patches")
    xp, sealed = protect(img, key=key, config=cfg, surrogates=surrogates[domain], image_id="all")
    caught = 0
    for b in range(len(sealed) * 8):
        bad = bytearray(sealed)
        bad[b // 8] ^= 1 << (b % 8)
        try:
            recover(xp, bytes(bad), key=key)
        except R.RecoveryError:
            caught += 1
    counts = {d: sum(1 for dd, _ in images if dd == d) for d in ("digits", "patches")}
    what = f"{n} images ({counts['digits']} digits, {counts['patches']} patches)"

    def pct(k: int, total: int, metric: str, note: str) -> Row:
        return Row(metric, 100 * k / total, "%", "100%", k == total, note)

    return [
        pct(exact, n, "bit-exact recovery", what),
        pct(wrong_ok, n, "wrong key rejected", what + "; WrongKeyError"),
        pct(res_flip, n, "one-bit residual tamper detected", what + "; a random bit each"),
        pct(img_flip, n, "one-bit image tamper detected", what + "; a random bit each"),
        pct(caught, len(sealed) * 8, "every bit flip of a residual detected",
            f"all {len(sealed) * 8} bits of one {len(sealed)}-byte residual"),
    ], sizes


def seed_text(seeds: tuple[int, ...]) -> str:
    """``100, 101`` for two seeds, ``100-113`` for a longer run of consecutive ones."""
    if len(seeds) > 2 and seeds == tuple(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _attack_rows(rows: list[Row], label: str, quick: bool, models: dict[str, Any],
                 ens_names: list[str], others: list[str], xte: np.ndarray, yte: np.ndarray,
                 cfg: ProtectConfig, key: bytes, retrained: dict[str, list[Any]] | None = None
                 ) -> tuple[np.ndarray, float]:
    """Rows of one attack setting (``label``); returns the protected test patches and the
    seconds per image of the batched attack. A held-out family with ``retrained`` models is
    read as the mean transfer ASR over all its trainings."""
    ensemble = [models[a] for a in ens_names]
    xp, ms = _attack_batches(xte, yte, ensemble, cfg)
    tag = f"[{label}] "
    wb = {a: asr(models[a], xte, xp, yte) for a in ens_names}
    for a, v in wb.items():
        t, ok = _target(quick, ">= 95%", v >= 0.95)
        rows.append(Row(f"{tag}white-box ASR {a} @{EPS}/255", 100 * v, "%", t, ok,
                        f"PGD-{cfg.steps} MI+DI+EoT, block {cfg.block}, ensemble "
                        f"{'+'.join(ens_names)}; {1000 * ms:.0f} ms/img batched"))
    tr = {k: asr(models[k], xte, xp, yte) for k in others}
    runs = {k: [v] + [asr(m, xte, xp, yte) for m in (retrained or {}).get(k, [])]
            for k, v in tr.items()}
    intervals = {k: mean_interval([100 * v for v in vals]) for k, vals in runs.items()
                 if len(vals) > 1}
    for k, vals in runs.items():
        note = "never seen by the attack"
        if k in intervals:
            lo, hi = intervals[k]
            note += (f"; mean of {len(vals)} trainings, 95% interval [{lo:.1f}, {hi:.1f}] "
                     f"(bench seed, then seeds {seed_text(retrain_seeds(len(vals)))}): "
                     + " / ".join(f"{100 * v:.1f}" for v in vals))
        rows.append(Row(f"{tag}transfer ASR {k} @{EPS}/255", 100 * float(np.mean(vals)), "%",
                        "", None, note))
    hits = [k for k, vals in runs.items() if np.mean(vals) >= 0.70]
    every = [k for k, vals in runs.items() if min(vals) >= 0.70]
    above = [k for k, (lo, _) in intervals.items() if lo >= 70]
    t, ok = _target(quick, ">= 3 incl. sklearn",
                    len(hits) >= 3 and any(k in SKLEARN for k in hits))
    rows.append(Row(f"{tag}held-out models with transfer ASR >= 70%", len(hits), "models", t,
                    ok, f"{', '.join(hits) or 'none'} (of {len(tr)} held out; torch families: "
                    "mean over trainings); >= 70% in every training: "
                    f"{', '.join(every) or 'none'}; 95% interval of the mean above 70%: "
                    f"{', '.join(above) or 'none'}"))
    purifiers = {"jpeg50": jpeg, "blur1": blur}
    ddpm = _ddpm_purifier()
    if ddpm is not None:
        purifiers["ddpm-t100"] = ddpm
    kept_wb, kept_tr = {}, {}
    for pname, fn in purifiers.items():
        kept_wb[pname] = _ratio([asr(models[a], xte, xp, yte, fn) for a in ens_names], wb)
        kept_tr[pname] = _ratio([asr(models[k], xte, xp, yte, fn) for k in others], tr)
        rows.append(Row(f"{tag}ASR kept after {pname} (white-box)", 100 * kept_wb[pname], "%",
                        "", None, f"transfer {100 * kept_tr[pname]:.1f}%; mean ASR over models"))
    note = "purifiers: " + ", ".join(purifiers) + ("" if ddpm is not None else
                                                   "; no DDPM ($TRUSTGAIN_PATCH_DDPM unset)")
    worst = min(kept_wb, key=lambda k: np.nan_to_num(kept_wb[k], nan=np.inf))
    t, ok = _target(quick, ">= 80%", kept_wb[worst] >= 0.80)
    rows.append(Row(f"{tag}white-box ASR kept after worst purifier", 100 * kept_wb[worst], "%",
                    t, ok, f"worst: {worst}; {note}"))
    worst_t = min(kept_tr, key=lambda k: np.nan_to_num(kept_tr[k], nan=np.inf))
    t, ok = _target(quick, ">= 80%", kept_tr[worst_t] >= 0.80)
    rows.append(Row(f"{tag}transfer ASR kept after worst purifier", 100 * kept_tr[worst_t], "%",
                    t, ok, f"worst: {worst_t}"))
    ps, ss = psnr_ssim(xte, xp)
    t, ok = _target(quick, ">= 30 dB", ps.mean() >= 30)
    rows.append(Row(f"{tag}PSNR @{EPS}/255", float(ps.mean()), "dB", t, ok, f"min {ps.min():.2f}"))
    t, ok = _target(quick, ">= 0.88", ss.mean() >= 0.88)
    rows.append(Row(f"{tag}SSIM @{EPS}/255", float(ss.mean()), "", t, ok, f"min {ss.min():.3f}"))
    linf = int(np.abs(xp.astype(int) - xte).max())
    rows.append(Row(f"{tag}max |protected - original|", linf, "px", f"<= {EPS}", linf <= EPS))
    sizes = [len(R.seal(a, b, key=key, image_id=f"patch-{i:06d}", method="pgd", eps=EPS))
             for i, (a, b) in enumerate(zip(xte, xp, strict=True))]
    bits = 8 * float(np.mean(sizes)) / xte[0].size
    t, ok = _target(quick, "<= 1.0", bits <= 1.0)
    rows.append(Row(f"{tag}residual bits per subpixel @{EPS}/255", bits, "bit", t, ok,
                    f"PGD-{cfg.steps} on the test patches, all overhead incl. (header, nonce, tag, "
                    f"hash); mean {np.mean(sizes):.0f} B, max {max(sizes)} B"))
    return xp, ms


def cost_rows(quick: bool, cfg: ProtectConfig, ensemble: list[torch.nn.Module],
              xte: np.ndarray, key: bytes) -> list[Row]:
    """Cost per image through ``protect()`` (perturb + quantize + seal) at 32x32 and 256x256."""
    rows: list[Row] = []
    steps = cfg.steps
    # cost per image through protect() (perturb + quantize + seal), 2 torch threads
    times = []
    for i, img in enumerate(xte[: 2 if quick else 20]):
        t1 = time.perf_counter()
        protect(img, key=key, config=cfg, surrogates=ensemble, image_id=f"cost-{i}")
        times.append(time.perf_counter() - t1)
    ms = 1000 * float(np.median(times))
    rows.append(Row("cost per 32x32 image, one per call", ms, "ms", "", None,
                    f"median of {len(times)}, protect() PGD-{steps} incl. seal, "
                    f"{torch.get_num_threads()} threads"))
    # the same work through protect_batch (what `trustgain protect` does, 16 per call)
    n, per_call = (8, 4) if quick else (64, 16)
    batch = list(xte[:n])
    walls = []
    for r in range(1 if quick else 3):
        t1 = time.perf_counter()
        protect_batch(batch, key=key, config=cfg, surrogates=ensemble,
                      image_ids=[f"cost-b{r}-{i}" for i in range(n)], batch_size=per_call)
        walls.append(time.perf_counter() - t1)
    ms = 1000 * float(np.median(walls)) / n
    t, ok = _target(quick, "<= 50 ms", ms <= 50)
    rows.append(Row(f"cost per 32x32 image, {per_call} per call", ms, "ms", t, ok,
                    f"{n} images, median of {len(walls)} runs, protect_batch() PGD-{steps} "
                    f"incl. seal, {torch.get_num_threads()} threads; "
                    f"{rows[-1].value / ms:.2f}x the one-per-call cost"))
    side = 128 if quick else 256
    big = P.sources(0)[0][1][:side, :side]
    times = []
    for i in range(1 if quick else 3):
        t1 = time.perf_counter()
        protect(big, key=key, config=cfg, surrogates=ensemble, image_id=f"big-{i}")
        times.append(time.perf_counter() - t1)
    ms = 1000 * float(np.median(times))
    t, ok = _target(quick, "<= 5000 ms", ms <= 5000)
    rows.append(Row(f"cost per {side}x{side} image", ms, "ms", t, ok,
                    f"median of {len(times)}; surrogates see a 32x32 view"))
    return rows
