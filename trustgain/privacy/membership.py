"""Membership-inference audit of a latent diffusion model: does it remember its training images?

Attack (Matsumoto et al. 2023, "Membership Inference Attacks against Diffusion Models"; the
loss-threshold idea of Yeom et al. 2018): a training image is denoised better than a fresh
one. For each image ``x`` (VAE posterior mean, scaled as in training) and each timestep ``t``
of a fixed set, the denoising loss ``||eps - eps_theta(sqrt(a_t) z + sqrt(1 - a_t) eps, t, c)||^2``
is averaged over a few noise draws, conditioned on the image's caption ``c``. The same noise
draws are used for every image (common random numbers), so differences between images are
not noise. The score is minus the mean log-loss over the timesteps (fixed in advance, never
picked on the audited data). With a ``reference`` model (the public model the audited one was
fine-tuned from) the score is the loss *drop* ``log L_ref - log L_model``, which removes how
hard each image is anyway (the "calibrated" attack of Watson et al., ICLR 2022).

Report: ROC AUC and TPR at FPR 1% (scikit-learn), each with a percentile bootstrap
confidence interval (``scipy.stats.bootstrap``, members and non-members resampled
separately, seeded). The scorer is written here because the libraries that ship attacks
(ART, ML Privacy Meter) target classifiers and have no denoising-loss attack.

What this does not show: an AUC near 0.5 is no proof of privacy (a stronger attack may
exist); differential privacy is the guarantee, this is a check that it is not broken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trustgain.errors import InputError
from trustgain.privacy.metadata import METADATA, read_metadata

#: Timesteps (of the 1000-step training schedule) at which the loss is measured.
DEFAULT_TIMESTEPS: tuple[int, ...] = (25, 50, 100, 200, 300, 500)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class AuditSet:
    """Images (uint8, N x H x W x 3) with their captions ("" where none is known)."""

    images: np.ndarray
    captions: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def load_audit_set(folder: str | Path) -> AuditSet:
    """Images of ``folder``; captions from its ``metadata.jsonl`` (``file_name``, ``text``).

    Without ``metadata.jsonl`` every image in the folder is used with an empty caption.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder", hint="give a folder of images")
    entries: list[tuple[Path, str, str]] = []
    if (root / METADATA).is_file():
        entries = read_metadata(root, need_text=False)
    else:
        entries = [
            (p, p.name, "")
            for p in sorted(root.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ]
    if not entries:
        raise InputError(f"{root} holds no images", hint=f"suffixes: {', '.join(IMAGE_SUFFIXES)}")
    images = []
    for path, _, _ in entries:
        try:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB")))
        except FileNotFoundError:
            raise InputError(f"{path}: listed in metadata.jsonl but missing") from None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"{path}: not a readable image ({exc})") from None
    if len({im.shape for im in images}) != 1:
        raise InputError(f"{root}: images differ in size", hint="resize them to one size first")
    return AuditSet(np.stack(images), [t for _, _, t in entries], [n for _, n, _ in entries])


