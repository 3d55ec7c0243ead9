"""Small 32x32 image classifiers: the surrogates' architectures and the held-out families the
protection bench measures transfer to.

Plain ``torch.nn`` definitions: no maintained package ships small 32x32 classifiers without
pulling torchvision (which this project cannot install) or a hub download (``timm``'s
weights). Each is the family's usual shape scaled down to train in about a minute on 2 CPU
cores: ``cnn``, ``wide`` and ``narrow`` are plain conv nets (``narrow``: 5x5 stem, average
pooling, 16-32-32 channels, the research note's "narrower CNN"), ``resnet`` has residual
blocks (He et al.), ``vgg`` stacks pairs of 3x3 convolutions (Simonyan & Zisserman),
``mobile`` uses depthwise-separable inverted residuals (MobileNetV2, Sandler et al.), ``vit``
is a 4x4-patch vision transformer (Dosovitskiy et al.) built on ``nn.TransformerEncoder``,
``mlp`` sees raw pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trustgain.errors import ConfigError

ARCHS = ("cnn", "wide", "resnet", "mlp", "narrow", "vgg", "mobile", "vit")


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = (nn.Sequential() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class _Inverted(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        mid = c_in * expand
        self.body = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU6(), nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class _ViT(nn.Module):
    """4x4 patches of a 32x32 image -> 64 tokens + class token, pre-norm encoder, linear head."""

    def __init__(self, n_classes: int, channels: int, dim: int = 96, depth: int = 4,
                 heads: int = 4, patch: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (32 // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        return self.head(self.norm(self.encoder(tokens))[:, 0])


def make_net(arch: str, n_classes: int, channels: int = 3) -> nn.Module:
    """An untrained network of one of :data:`ARCHS` for 32x32 inputs."""
    if arch == "cnn":
        return nn.Sequential(*_conv(channels, 32), nn.MaxPool2d(2), *_conv(32, 64),
                             nn.MaxPool2d(2), *_conv(64, 64), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(64, n_classes))
    if arch == "wide":
        return nn.Sequential(*_conv(channels, 64), nn.MaxPool2d(2), *_conv(64, 96),
                             nn.MaxPool2d(2), *_conv(96, 128), nn.AdaptiveMaxPool2d(1),
                             nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, n_classes))
    if arch == "resnet":
        return nn.Sequential(nn.Conv2d(channels, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
                             nn.ReLU(), _Block(32, 32, 1), _Block(32, 64, 2), _Block(64, 64, 1),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n_classes))
    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(channels * 32 * 32, 256), nn.ReLU(),
                             nn.Dropout(0.2), nn.Linear(256, 128), nn.ReLU(),
                             nn.Linear(128, n_classes))
    if arch == "narrow":
        return nn.Sequential(nn.Conv2d(channels, 16, 5, padding=2), nn.BatchNorm2d(16),
                             nn.ReLU(), nn.AvgPool2d(2), *_conv(16, 32), nn.AvgPool2d(2),
                             *_conv(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(32, n_classes))
    if arch == "vgg":
        return nn.Sequential(*_conv(channels, 32), *_conv(32, 32), nn.MaxPool2d(2),
                             *_conv(32, 64), *_conv(64, 64), nn.MaxPool2d(2),
                             *_conv(64, 128), *_conv(128, 128), nn.MaxPool2d(2),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                             nn.Linear(128, n_classes))
    if arch == "mobile":
        return nn.Sequential(nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                             nn.ReLU6(), _Inverted(16, 24, 2), _Inverted(24, 24, 1),
                             _Inverted(24, 48, 2), _Inverted(48, 48, 1), _Inverted(48, 64, 2),
                             nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n_classes))
    if arch == "vit":
        return _ViT(n_classes, channels)
    raise ConfigError(f"unknown surrogate architecture {arch!r}; known: {', '.join(ARCHS)}")
