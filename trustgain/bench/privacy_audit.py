"""Privacy audit area: membership inference, the memorization guard, and redaction.

Setting (issue 6): trustgain-mini-sd fine-tuned on 100 images it never saw (renderings of the
digits *test* split, one look and caption each; mini-sd trained on the train split only).
Non-members: the other 260 test scans rendered the same way. All fine-tunes go through
:func:`trustgain.privacy.finetune.finetune` (full UNet, batch 25, lr 3e-4).

1. ``overfit``: a deliberately overfit non-private fine-tune (300 epochs, 1,200 steps).
   Target: the membership attack (:mod:`trustgain.privacy.membership`) has AUC >= 0.7.
2. ``dp``: the same data with DP-SGD at epsilon 4 (delta 1e-5, PRV accountant, 30 epochs).
   Target: AUC <= 0.55 (point estimate; the bootstrap interval is in the note).
   ``control``: the DP run's settings without DP (no target), so that a low DP AUC is not
   only a short run. Each attack is run plain and calibrated by the public model.
3. Memorization guard (:mod:`trustgain.privacy.memorization`): index of the 100 members
   with a public reference set (4 renderings of each *train*-split scan, the data mini-sd
   was trained on, disjoint from members and from every generation scored here), threshold
   calibrated on 400 held-out generations of the public model (mini-sd, which never saw the
   members) for a false-flag rate of 0.5% (half the claimed 1%, as margin for a finite test
   set). Near-copies are defined independently of the guard's score: generations whose SSIM
   (scikit-image) to some member is >= 0.8; the guard does not use SSIM.
   Targets: >= 95% of the overfit model's near-copies flagged (200 generations from member
   captions); <= 1% of the DP model's other generations flagged (200, other seeds).
4. Redaction on the hand-written labelled set (:mod:`trustgain.privacy.redact_labelled`):
   precision >= 0.98 and recall >= 0.95 per kind.

Trained models and generations are cached under ``$TRUSTGAIN_AUDIT_CACHE`` (default
``~/.cache/trustgain/privacy_audit``); delete a folder there to retrain it. ``--quick``: redaction
only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from trustgain.bench import Row, cache_root

N_MEMBERS = 100
SEED = 0
OVERFIT = {"epochs": 300, "batch_size": 25, "lr": 3e-4}
DP = {"target_epsilon": 4.0, "delta": 1e-5, "epochs": 30, "batch_size": 25, "lr": 3e-4}
AUC_ATTACK_MIN = 0.7
AUC_DP_MAX = 0.55
GUARD_TPR_MIN = 0.95
GUARD_FFR_MAX = 0.01
# The guard is calibrated for half the claimed rate: a threshold set exactly at 1% flags
# about 1% of fresh outputs on average, so a finite test set would exceed it half the time.
GUARD_CAL_RATE = 0.005
NEAR_COPY_SSIM = 0.8
# The guard's public reference set: renderings of the digits train split (drawn looks).
REFERENCE_COPIES = 4
REFERENCE_SEED = 123
DRAWS = 2  # noise draws per image and timestep in the membership attack


def cache_dir() -> Path:
    return cache_root("TRUSTGAIN_AUDIT_CACHE", "privacy_audit")


# -- data -----------------------------------------------------------------------------------


def audit_data(seed: int = SEED) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """(member images, captions, non-member images, captions): uint8 (N, 32, 32, 3).

    Each *test* scan is rendered once with a drawn look; a seeded permutation picks the
    100 members, the rest are non-members.
    """
    from trustgain.models import data

    images, labels = data.load_split("test")
    rng = np.random.default_rng(seed)
    looks = data.draw_looks(len(labels), rng)
    x = data.render(data.upsample(images), looks, rng)
    pixels = ((x.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255)
    pixels = pixels.astype(np.uint8)
    caps = [data.caption(int(y), lk, rng) for y, lk in zip(labels, looks, strict=True)]
    order = rng.permutation(len(labels))
    mem, non = order[:N_MEMBERS], order[N_MEMBERS:]
    return pixels[mem], [caps[i] for i in mem], pixels[non], [caps[i] for i in non]


# -- models ---------------------------------------------------------------------------------


def _load(path: str | Path) -> Any:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _nondp_model(name: str, members: tuple[np.ndarray, list[str]], settings: dict) -> Path:
    """A cached non-private fine-tune by :func:`trustgain.privacy.finetune.finetune`."""
    from trustgain.models import mini_sd_path
    from trustgain.privacy.finetune import finetune

    out = cache_dir() / name
    if not (out / "model_index.json").is_file():
        finetune(str(mini_sd_path()), members, str(out), dp=False, progress=False, seed=SEED,
                 **settings)
    return out


def overfit_model(members: tuple[np.ndarray, list[str]]) -> Path:
    """The deliberately overfit non-private fine-tune: full UNet, 300 epochs."""
    return _nondp_model(f"overfit-ft-e{OVERFIT['epochs']}", members, OVERFIT)


def control_model(members: tuple[np.ndarray, list[str]]) -> Path:
    """Non-private fine-tune with the DP run's epochs, batch and rate (no clipping, no noise).

    Shows what the DP run's few steps would leak without DP, so a low DP AUC is not just
    a short run.
    """
    settings = {k: DP[k] for k in ("epochs", "batch_size", "lr")}
    return _nondp_model(f"control-ft-e{DP['epochs']}", members, settings)


def dp_model(members: tuple[np.ndarray, list[str]], repeat: int = 0) -> Path:
    """The cached DP-SGD fine-tune at epsilon 4 (:func:`trustgain.privacy.finetune.finetune`).

    ``repeat`` > 0: another, independent run of the same training (DP-SGD's noise comes from
    the operating system, so each run is a different model), cached in its own folder.
    """
    from trustgain.models import mini_sd_path
    from trustgain.privacy.finetune import finetune

    out = cache_dir() / f"dp-eps{DP['target_epsilon']:g}-e{DP['epochs']}"
    if repeat:
        out = out.with_name(f"{out.name}-r{repeat}")
    if not (out / "model_index.json").is_file():
        finetune(str(mini_sd_path()), members, str(out), dp=True, progress=False, seed=SEED,
                 target_epsilon=DP["target_epsilon"], delta=DP["delta"], epochs=DP["epochs"],
                 batch_size=DP["batch_size"], lr=DP["lr"])
    return out


def generations(path: Path, captions: list[str], *, seed: int, steps: int = 20) -> np.ndarray:
    """One image per caption (uint8), cached beside the model; seeds ``seed + i``."""
    import torch

    cache = path / f"generations-s{seed}-n{len(captions)}-t{steps}.npy"
    if cache.is_file():
        return np.load(cache)
    pipe = _load(path)
    out = []
    for lo in range(0, len(captions), 50):
        batch = captions[lo : lo + 50]
        gens = [torch.Generator().manual_seed(seed + lo + i) for i in range(len(batch))]
        images = pipe(batch, num_inference_steps=steps, guidance_scale=4.0, generator=gens,
                      output_type="np").images
        out.append((images * 255).round().clip(0, 255).astype(np.uint8))
    result = np.concatenate(out)
    np.save(cache, result)
    return result


def public_reference(copies: int = REFERENCE_COPIES, seed: int = REFERENCE_SEED) -> np.ndarray:
    """``copies`` renderings (drawn looks) of every *train*-split scan, uint8 (N, 32, 32, 3):
    public images of the kind mini-sd makes, none of them a member (members are test scans)."""
    from trustgain.models import data

    images, labels = data.load_split("train")
    x, _, _ = data.augmented_set(images, labels, copies, seed=seed)
    return ((x.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def max_ssim(images: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Each image's highest SSIM (scikit-image) against any training image."""
    from skimage.metrics import structural_similarity

    return np.array([
        max(structural_similarity(g, t, channel_axis=2, data_range=255) for t in train)
        for g in images
    ])


