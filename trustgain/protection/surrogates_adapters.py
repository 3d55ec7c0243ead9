"""Surrogate adapters: any torch classifier, the embedded digits judge, a diffusers VAE encoder
or a transformers image classifier as a ``torch.nn.Module`` taking ``[B, C, H, W]`` floats in
[0, 1] (normalisation and resizing inside), and :func:`wrap` for the nets trained here.

Part of :mod:`trustgain.protection.surrogates`, which re-exports its public names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable resize to ``size`` x ``size``: area averaging when shrinking (fast
    backward, no aliasing), bilinear when enlarging."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if min(x.shape[-2:]) >= size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class Classifier(nn.Module):
    """Wrap a torch classifier: [0, 1] images in, logits out.

    ``mean``/``std`` normalise per channel; ``size`` resizes (area/bilinear, differentiable) to
    what the net was trained on; ``channels`` converts 1 <-> 3 channels.
    """

    def __init__(self, net: nn.Module, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, size: int | None = None,
                 channels: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.size = size
        self.channels = channels
        m = torch.tensor(mean if mean is not None else [0.0]).view(1, -1, 1, 1)
        s = torch.tensor(std if std is not None else [1.0]).view(1, -1, 1, 1)
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif self.channels == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if self.size is not None:
            x = resize(x, self.size)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(x))


class JudgeSurrogate(nn.Module):
    """The embedded digits judge as a surrogate: RGB in [0, 1] -> ink map (max over RGB)."""

    def __init__(self, judge: nn.Module | None = None) -> None:
        super().__init__()
        if judge is None:
            from trustgain.models import load_judge

            judge = load_judge()
        self.judge = judge
        self.size = int(getattr(judge, "config", {}).get("image_size", 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.judge(resize(x[:, :3].amax(1, keepdim=True), self.size))


class FeatureSurrogate(nn.Module):
    """Base for non-classifier surrogates: PGD maximises ``adv_loss(x, reference(x_clean))``."""

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    @torch.no_grad()
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).detach()

    def adv_loss(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Squared distance of the features from the clean ones (PhotoGuard, untargeted)."""
        return (self.features(x) - ref).pow(2).flatten(1).sum(1).sum()


class VAEEncoderSurrogate(FeatureSurrogate):
    """A diffusers ``AutoencoderKL`` encoder: push the latent mean away from the clean one."""

    def __init__(self, vae: nn.Module, *, size: int | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.size = size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.size is not None:
            x = resize(x, self.size)
        return self.vae.encode(x * 2 - 1).latent_dist.mean


class HFImageClassifier(Classifier):
    """A transformers image-classification model (``...ForImageClassification``)."""

    def __init__(self, model: nn.Module, *, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), size: int | None = None) -> None:
        cfg = getattr(model, "config", None)
        size = size or getattr(cfg, "image_size", None)
        super().__init__(model, mean=mean, std=std, size=size,
                         channels=getattr(cfg, "num_channels", 3))

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> HFImageClassifier:
        """Load model and its image processor's normalisation (local folders or the hub)."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs).eval()
        try:
            proc = AutoImageProcessor.from_pretrained(name_or_path)
            mean, std = proc.image_mean, proc.image_std
        except (OSError, ValueError):
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        return cls(model, mean=mean, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=self.prepare(x)).logits


def wrap(arch: str, net: nn.Module, channels: int = 3) -> Classifier:
    """The trained net as a [0, 1]-input surrogate (normalisation, resize to 32)."""
    return Classifier(net, mean=[0.5] * channels, std=[0.25] * channels, size=32,
                      channels=channels).eval()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C -> float [N, C, H, W] in [0, 1]."""
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255
