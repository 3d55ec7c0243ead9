"""Method ``"poison"``: protect a dataset that someone may train on without permission.

Two published availability attacks, both within an L-infinity budget in pixel units and
rounded to uint8 exactly like the other methods:

- ``"targeted"`` (default): error-maximizing, class-targeted adversarial poisons (Fowl et al.,
  "Adversarial Examples Make Strong Poisons", NeurIPS 2021, arXiv 2106.10807): each image is
  pushed by PGD towards the class ``(y + 1) mod K`` of models trained on the clean data, so a
  model trained on the protected set learns features that point to the wrong class.
- ``"untargeted"``: the same with the untargeted CW margin (the research note's baseline).
- ``"shortcut"``: class-wise synthetic noise ("Availability Attacks Create Shortcuts", Yu et
  al., KDD 2022, arXiv 2111.00898): one keyed pattern per class of random +-eps values on
  4x4-pixel blocks, added to every image of that class; a network learns the pattern instead of
  the content. Needs no crafting model and works for any labelled dataset.
- ``"grating"``: class-wise square-wave gratings at the highest spatial frequencies (period 2
  and 4 pixels first: vertical, horizontal, diagonal), each with its own sign per colour
  channel (colour-opponent first, then luminance), at the full +-eps on every pixel; the key
  deals the gratings to the classes. Our variant of the shortcut idea above, chosen by
  measurement: on the patch benchmark a fresh CNN mostly ignores the 4x4-block noise (accuracy
  0.645 against 0.680 on clean data) but picks these gratings up (0.350 on average over 5 keys
  x 5 trainings, 0.21-0.48 each), because a flip or a 2-px shift changes them only by a sign
  and natural photos carry almost no colour-opponent energy at those frequencies. Period-8
  gratings follow for datasets with more classes. Adversarial training undoes it (BENCHMARKS).
- ``"ue"``: sample-wise error-minimizing noise, "Unlearnable Examples" (Huang et al., ICLR 2021,
  arXiv 2101.04898): a min-min game between a model trained on the noisy data and noise that
  makes its training loss vanish, so nothing is left to learn.

The PGD loops are short and written here: torchattacks' targeted PGD takes one model and no
error-minimizing mode, and the perturbation must match the integer budget rule of
:func:`trustgain.protection.api.quantize`. Known limits (the research note, section 4):
adversarial training at the same budget and JPEG/grayscale squeezing weaken all of these, so the
benchmark always reports those alongside (``python -m trustgain.bench protection-modes``).

Options in ``ProtectConfig.extra``: ``poison`` (one of :data:`KINDS`), ``n_classes`` (the
class-wise kinds image by image, see :func:`perturb`),
``ue_rounds`` (10), ``ue_arch`` (``cnn``, the model of the min-min game), ``crafting_archs``
(``("cnn", "resnet")``, trained here when no surrogates are given), ``crafting_epochs`` (12).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from trustgain.errors import ConfigError, InputError

if TYPE_CHECKING:
    from trustgain.protection.api import ProtectConfig

KINDS = ("targeted", "untargeted", "shortcut", "grating", "ue")
DEFAULTS: dict[str, Any] = {"poison": "targeted", "ue_rounds": 10, "ue_arch": "cnn",
                            "crafting_archs": ("cnn", "resnet"), "crafting_epochs": 12}


def options(config: ProtectConfig) -> dict[str, Any]:
    opts = dict(DEFAULTS)
    opts.update({k: v for k, v in config.extra.items() if k in DEFAULTS})
    if opts["poison"] not in KINDS:
        raise ConfigError(f"unknown poison kind {opts['poison']!r}; known: {', '.join(KINDS)}")
    return opts


def _generator(key: bytes, config: ProtectConfig, tag: str) -> torch.Generator:
    digest = hmac.new(bytes(key), f"trustgain/poison/v1/{config.seed}/{tag}".encode(),
                      hashlib.sha256).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def _ensemble_ce(models: Sequence[torch.nn.Module], x: torch.Tensor,
                 y: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(m(x), y, reduction="sum") for m in models)


def pgd_steps(x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor], *,
              eps: float, alpha: float, steps: int, g: torch.Generator,
              delta: torch.Tensor | None = None, p_div: float = 0.0) -> torch.Tensor:
    """Signed-gradient *descent* on ``objective(x + delta)`` within ``|delta| <= eps``
    ([0, 1] units); returns the new delta. ``p_div``: DI-FGSM input diversity."""
    from trustgain.protection.pgd import diversity

    if delta is None:
        delta = (torch.rand(x.shape, generator=g) * 2 - 1) * eps
    delta = ((x + delta).clamp(0, 1) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        xa = x + delta
        if p_div and float(torch.rand((), generator=g)) < p_div:
            xa = diversity(xa, g)
        (grad,) = torch.autograd.grad(objective(xa), delta)
        with torch.no_grad():
            delta = (delta - alpha * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
    return delta.detach()


def _targets(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    return (y + 1) % n_classes


def _objective(kind: str, models: Sequence[torch.nn.Module], y: torch.Tensor,
               n_classes: int, kappa: float) -> Callable[[torch.Tensor], torch.Tensor]:
    from trustgain.protection.pgd import margin_loss

    if kind == "targeted":
        target = _targets(y, n_classes)
        return lambda xa: _ensemble_ce(models, xa, target)
    if kind == "untargeted":
        return lambda xa: -sum(margin_loss(m(xa), y, kappa) for m in models)
    raise ConfigError(f"poison kind {kind!r} has no per-image objective")


def _class_pattern(x: torch.Tensor, kind: str, key: bytes, config: ProtectConfig,
                   labels: int | Sequence[int] | np.ndarray | None,
                   n_classes: object) -> torch.Tensor:
    """``x`` plus its class's pattern (``shortcut`` or ``grating``): needs the class of every
    image and the number of classes, because the patterns are dealt over all classes at once;
    image by image or for a whole dataset, the same key gives the same pixels."""
    if labels is None or not isinstance(n_classes, int) or n_classes < 2:
        raise ConfigError(f"{kind!r} noise needs each image's class and the number of classes",
                          hint="trustgain protect --method poison --poison "
                          f"{kind} takes the classes from IN_DIR's subfolders")
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1).expand(len(x))
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ConfigError(f"class labels must be in [0, {n_classes})")
    make = grating_patterns if kind == "grating" else shortcut_patterns
    pats = make(key, config, n_classes, tuple(x.shape[1:]))
    return (x + pats[y].to(x)).clamp(0, 1)


def perturb(x: torch.Tensor, *, key: bytes, config: ProtectConfig,
            surrogates: Sequence[torch.nn.Module], labels: int | Sequence[int] | None = None,
            image_id: str = "") -> torch.Tensor:
    """Per-image use (``protect(..., method="poison")``): the error-maximizing poison of
    ``x`` [B, C, H, W] against the surrogates (``targeted`` or ``untargeted``; labels default
    to the surrogates' vote), or the class-wise pattern (``grating``, ``shortcut``: labels and
    ``config.extra["n_classes"]`` required, no surrogates). ``ue`` needs a whole dataset,
    see :func:`protect_dataset`."""
    opts = options(config)
    kind = opts["poison"]
    if kind in ("shortcut", "grating"):
        return _class_pattern(x, kind, key, config, labels, config.extra.get("n_classes"))
    if kind == "ue":
        raise ConfigError(f"{kind!r} noise is made for a whole labelled dataset",
                          hint="use trustgain.protection.poison.protect_dataset")
    if not surrogates:
        raise ConfigError("the poison method needs at least one surrogate model")
    for m in surrogates:
        m.eval()
    from trustgain.protection.pgd import references

    references(surrogates, x, labels)  # the surrogates' input shape and the labels checked
    with torch.no_grad():
        logits = sum(m(x).softmax(1) for m in surrogates)
    y = logits.argmax(1) if labels is None else \
        torch.as_tensor(labels, dtype=torch.long).reshape(-1).expand(len(x))
    g = _generator(key, config, image_id)
    delta = pgd_steps(x, _objective(kind, surrogates, y, logits.shape[1], config.kappa),
                      eps=config.eps / 255, alpha=config.alpha / 255, steps=config.steps, g=g,
                      p_div=config.diversity)
    return (x + delta).clamp(0, 1)


def quantize_batch(images: np.ndarray, adv: torch.Tensor, eps: int) -> np.ndarray:
    """Float [N, C, H, W] in [0, 1] -> uint8 N x H x W x C with ``|out - images| <= eps``."""
    a = np.rint(adv.detach().double().numpy().transpose(0, 2, 3, 1) * 255.0)
    a = a.reshape(images.shape)
    base = images.astype(np.int16)
    return np.clip(np.clip(a, base - eps, base + eps), 0, 255).astype(np.uint8)


def shortcut_patterns(key: bytes, config: ProtectConfig, n_classes: int, shape: tuple[int, ...],
                      block: int = 4) -> torch.Tensor:
    """Keyed class-wise patterns [K, C, H, W] of +-eps ([0, 1] units) on ``block``-px blocks."""
    c, h, w = shape
    g = _generator(key, config, "shortcut")
    coarse = torch.randint(0, 2, (n_classes, c, -(-h // block), -(-w // block)), generator=g)
    full = coarse.repeat_interleave(block, 2).repeat_interleave(block, 3)[:, :, :h, :w]
    return (full.float() * 2 - 1) * config.eps / 255


def grating_codes(channels: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Every grating pattern [C, H, W] of +-1, in order of preference. A grating is a square
    wave of period 2, 4 or 8 px (vertical, horizontal, diagonal; at period 2 both diagonals
    are the same checkerboard, kept once) times a sign per channel: for RGB the three
    colour-opponent vectors (one channel against the other two) and luminance (+,+,+), each up
    to a global sign, which a shift or flip of the image flips anyway. Order: colour-opponent
    before luminance and high frequencies before lower ones (period 2 and 4 opponent, then
    period 2 and 4 luminance, then period 8), because natural photos carry the least energy
    there, so the pattern stands out; a measured choice (opponent first gave a fresh-CNN
    accuracy of 0.351 against 0.381 for a mixed order, 9 trainings each)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    lum = [(1.0,) * channels]
    opp = [] if channels == 1 else [tuple(-1.0 if i == j else 1.0 for i in range(channels))
                                    for j in range(channels)]

    def codes(period: int, signs: list[tuple[float, ...]]) -> list[np.ndarray]:
        orients = (xx, yy, xx + yy) if period == 2 else (xx, yy, xx + yy, xx - yy)
        waves = [np.where((t % period) < period / 2, 1.0, -1.0) for t in orients]
        return [np.stack([wave * s for s in sign]) for wave in waves for sign in signs]

    order = [(2, opp), (4, opp), (2, lum), (4, lum), (8, opp), (8, lum)]
    return [c for period, signs in order for c in codes(period, signs)]


def grating_patterns(key: bytes, config: ProtectConfig, n_classes: int,
                     shape: tuple[int, ...]) -> torch.Tensor:
    """Keyed class-wise gratings [K, C, H, W] of +-eps ([0, 1] units): the first ``K`` codes
    of :func:`grating_codes`, dealt to the classes in a keyed order."""
    c, h, w = shape
    codes = grating_codes(c, (h, w))
    if n_classes > len(codes):
        raise ConfigError(f"the grating poison has {len(codes)} patterns for {c}-channel "
                          f"images, the dataset has {n_classes} classes",
                          hint="use poison='shortcut' (one random pattern per class)")
    order = torch.randperm(n_classes, generator=_generator(key, config, "grating"))
    pats = np.stack([codes[int(i)] for i in order])
    return torch.from_numpy(pats).float() * config.eps / 255


def _train_crafting(images: np.ndarray, labels: np.ndarray, opts: dict[str, Any],
                    seed: int) -> list[torch.nn.Module]:
    from trustgain.protection import surrogates as sg

    return [sg.train(arch, images, labels, epochs=int(opts["crafting_epochs"]), seed=seed + i)
            for i, arch in enumerate(opts["crafting_archs"])]


def _check_dataset(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise InputError("images must be a uint8 array N x H x W [x C]")
    if images.ndim == 4 and images.shape[3] not in (1, 3):
        raise InputError(f"images have {images.shape[3]} channels; 1 (grayscale) or 3 (RGB) "
                         "are protected (flatten alpha, convert CMYK to RGB first)")
    if len(images) == 0:
        raise InputError("the dataset is empty")
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be {len(images)} integers, got shape {labels.shape}")
    if labels.min() < 0:
        raise InputError("labels must be non-negative class indices")
    return images, labels.astype(np.int64)


def protect_dataset(images: np.ndarray, labels: np.ndarray, *, key: bytes,
                    config: ProtectConfig, surrogates: Sequence[torch.nn.Module] | None = None,
                    batch: int = 128, progress: bool = False) -> np.ndarray:
    """Protected copy of a labelled dataset (uint8 N x H x W [x C]) for training-time
    protection. Without ``surrogates``, crafting models are trained here on the clean data
    (not needed for ``ue``, which trains its own)."""
    from tqdm import tqdm

    from trustgain.protection import surrogates as sg

    images, labels = _check_dataset(images, labels)
    opts = options(config)
    eps, alpha = config.eps / 255, config.alpha / 255
    if opts["poison"] == "ue":
        from trustgain.protection.unlearnable import error_minimizing

        delta = error_minimizing(images, labels, eps=eps, alpha=alpha, steps=config.steps,
                                 rounds=int(opts["ue_rounds"]), arch=str(opts["ue_arch"]),
                                 g=_generator(key, config, "ue"), progress=progress)
        return quantize_batch(images, sg.to_tensor(images) + delta, config.eps)
    if opts["poison"] in ("shortcut", "grating"):
        out = _class_pattern(sg.to_tensor(images), opts["poison"], key, config, labels,
                             int(labels.max()) + 1)
        return quantize_batch(images, out, config.eps)
    models = list(surrogates) if surrogates else _train_crafting(images, labels, opts,
                                                                 config.seed)
    for m in models:
        m.eval()
        m.requires_grad_(False)
    n_classes = int(labels.max()) + 1
    x = sg.to_tensor(images)
    y = torch.from_numpy(labels)
    g = _generator(key, config, "dataset")
    out = torch.empty_like(x)
    for i in tqdm(range(0, len(x), batch), disable=not progress, desc="poison", leave=False):
        xb, yb = x[i:i + batch], y[i:i + batch]
        obj = _objective(opts["poison"], models, yb, n_classes, config.kappa)
        out[i:i + batch] = xb + pgd_steps(xb, obj, eps=eps, alpha=alpha, steps=config.steps,
                                          g=g, p_div=config.diversity)
    return quantize_batch(images, out, config.eps)