# -- rows -------------------------------------------------------------------------------------


def redaction_rows() -> list[Row]:
    from trustgain.privacy.redact_labelled import load, score

    samples = load()
    table, _ = score(samples)
    rows = []
    for kind, r in table.items():
        n = int(r["support"])
        rows.append(Row(f"redact labelled {kind} precision", r["precision"], "share",
                        ">= 0.98", r["precision"] >= 0.98,
                        f"{int(r['masked'])} masked spans; {len(samples)} hand-written prompts"))
        rows.append(Row(f"redact labelled {kind} recall", r["recall"], "share", ">= 0.95",
                        r["recall"] >= 0.95, f"{n} labelled spans"))
    return rows


def _losses(pipe: Any, sets: tuple[Any, Any], draws: int) -> tuple[np.ndarray, np.ndarray]:
    from trustgain.privacy.membership import denoising_losses

    return tuple(denoising_losses(pipe, s.images, s.captions, draws=draws, seed=SEED)
                 for s in sets)


def _audit_rows(label: str, path: Path, base_losses: tuple[np.ndarray, np.ndarray],
                sets: tuple[Any, Any], *, draws: int, target: tuple[str, bool] | None,
                ) -> list[Row]:
    from trustgain.privacy.membership import report_from_losses

    lm, ln = _losses(_load(path), sets, draws)
    rows = []
    for ref in (None, base_losses):
        rep = report_from_losses(lm, ln, reference=ref, seed=SEED)
        ok = None
        tgt = ""
        if target is not None:
            tgt = target[0]
            ok = rep.auc >= AUC_ATTACK_MIN if target[1] else rep.auc <= AUC_DP_MAX
        rows.append(Row(
            f"MIA AUC {label} ({rep.attack})", rep.auc, "", tgt, ok,
            f"95% CI [{rep.auc_ci[0]:.3f}, {rep.auc_ci[1]:.3f}]; per t "
            + ", ".join(f"{t}:{a:.2f}" for t, a in rep.auc_per_timestep.items())))
        rows.append(Row(
            f"MIA TPR@FPR1% {label} ({rep.attack})", rep.tpr_at_fpr, "share", "", None,
            f"95% CI [{rep.tpr_ci[0]:.3f}, {rep.tpr_ci[1]:.3f}]; {rep.n_members} members, "
            f"{rep.n_nonmembers} non-members"))
    return rows


