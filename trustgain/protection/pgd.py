"""L-infinity PGD against an ensemble of surrogates, with the usual transfer boosters.

The core (:func:`attack`) is about forty lines, written here rather than taken from
torchattacks or ART because it combines, in one loop, pieces those libraries ship only as
separate attacks: a CW margin loss (Carlini & Wagner, arXiv 1608.04644) summed over an
ensemble, momentum (MI-FGSM, Dong et al., arXiv 1710.06081), input diversity (DI-FGSM, Xie et
al., arXiv 1803.06978) and expectation over transformation (Athalye et al., arXiv 1707.07397)
with a straight-through real JPEG (BPDA), Gaussian blur, resize and noise. It also accepts
non-classifier surrogates (e.g. a VAE encoder, PhotoGuard's encoder attack, arXiv 2302.06588)
through :class:`~trustgain.protection.surrogates.FeatureSurrogate`'s ``reference``/
``adv_loss``. torchattacks' PGD is the cross-check (tests) and the peer (benchmark).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from trustgain.errors import ConfigError, InputError
from trustgain.protection.fused import for_attack

if TYPE_CHECKING:
    from trustgain.protection.api import ProtectConfig


def margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float) -> torch.Tensor:
    """CW margin: best wrong logit minus true logit, capped at ``kappa`` (summed over a batch)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - true).clamp(max=kappa).sum()


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip (Pillow) with a straight-through gradient."""
    from PIL import Image

    out = []
    for img in x.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy():
        arr = img.transpose(1, 2, 0)
        pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        dec = np.asarray(Image.open(buf), dtype=np.float32).reshape(arr.shape) / 255.0
        out.append(torch.from_numpy(dec.transpose(2, 0, 1).copy()))
    return x + (torch.stack(out).to(x) - x).detach()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, differentiable, reflect padding (replicate where the image is
    smaller than the kernel's radius, which reflect cannot pad)."""
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect" if r < min(x.shape[-2:]) else "replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def transform(x: torch.Tensor, name: str, g: torch.Generator,
              gens: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """One random draw of the EoT transformation ``name``: its strength from ``g`` (shared
    by the batch), its noise pixels from each image's own generator in ``gens`` if given."""
    u = float(torch.rand((), generator=g))
    h, w = x.shape[-2:]
    if name == "jpeg":
        return _jpeg(x, int(50 + 40 * u))
    if name == "blur":
        return gaussian_blur(x, 0.4 + 0.8 * u)
    if name == "resize":
        s = 0.5 + 0.5 * u
        small = F.interpolate(x, size=(max(4, round(h * s)), max(4, round(w * s))),
                              mode="bilinear", align_corners=False, antialias=True)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    if name == "noise":
        return (x + _randn(x.shape, g, gens).to(x) * (2 + 6 * u) / 255).clamp(0, 1)
    raise ValueError(f"unknown transform {name!r}")


def _randn(shape: Sequence[int], g: torch.Generator,
           gens: Sequence[torch.Generator] | None) -> torch.Tensor:
    if gens is None:
        return torch.randn(tuple(shape), generator=g)
    return torch.cat([torch.randn((1, *shape[1:]), generator=gi) for gi in gens])


def _rand(shape: Sequence[int], g: torch.Generator,
          gens: Sequence[torch.Generator] | None) -> torch.Tensor:
    if gens is None:
        return torch.rand(tuple(shape), generator=g)
    return torch.cat([torch.rand((1, *shape[1:]), generator=gi) for gi in gens])


def diversity(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """DI-FGSM: shrink by up to 10% and pad back at a random offset (same size out)."""
    h, w = x.shape[-2:]
    nh, nw = (int(h - torch.randint(0, max(1, h // 10) + 1, (), generator=g)),
              int(w - torch.randint(0, max(1, w // 10) + 1, (), generator=g)))
    small = F.interpolate(x, size=(nh, nw), mode="nearest")
    top, left = int(torch.randint(0, h - nh + 1, (), generator=g)), int(
        torch.randint(0, w - nw + 1, (), generator=g))
    return F.pad(small, (left, w - nw - left, top, h - nh - top))


def _loss(model: torch.nn.Module, xt: torch.Tensor, ref: Any, kappa: float) -> torch.Tensor:
    if hasattr(model, "adv_loss"):
        return model.adv_loss(xt, ref)
    return margin_loss(model(xt), ref, kappa)


def _forward(i: int, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A classifier surrogate's logits on ``x``, or a one-line ConfigError if it cannot take
    ``x`` (e.g. a 3-channel net given a grayscale image, or a fixed-size net another size)."""
    try:
        out = model(x)
    except RuntimeError as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"surrogate {i} ({type(model).__name__}) cannot take images of shape "
            f"{tuple(x.shape)}: {why}",
            hint="wrap it in trustgain.protection.surrogates.Classifier(net, channels=..., "
                 "size=...) to convert channels and size") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ConfigError(f"surrogate {i} ({type(model).__name__}) must return logits of "
                          f"shape [batch, classes], got {getattr(out, 'shape', type(out))}")
    return out


@torch.no_grad()
def references(models: Sequence[torch.nn.Module], x: torch.Tensor,
               labels: int | Sequence[int] | torch.Tensor | None) -> list[Any]:
    """Per surrogate: the class to move away from (given labels, one per image or one for
    all, else the ensemble's vote), or the clean features for feature surrogates. Puts the
    surrogates in eval mode."""
    for m in models:
        m.eval()
    if labels is not None:
        try:
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"labels must be class indices (integers), got {labels!r}"
                             ) from None
        if len(labels) == 1 and len(x) > 1:
            labels = labels.expand(len(x))
    classifiers = [m for m in models if not hasattr(m, "adv_loss")]
    logits = [_forward(i, m, x) for i, m in enumerate(models) if not hasattr(m, "adv_loss")]
    if labels is not None:
        for m, out in zip(classifiers, logits, strict=True):
            if labels.min() < 0 or labels.max() >= out.shape[1]:
                raise InputError(f"labels {labels.tolist()} are not classes of surrogate "
                                 f"{type(m).__name__}, which has {out.shape[1]}")
    if labels is None and classifiers:
        labels = sum(out.softmax(1) for out in logits).argmax(1)
    return [m.reference(x) if hasattr(m, "adv_loss") else labels for m in models]


def attack(x: torch.Tensor, models: Sequence[torch.nn.Module], refs: Sequence[Any], *,
           eps: float, alpha: float, steps: int, momentum: float, p_div: float,
           eot: Sequence[str], samples: int, kappa: float, g: torch.Generator,
           random_start: bool = True, block: int = 1, smooth: float = 0.0,
           gens: Sequence[torch.Generator] | None = None,
           weights: Sequence[float] | None = None) -> torch.Tensor:
    """The PGD loop on [0, 1] images; ``eps``/``alpha`` in [0, 1] units. Returns x_adv.

    Randomness: ``g`` draws what the batch shares (which transformation, its strength, the
    diversity crop); ``gens``, one generator per image, draws the per-pixel noise (random
    start, noise transformation). With ``gens`` an image's draws do not depend on which other
    images share its batch, so batching changes results only by floating-point rounding.

    ``block`` > 1 optimises one value per ``block x block`` pixels (a low-frequency
    perturbation: it survives blur/JPEG better and its residual compresses ``block**2``-fold).
    ``smooth`` > 0 blurs each gradient with a Gaussian of that sigma (cells) before the
    sign step (TI-FGSM, translation-invariant attack). ``weights`` scales each model's loss
    (``None`` = all 1).
    """
    h, w = x.shape[-2:]
    shape = (*x.shape[:2], -(-h // block), -(-w // block))
    if gens is not None and len(gens) != x.shape[0]:
        raise ValueError(f"{len(gens)} generators for a batch of {x.shape[0]}")
    weights = [1.0] * len(models) if weights is None else list(weights)
    if len(weights) != len(models):
        raise ValueError(f"{len(weights)} weights for {len(models)} models")
    delta = (_rand(shape, g, gens) * 2 - 1).to(x) * eps if random_start else \
        x.new_zeros(shape)
    velocity = torch.zeros_like(delta)
    for _ in range(steps):
        delta.requires_grad_(True)
        xa = (x + _up(delta, block, h, w)).clamp(0, 1)
        loss = xa.new_zeros(())
        for _s in range(samples):
            xt = xa
            if eot:
                xt = transform(xt, eot[int(torch.randint(0, len(eot), (), generator=g))], g,
                               gens)
            if p_div and float(torch.rand((), generator=g)) < p_div:
                xt = diversity(xt, g)
            for model, ref, weight in zip(models, refs, weights, strict=True):
                if weight:
                    loss = loss + weight * _loss(model, xt, ref, kappa)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if smooth:
                grad = gaussian_blur(grad, smooth)
            if momentum:
                norm = grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                velocity = momentum * velocity + grad / norm
                grad = velocity
            delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
            if block == 1:  # project onto the valid image range too (as torchattacks does)
                delta = (x + delta).clamp(0, 1) - x
    return (x + _up(delta, block, h, w)).clamp(0, 1).detach()


def _up(delta: torch.Tensor, block: int, h: int, w: int) -> torch.Tensor:
    if block == 1:
        return delta
    return delta.repeat_interleave(block, 2).repeat_interleave(block, 3)[..., :h, :w]


def seed_for(config: ProtectConfig, image_id: str) -> int:
    digest = hashlib.sha256(f"trustgain/pgd/{config.seed}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def perturb(x: torch.Tensor, *, key: bytes, config: ProtectConfig,
            surrogates: Sequence[torch.nn.Module], labels: int | Sequence[int] | None = None,
            image_id: str | Sequence[str] = "") -> torch.Tensor:
    """Method ``"pgd"``: ``x`` [B, C, H, W] in [0, 1] -> adversarial images, same shape.

    ``key`` is unused: randomness comes from ``config.seed`` and ``image_id`` so runs repeat.
    ``image_id`` one string: one generator for the whole batch. A sequence of B ids: each
    image's noise from its own id, and the transformation schedule from ``config.seed``
    alone, so an image gets the same draws whichever batch it is in (what
    :func:`trustgain.protection.api.protect_batch` uses).
    """
    del key
    if config.weights is not None and len(config.weights) != len(surrogates):
        raise ConfigError(f"config.weights has {len(config.weights)} entries for "
                          f"{len(surrogates)} surrogates; give one weight per surrogate")
    refs = references(surrogates, x, labels)
    gens = None
    if isinstance(image_id, str):
        g = torch.Generator().manual_seed(seed_for(config, image_id))
    else:
        ids = list(image_id)
        if len(ids) != x.shape[0]:
            raise ValueError(f"{len(ids)} image ids for a batch of {x.shape[0]}")
        g = torch.Generator().manual_seed(seed_for(config, "\0schedule"))
        gens = [torch.Generator().manual_seed(seed_for(config, i)) for i in ids]
    models = for_attack(surrogates, linear_backprop=config.linear_backprop)
    return attack(x, models, refs, eps=config.eps / 255, alpha=config.alpha / 255,
                  steps=config.steps, momentum=config.momentum, p_div=config.diversity,
                  eot=config.eot, samples=config.eot_samples, kappa=config.kappa, g=g,
                  random_start=config.random_start, block=config.block,
                  smooth=config.smooth, gens=gens, weights=config.weights)