def denoising_losses(
    pipe: Any,
    images: np.ndarray,
    captions: Sequence[str],
    *,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    draws: int = 4,
    seed: int = 0,
    batch: int = 64,
) -> np.ndarray:
    """Per-image denoising loss, shape (N, len(timesteps)), averaged over ``draws`` noises.

    ``pipe``: a diffusers text-to-image pipeline (``vae``, ``unet``, ``tokenizer``,
    ``text_encoder``, ``scheduler``). ``images``: uint8 (N, H, W, 3) at the model's size.
    """
    import torch

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if images.shape[1:3] != (size, size):
        raise InputError(
            f"images are {images.shape[2]}x{images.shape[1]}, the model makes {size}x{size}",
            hint="resize the audit images to the model's resolution",
        )
    device = pipe.unet.device
    alphas = pipe.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    if max(timesteps) >= len(alphas) or min(timesteps) < 0:
        raise ValueError(f"timesteps must lie in [0, {len(alphas) - 1}]")
    t = torch.as_tensor(list(timesteps), device=device)
    a = alphas[t].view(1, -1, 1, 1, 1)
    c, side = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    shape = (draws, len(timesteps), c, side, side)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=gen).to(device)  # the same for every image
    out = np.empty((len(images), len(timesteps)), dtype=np.float64)
    with torch.no_grad():
        for lo in range(0, len(images), batch):
            x = torch.from_numpy(images[lo : lo + batch]).to(device).float()
            x = x.permute(0, 3, 1, 2) / 127.5 - 1.0
            z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
            ids = pipe.tokenizer(
                list(captions[lo : lo + batch]),
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            states = pipe.text_encoder(ids)[0]
            n = len(z)
            # every (image, draw, timestep) at once: (n, draws, T, C, H, W) flattened
            zz = z[:, None, None]
            eps = noise[None].expand(n, *noise.shape)
            zt = a.sqrt()[:, None] * zz + (1 - a).sqrt()[:, None] * eps
            tt = t[None, None].expand(n, draws, -1)
            ss = states[:, None].expand(n, draws * len(timesteps), *states.shape[1:])
            pred = pipe.unet(
                zt.reshape(-1, *zt.shape[3:]),
                tt.reshape(-1),
                ss.reshape(-1, *states.shape[1:]),
            ).sample.reshape(eps.shape)
            loss = (pred - eps).pow(2).mean(dim=(3, 4, 5)).mean(dim=1)  # (n, T)
            out[lo : lo + n] = loss.double().cpu().numpy()
    return out


def scores(losses: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Membership score per image (higher = more likely a member) from ``denoising_losses``."""
    logs = np.log(_losses("losses", losses))
    if reference is not None:
        ref = _losses("reference", reference)
        if ref.shape != logs.shape:
            raise InputError(f"reference losses have shape {ref.shape}, the losses {logs.shape}")
        return (np.log(ref) - logs).mean(axis=1)
    return -logs.mean(axis=1)


def _losses(name: str, losses: Any) -> np.ndarray:
    """``losses`` as an (N, T) float array of finite values > 0 (a log of 0 or less, or a NaN,
    would turn the scores into infinities or NaNs)."""
    try:
        arr = np.asarray(losses, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an (N, T) array of numbers") from None
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InputError(f"{name} must be an (N, T) array (images x timesteps), not shape "
                         f"{arr.shape}")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise InputError(f"{name} must be finite and > 0 (denoising losses)")
    return arr


def tpr_at_fpr(labels: np.ndarray, score: np.ndarray, fpr: float) -> float:
    """Highest TPR over thresholds whose FPR is at most ``fpr`` (scikit-learn's ROC curve)."""
    from sklearn.metrics import roc_curve

    f, t, _ = roc_curve(labels, score)
    return float(t[f <= fpr].max())


def _auc(m: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mann-Whitney AUC along ``axis`` (ties count one half); vectorised for the bootstrap."""
    m, n = np.moveaxis(m, axis, -1), np.moveaxis(n, axis, -1)
    diff = m[..., :, None] - n[..., None, :]
    return (diff > 0).mean(axis=(-2, -1)) + 0.5 * (diff == 0).mean(axis=(-2, -1))


def _tpr(m: np.ndarray, n: np.ndarray, fpr: float, axis: int = -1) -> np.ndarray:
    """TPR at FPR <= ``fpr``: members above the k+1-th highest non-member, k = floor(fpr n)."""
    m, n = np.moveaxis(m, axis, -1), np.moveaxis(n, axis, -1)
    k = int(np.floor(fpr * n.shape[-1] + 1e-9))
    cut = -np.sort(-n, axis=-1)[..., k : k + 1]
    return (m > cut).mean(axis=-1)


@dataclass(frozen=True)
class MembershipReport:
    """AUC and TPR at a fixed FPR with bootstrap intervals; per-timestep AUCs for insight."""

    auc: float
    auc_ci: tuple[float, float]
    tpr_at_fpr: float
    tpr_ci: tuple[float, float]
    fpr: float
    n_members: int
    n_nonmembers: int
    attack: str
    timesteps: tuple[int, ...]
    auc_per_timestep: dict[str, float] = field(default_factory=dict)
    confidence: float = 0.95
    n_resamples: int = 1000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    fpr: float = 0.01,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    attack: str = "loss",
    timesteps: Sequence[int] = (),
    per_timestep: dict[str, float] | None = None,
) -> MembershipReport:
    """AUC and TPR at ``fpr`` of scores, with percentile bootstrap intervals (seeded)."""
    from scipy.stats import bootstrap
    from sklearn.metrics import roc_auc_score

    if not 0 <= fpr < 1:  # also refuses NaN
        raise ValueError(f"fpr must lie in [0, 1), not {fpr!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), not {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a whole number >= 1, not {n_resamples!r}")
    try:
        m, nm = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    except (TypeError, ValueError):
        raise InputError("membership scores must be 1-D arrays of numbers") from None
    if m.ndim != 1 or nm.ndim != 1:
        raise InputError(f"membership scores must be 1-D, not shapes {m.shape} and {nm.shape}")
    if not (np.isfinite(m).all() and np.isfinite(nm).all()):
        raise InputError("membership scores hold NaN or infinite values")
    if len(m) < 2 or len(nm) < 2:
        raise InputError("the audit needs at least 2 members and 2 non-members")
    labels, both = np.r_[np.ones(len(m)), np.zeros(len(nm))], np.r_[m, nm]

    def tpr(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return _tpr(a, b, fpr, axis)

    cis = []
    for stat in (_auc, tpr):
        res = bootstrap(
            (m, nm),
            stat,
            vectorized=True,
            paired=False,
            n_resamples=n_resamples,
            batch=100,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        ci = res.confidence_interval
        cis.append((float(ci.low), float(ci.high)))
    return MembershipReport(
        auc=float(roc_auc_score(labels, both)),
        auc_ci=cis[0],
        tpr_at_fpr=tpr_at_fpr(labels, both, fpr),
        tpr_ci=cis[1],
        fpr=fpr,
        n_members=len(m),
        n_nonmembers=len(nm),
        attack=attack,
        timesteps=tuple(int(t) for t in timesteps),
        auc_per_timestep=dict(per_timestep or {}),
        confidence=confidence,
        n_resamples=n_resamples,
    )


def report_from_losses(
    member_losses: np.ndarray,
    nonmember_losses: np.ndarray,
    *,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    fpr: float = 0.01,
    n_resamples: int = 1000,
    seed: int = 0,
) -> MembershipReport:
    """The report from :func:`denoising_losses` of members and non-members.

    ``reference``: the same losses under the reference model (calibrated attack).
    """
    from sklearn.metrics import roc_auc_score

    lm, ln = _losses("member losses", member_losses), _losses("non-member losses",
                                                             nonmember_losses)
    rm, rn = reference if reference is not None else (None, None)
    if rm is not None and rn is not None:
        rm, rn = _losses("reference member losses", rm), _losses("reference non-member losses",
                                                                   rn)
    for name, arr in (("member", lm), ("non-member", ln), ("reference member", rm),
                      ("reference non-member", rn)):
        if arr is not None and arr.shape[1] != len(timesteps):
            raise InputError(f"{name} losses have {arr.shape[1]} column(s) but there are "
                             f"{len(timesteps)} timesteps")
    if rm is not None and (len(rm), len(rn)) != (len(lm), len(ln)):
        raise InputError("reference losses must be of the same images as the losses")
    labels = np.r_[np.ones(len(lm)), np.zeros(len(ln))]
    per_t = {}
    for j, t in enumerate(timesteps):
        col = -np.log(np.r_[lm[:, j], ln[:, j]])
        if rm is not None and rn is not None:
            col = col + np.log(np.r_[rm[:, j], rn[:, j]])
        per_t[str(t)] = round(float(roc_auc_score(labels, col)), 4)
    return evaluate(
        scores(lm, rm),
        scores(ln, rn),
        fpr=fpr,
        n_resamples=n_resamples,
        seed=seed,
        attack="loss-calibrated" if reference is not None else "loss",
        timesteps=timesteps,
        per_timestep=per_t,
    )


def audit_membership(
    pipe: Any,
    members: AuditSet,
    nonmembers: AuditSet,
    *,
    reference: Any | None = None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    draws: int = 4,
    seed: int = 0,
    fpr: float = 0.01,
    n_resamples: int = 1000,
) -> MembershipReport:
    """Run the loss attack on ``pipe`` (calibrated by ``reference`` when given) and report."""
    kw = dict(timesteps=timesteps, draws=draws, seed=seed)
    lm = denoising_losses(pipe, members.images, members.captions, **kw)
    ln = denoising_losses(pipe, nonmembers.images, nonmembers.captions, **kw)
    ref = None
    if reference is not None:
        ref = (denoising_losses(reference, members.images, members.captions, **kw),
               denoising_losses(reference, nonmembers.images, nonmembers.captions, **kw))
    return report_from_losses(lm, ln, reference=ref, timesteps=timesteps, fpr=fpr,
                              n_resamples=n_resamples, seed=seed)