def _wilson(k: int, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def guard_rows(members: np.ndarray, mcaps: list[str], overfit: Path, dp: Path) -> list[Row]:
    from trustgain.models import mini_sd_path
    from trustgain.privacy.memorization import build_index, calibrate

    base_copy = cache_dir() / "base-generations"
    base_copy.mkdir(parents=True, exist_ok=True)
    if not (base_copy / "model_index.json").is_file():
        _load(mini_sd_path()).save_pretrained(str(base_copy))
    caps2 = mcaps + mcaps
    held_out = generations(base_copy, caps2 + caps2, seed=10_000)
    reference = public_reference()
    index = calibrate(build_index(members, reference=reference), held_out,
                      target_rate=GUARD_CAL_RATE)
    index.save(cache_dir() / "memorization-index.npz", overwrite=True)
    over = generations(overfit, caps2, seed=20_000)
    priv = generations(dp, caps2, seed=30_000)
    over_copy = max_ssim(over, members) >= NEAR_COPY_SSIM
    priv_copy = max_ssim(priv, members) >= NEAR_COPY_SSIM
    over_flag, priv_flag = index.flags(over), index.flags(priv)
    rows = []
    k, n = int((over_flag & over_copy).sum()), int(over_copy.sum())
    lo, hi = _wilson(k, n) if n else (0.0, 1.0)
    rows.append(Row("guard: near-copies flagged (overfit model)", k / n if n else float("nan"),
                    "share", f">= {GUARD_TPR_MIN}", n > 0 and k / n >= GUARD_TPR_MIN,
                    f"{k}/{n}, Wilson 95% [{lo:.3f}, {hi:.3f}]; {n} of {len(over)} generations "
                    f"have SSIM >= {NEAR_COPY_SSIM} to a member"))
    fresh = ~priv_copy
    k, n = int((priv_flag & fresh).sum()), int(fresh.sum())
    lo, hi = _wilson(k, n)
    rows.append(Row("guard: false flags (DP model)", k / n, "share", f"<= {GUARD_FFR_MAX}",
                    k / n <= GUARD_FFR_MAX,
                    f"{k}/{n}, Wilson 95% [{lo:.3f}, {hi:.3f}]; {int(priv_copy.sum())} DP "
                    f"generations are near-copies by SSIM (excluded), "
                    f"{int((priv_flag & priv_copy).sum())} of them flagged"))
    rows.append(Row("guard: threshold (distance ratio)", float(index.threshold), "", "", None,
                    f"nearest member / mean of {index.k} nearest of {len(reference)} public "
                    f"reference images ({index.channels} channel); calibrated on "
                    f"{len(held_out)} base-model generations for rate "
                    f"{GUARD_CAL_RATE}; overfit non-copies flagged "
                    f"{int((over_flag & ~over_copy).sum())}/{int((~over_copy).sum())}"))
    return rows


def dp_repeat_rows(repeats: int) -> list[Row]:
    """The DP rows over ``repeats`` independent DP-SGD runs (the main run plus more).

    A single DP model's audit AUC is one draw: DP-SGD's noise differs from run to run, and
    so does what the attack can see. Each run is audited as in :func:`run` (both attacks, the
    same members, non-members and noise draws) and its generations (other seeds than the main
    table's) go through the memorization guard calibrated by :func:`guard_rows` (run the
    whole audit first: it saves the calibrated index in the cache).
    """
    from trustgain.models import mini_sd_path
    from trustgain.privacy.membership import AuditSet, report_from_losses
    from trustgain.privacy.memorization import load_index

    index_path = cache_dir() / "memorization-index.npz"
    if not index_path.is_file():
        raise SystemExit(f"{index_path} is missing: run the whole audit first")
    index = load_index(index_path)
    m, mc, n, nc = audit_data()
    sets = (AuditSet(m, mc, [f"m{i}" for i in range(len(m))]),
            AuditSet(n, nc, [f"n{i}" for i in range(len(n))]))
    base = _losses(_load(mini_sd_path()), sets, DRAWS)
    aucs: dict[str, list[float]] = {}
    flags, fresh_total = 0, 0
    rows = []
    for r in range(repeats):
        path = dp_model((m, mc), repeat=r)
        lm, ln = _losses(_load(path), sets, DRAWS)
        for ref in (None, base):
            rep = report_from_losses(lm, ln, reference=ref, seed=SEED)
            aucs.setdefault(rep.attack, []).append(rep.auc)
            rows.append(Row(f"DP run {r}: MIA AUC ({rep.attack})", rep.auc, "", "", None,
                            f"95% CI [{rep.auc_ci[0]:.3f}, {rep.auc_ci[1]:.3f}]"))
        gens = generations(path, mc + mc, seed=40_000 + 1000 * r)
        fresh = max_ssim(gens, m) < NEAR_COPY_SSIM
        k = int((index.flags(gens) & fresh).sum())
        flags, fresh_total = flags + k, fresh_total + int(fresh.sum())
        rows.append(Row(f"DP run {r}: guard false flags", k / max(1, int(fresh.sum())), "share",
                        "", None, f"{k}/{int(fresh.sum())} non-copy generations"))
    for attack, values in aucs.items():
        v = np.array(values)
        rows.append(Row(f"DP eps={DP['target_epsilon']:g}, {repeats} runs: mean MIA AUC ({attack})",
                        float(v.mean()), "", f"<= {AUC_DP_MAX}", bool(v.mean() <= AUC_DP_MAX),
                        f"per run {', '.join(f'{a:.3f}' for a in v)}; sd {v.std(ddof=1):.3f}; "
                        f"runs above {AUC_DP_MAX}: {int((v > AUC_DP_MAX).sum())}"))
    lo, hi = _wilson(flags, fresh_total)
    rows.append(Row(f"DP eps={DP['target_epsilon']:g}, {repeats} runs: guard false flags",
                    flags / fresh_total, "share", f"<= {GUARD_FFR_MAX}",
                    flags / fresh_total <= GUARD_FFR_MAX,
                    f"{flags}/{fresh_total}, Wilson 95% [{lo:.3f}, {hi:.3f}]"))
    return rows


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    """All rows. ``quick``: redaction only (training the audited models takes minutes).

    ``device`` is unused: the models are tiny and cached, everything runs on the CPU.
    """
    from trustgain.models import mini_sd_path
    from trustgain.privacy.membership import AuditSet

    rows = redaction_rows()
    if quick:
        return rows
    m, mc, n, nc = audit_data()
    sets = (AuditSet(m, mc, [f"m{i}" for i in range(len(m))]),
            AuditSet(n, nc, [f"n{i}" for i in range(len(n))]))
    base = _losses(_load(mini_sd_path()), sets, DRAWS)
    overfit, dp = overfit_model((m, mc)), dp_model((m, mc))
    rows += _audit_rows("overfit non-DP", overfit, base, sets, draws=DRAWS,
                        target=(f">= {AUC_ATTACK_MIN}", True))
    rows += _audit_rows(f"DP eps={DP['target_epsilon']:g}", dp, base, sets, draws=DRAWS,
                        target=(f"<= {AUC_DP_MAX}", False))
    rows += _audit_rows(f"non-DP control ({DP['epochs']} epochs)", control_model((m, mc)), base,
                        sets, draws=DRAWS, target=None)
    spent = json.loads((dp / "privacy.json").read_text())
    rows.append(Row("DP fine-tune epsilon spent", float(spent["epsilon"]), "", "", None,
                    f"delta {spent['delta']:g}, {spent['accountant']}, sigma "
                    f"{spent['noise_multiplier']:.3f}, q {spent['sample_rate']:.3f}, "
                    f"{spent['steps']} steps"))
    rows += guard_rows(m, mc, overfit, dp)
    return rows


if __name__ == "__main__":
    import argparse

    import torch

    from trustgain.bench import format_table

    ap = argparse.ArgumentParser(prog="python -m trustgain.bench.privacy_audit",
                                 description="The membership-audit benchmark (issue 6).")
    ap.add_argument("--quick", action="store_true", help="small version")
    ap.add_argument("--dp-repeats", type=int, default=None, metavar="N",
                    help="only the DP rows, repeated over N trainings")
    args = ap.parse_args()
    if args.dp_repeats is not None and args.dp_repeats < 1:
        ap.error("--dp-repeats must be at least 1")
    torch.set_num_threads(1)
    if args.dp_repeats is None:
        print(format_table(run(quick=args.quick)))
    else:
        print(format_table(dp_repeat_rows(args.dp_repeats)))
