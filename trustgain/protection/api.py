"""Library entry points: :func:`protect`, :func:`recover`, :func:`self_recover`.

``protect`` perturbs an image against unauthorized classifiers (the surrogates) within an
L-infinity budget in pixel units, rounds to uint8 with the budget enforced exactly, and seals
the residual ``original - protected`` (see :mod:`trustgain.protection.residual`), so a key
holder recovers the original bit for bit. Method ``"pgd"`` lives in
:mod:`trustgain.protection.pgd`; any other method ``m`` is the module
``trustgain.protection.m`` exposing ``perturb(x, *, key, config, surrogates) -> x_adv``.
"""

from __future__ import annotations

import importlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustgain.errors import ConfigError, InputError

#: Transformations the PGD core can average over (expectation over transformation).
EOT_TRANSFORMS = ("jpeg", "blur", "resize", "noise")


@dataclass(frozen=True)
class ProtectConfig:
    """How to protect. Budgets are integers in pixel units (0..255), never fractions.

    - ``method``: ``"pgd"`` (this package), ``"ddpm"`` or ``"poison"`` (their modules).
    - ``eps``: L-infinity budget; ``|protected - original| <= eps`` holds exactly in uint8.
    - ``steps`` / ``step_size``: PGD iterations and step (pixel units; 0 = ``2.5 * eps / steps``,
      the Madry et al. rule).
    - ``momentum``: MI-FGSM decay (0 turns momentum off).
    - ``diversity``: probability of DI-FGSM random resize-and-pad per step (0 = off).
    - ``eot``: transformations averaged over each step, a subset of :data:`EOT_TRANSFORMS`;
      ``eot_samples`` draws per step.
    - ``kappa``: CW margin: the loss stops pushing once the wrong class leads by ``kappa``.
    - ``block``: one perturbation value per ``block x block`` pixels (2 by default: a
      low-frequency perturbation that survives blur/JPEG better and whose residual compresses
      to under 1 bit per subpixel at 8/255; 1 = per-pixel PGD).
    - ``smooth``: TI-FGSM (Dong et al., arXiv 1904.02884): the gradient is blurred by a
      Gaussian of this sigma (in perturbation cells, i.e. ``block`` pixels each) before its
      sign is taken, which smooths the perturbation (0 = off). On the bench's patches at
      sigma 1 it raised SSIM from 0.884 to 0.921 at the same PSNR, shrank the residual from
      0.84 to 0.66 bits per subpixel and moved transfer by a few points (BENCHMARKS.md,
      protection, tenth pass): 1 by default.
    - ``linear_backprop``: LinBP (Guo et al., arXiv 2012.03528): in each convolutional
      surrogate the ReLUs after the first this many pass gradients as the identity (forward
      unchanged), for better transfer to unseen models; ``None`` = off. 1 by default: on
      the bench's patches it lifted transfer to the held-out logistic regression from 68.5%
      to 79.8% (BENCHMARKS.md, protection, eleventh pass).
    - ``weights``: one loss weight per surrogate, in the order the surrogates are given
      (``None`` = all 1). Losses of different kinds differ in scale (a VAE encoder's latent
      distance next to a classifier's margin), and a weak member of an ensemble can be
      weighted up (Liu et al., arXiv 1611.02770, weight their ensemble's members). On the
      bench's patches, weighting the MLP x2 (with ``linear_backprop=2``) moved transfer within
      the spread between trainings of the same held-out model, so the default stays all 1
      (BENCHMARKS.md, protection, thirteenth pass).
    - ``seed``: seeds the random start and transformations (with the image id), so a run is
      reproducible.
    """

    method: str = "pgd"
    eps: int = 8
    steps: int = 20
    step_size: float = 0.0
    momentum: float = 1.0
    diversity: float = 0.5
    eot: tuple[str, ...] = ("jpeg", "blur", "resize", "noise")
    eot_samples: int = 1
    kappa: float = 5.0
    random_start: bool = True
    block: int = 2
    smooth: float = 1.0
    linear_backprop: int | None = 1
    weights: tuple[float, ...] | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.method):
            raise ConfigError(f"protection method {self.method!r} is not a method name")
        if isinstance(self.eps, bool) or not isinstance(self.eps, int) or not 1 <= self.eps <= 64:
            raise ConfigError(
                f"eps must be an integer in [1, 64] pixel units, got {self.eps!r}",
                hint="8 means 8/255; budgets on a [-1, 1] scale are twice as large in pixels",
            )
        if not isinstance(self.steps, int) or not 0 <= self.steps <= 10_000:
            raise ConfigError(f"steps must be an integer in [0, 10000], got {self.steps!r}")
        if not 0 <= self.step_size <= 255:
            raise ConfigError(f"step_size must be in [0, 255] pixel units, got {self.step_size}")
        if not 0 <= self.momentum <= 10 or not 0 <= self.diversity <= 1:
            raise ConfigError("momentum must be in [0, 10] and diversity in [0, 1]")
        object.__setattr__(self, "eot", tuple(self.eot))
        unknown = set(self.eot) - set(EOT_TRANSFORMS)
        if unknown:
            raise ConfigError(
                f"unknown EoT transform(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(EOT_TRANSFORMS)}"
            )
        if not 1 <= self.block <= 16:
            raise ConfigError(f"block must be in [1, 16] pixels, got {self.block!r}")
        if not 0 <= self.smooth <= 8:
            raise ConfigError(f"smooth must be a sigma in [0, 8] cells, got {self.smooth!r}")
        if self.linear_backprop is not None and (
                isinstance(self.linear_backprop, bool) or not isinstance(self.linear_backprop, int)
                or not 0 <= self.linear_backprop <= 64):
            raise ConfigError("linear_backprop must be None (off) or an integer in [0, 64] "
                              f"(ReLUs kept), got {self.linear_backprop!r}")
        if self.weights is not None:
            try:
                if isinstance(self.weights, str | bytes):
                    raise TypeError
                object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
            except (TypeError, ValueError):
                raise ConfigError(f"weights must be a sequence of numbers, got {self.weights!r}"
                                  ) from None
            if (not self.weights or not all(math.isfinite(w) and w >= 0 for w in self.weights)
                    or not any(self.weights)):
                raise ConfigError("weights must be None or finite non-negative numbers, one "
                                  f"per surrogate, not all zero; got {self.weights!r}")
        if not 1 <= self.eot_samples <= 64 or self.kappa < 0:
            raise ConfigError("eot_samples must be in [1, 64] and kappa >= 0")

    @property
    def alpha(self) -> float:
        """The step size in pixel units."""
        return self.step_size or 2.5 * self.eps / max(self.steps, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eot"] = list(self.eot)
        if self.weights is None:  # absent, as in manifests written before the field existed,
            del d["weights"]      # so a batch started then still resumes
        else:
            d["weights"] = list(self.weights)
        return d


def as_tensor(image: np.ndarray) -> tuple[torch.Tensor, tuple[int, ...]]:
    """uint8 HxW / HxWxC (C = 1 or 3) -> float tensor [1, C, H, W] in [0, 1], and the shape."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InputError(
            "image must be a uint8 numpy array", hint="use np.asarray(PIL.Image.open(path))"
        )
    if image.ndim == 2:
        chw = image[None]
    elif image.ndim == 3 and image.shape[2] in (1, 3):
        chw = image.transpose(2, 0, 1)
    else:
        raise InputError(f"image shape {image.shape} is not HxW, HxWx1 or HxWx3")
    if min(image.shape[:2]) < 8:
        raise InputError(f"image {image.shape[1]}x{image.shape[0]} is smaller than 8x8")
    if max(image.shape[:2]) > 65535:  # the residual's header stores each side in 16 bits
        raise InputError(f"image {image.shape[1]}x{image.shape[0]} has a side over 65535 px")
    x = torch.from_numpy(np.array(chw, dtype=np.float32)).div(255.0)[None]
    return x, image.shape


def quantize(x: np.ndarray, x_adv: torch.Tensor, eps: int) -> np.ndarray:
    """Round the perturbed image to uint8 with ``|result - x| <= eps`` exactly (x: uint8)."""
    adv = x_adv.detach().to("cpu", torch.float64)[0].numpy() * 255.0
    adv = adv.transpose(1, 2, 0).reshape(x.shape) if x.ndim == 3 else adv[0]
    base = x.astype(np.int16)
    out = np.clip(np.rint(adv), base - eps, base + eps)
    return np.clip(out, 0, 255).astype(np.uint8)


def _perturb(x: torch.Tensor, *, key: bytes, config: ProtectConfig,
             surrogates: Sequence[torch.nn.Module], labels: int | Sequence[int] | None,
             image_id: str | Sequence[str]) -> torch.Tensor:
    if config.method == "pgd":
        from trustgain.protection import pgd

        return pgd.perturb(x, key=key, config=config, surrogates=surrogates, labels=labels,
                           image_id=image_id)
    try:
        module = importlib.import_module(f"trustgain.protection.{config.method}")
    except ModuleNotFoundError as exc:
        if exc.name != f"trustgain.protection.{config.method}":
            raise
        raise ConfigError(f"unknown protection method {config.method!r}",
                          hint="methods: pgd, ddpm, poison") from None
    fn = getattr(module, "perturb", None)
    if fn is None:
        raise ConfigError(f"protection method {config.method!r} has no perturb()")
    return fn(x, key=key, config=config, surrogates=surrogates, labels=labels, image_id=image_id)


def protect(image: np.ndarray, *, key: bytes, config: ProtectConfig,
            surrogates: Sequence[torch.nn.Module], image_id: str,
            labels: int | None = None) -> tuple[np.ndarray, bytes]:
    """Protect ``image``; return ``(protected uint8 same shape, sealed residual bytes)``.

    ``key`` (32 bytes, e.g. ``keyring.derive("protect.rae", "residual").material``) seals the
    residual; ``labels`` is the true class if known (else the surrogates' prediction is used).
    """
    return protect_batch([image], key=key, config=config, surrogates=surrogates,
                         image_ids=[image_id], labels=None if labels is None else [labels])[0]


def protect_batch(images: Sequence[np.ndarray], *, key: bytes, config: ProtectConfig,
                  surrogates: Sequence[torch.nn.Module], image_ids: Sequence[str],
                  labels: Sequence[int] | None = None, batch_size: int = 32,
                  ) -> list[tuple[np.ndarray, bytes]]:
    """:func:`protect` for several images, ``batch_size`` images of one shape per forward pass.

    For ``pgd`` each image draws its noise from its own id (see
    :func:`trustgain.protection.pgd.perturb`), so an image's result does not depend on its
    batch beyond floating-point rounding in batched convolutions; the batch amortises the
    per-call overhead of the surrogates (about 2x fewer ms per 32x32 image at 32 per batch).
    Other methods run image by image. Every image is checked before any work; a bad one
    raises :class:`~trustgain.errors.InputError` naming its id.
    """
    from trustgain.protection import residual

    residual.check_key(key)
    if not surrogates and config.method == "pgd":
        raise ConfigError("pgd protection needs at least one surrogate model",
                          hint="see trustgain.protection.surrogates")
    if len(image_ids) != len(images) or (labels is not None and len(labels) != len(images)):
        raise InputError(f"{len(images)} images need as many image ids (and labels, if given)")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
    bad = [i for i in image_ids if not isinstance(i, str)]
    if bad:
        raise TypeError(f"image ids must be strings, got {bad[0]!r}")
    tensors = []
    for image, image_id in zip(images, image_ids, strict=True):
        try:
            tensors.append(as_tensor(image)[0])
        except InputError as exc:
            raise InputError(f"{image_id}: {exc}", hint=exc.hint) from None
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    out: list[tuple[np.ndarray, bytes] | None] = [None] * len(images)
    for members in groups.values():
        for lo in range(0, len(members), batch_size):
            chunk = members[lo:lo + batch_size]
            x = torch.cat([tensors[i] for i in chunk])
            lab = None if labels is None else [labels[i] for i in chunk]
            if config.method == "pgd":  # batched, each image's draws from its own id
                x_adv = _perturb(x, key=key, config=config, surrogates=surrogates, labels=lab,
                                 image_id=[image_ids[i] for i in chunk])
            else:
                x_adv = torch.cat([
                    _perturb(x[j:j + 1], key=key, config=config, surrogates=surrogates,
                             labels=None if lab is None else lab[j], image_id=image_ids[i])
                    for j, i in enumerate(chunk)])
            if x_adv.shape != x.shape:
                raise ConfigError(f"method {config.method!r} returned shape "
                                  f"{tuple(x_adv.shape)}, expected {tuple(x.shape)}")
            for j, i in enumerate(chunk):
                protected = quantize(images[i], x_adv[j:j + 1], config.eps)
                sealed = residual.seal(images[i], protected, key=key, image_id=image_ids[i],
                                       method=config.method, eps=config.eps)
                out[i] = (protected, sealed)
    return [o for o in out if o is not None]


def recover(protected: np.ndarray, residual: bytes | str | os.PathLike[str], *, key: bytes,
            lenient: bool = False) -> np.ndarray:
    """The original image from ``protected`` and its sealed ``residual`` (bit-exact).

    ``residual``: the sealed bytes, or a file holding them (a ``.rae`` sidecar, or a PNG
    written by :func:`trustgain.protection.residual.save` that carries them in its chunk).
    Refuses (:class:`~trustgain.protection.residual.RecoveryError`) on a wrong key or any
    modification; with ``lenient=True`` a modified (e.g. re-encoded) protected image of the
    right shape gets the residual applied anyway, with a warning.
    """
    from trustgain.protection import residual as _residual

    if isinstance(residual, str | os.PathLike):
        path = Path(residual)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read residual {path}: {exc.strerror}") from None
        if data.startswith(b"\x89PNG"):
            _, sealed = _residual.from_png(data)
            if sealed is None:
                raise _residual.RecoveryError(f"{path} carries no residual chunk")
            data = sealed
        residual = data
    elif isinstance(residual, memoryview):
        residual = residual.tobytes()
    elif not isinstance(residual, bytes | bytearray):
        raise TypeError("residual must be the sealed bytes or a path to a .rae or PNG file, "
                        f"not {type(residual).__name__}")
    return _residual.open_and_apply(protected, residual, key=key, lenient=lenient)


def self_recover(*args: Any, **kwargs: Any) -> Any:
    """DDPM-mode self-recovery without the residual (see :mod:`trustgain.protection.ddpm`)."""
    try:
        from trustgain.protection.ddpm import self_recover as _self_recover
    except ImportError as exc:
        raise ConfigError("self-recovery needs the ddpm protection mode, "
                          f"which is unavailable here ({exc})") from None
    return _self_recover(*args, **kwargs)
