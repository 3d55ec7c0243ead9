"""The pixel DDPM itself: the small ``UNet2DModel`` and cosine ``DDPMScheduler`` that
:func:`~trustgain.protection.pixel_ddpm_train.train_ddpm` trains, and :func:`load_ddpm`, which
loads a saved folder as a :class:`PixelDDPM`.

Part of :mod:`trustgain.protection.pixel_ddpm`, which re-exports its public names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trustgain.errors import InputError, TrustgainError
from trustgain.protection.pixel_ddpm_output import TRAINING_NAME


@dataclass(frozen=True)
class PixelDDPM:
    """A loaded pixel DDPM: the noise predictor, the cumulative alphas and the training limit."""

    unet: Any  # diffusers.UNet2DModel, eval mode, no grad on its parameters
    alphas_cumprod: torch.Tensor  # (T,) float64
    max_timestep: int  # highest timestep seen in training (T - 1 for a full model)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def size(self) -> int:
        return int(self.unet.config.sample_size)


def build_unet(*, channels: int, size: int, width: int = 16) -> Any:
    """The small UNet: widths (w, 2w, 4w), one ResNet block per level, no attention.

    ``size`` must be a positive multiple of 4 (two halvings), ``width`` a positive multiple of
    4 (group norm uses 8 groups when ``width`` is a multiple of 8, else 4)."""
    from diffusers import UNet2DModel

    if size < 4 or size % 4:
        raise TrustgainError(f"size must be a positive multiple of 4, got {size}")
    if width < 4 or width % 4:
        raise TrustgainError(f"width must be a positive multiple of 4, got {width}")
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(width, 2 * width, 4 * width),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=8 if width % 8 == 0 else 4,
    )


def build_scheduler(num_train_timesteps: int = 1000) -> Any:
    """Cosine (squaredcos_cap_v2) DDPM schedule, epsilon prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps,
                         beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


def load_ddpm(path: str | Path, device: str = "cpu") -> PixelDDPM:
    """Load a folder written by :func:`train_ddpm` (or any DDPMPipeline folder with an
    epsilon-predicting ``UNet2DModel``)."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(path)
    if not (path / "unet").is_dir() or not (path / "scheduler").is_dir():
        raise InputError(f"{path} is not a DDPM folder (no unet/ and scheduler/)",
                         hint="train one with `python -m trustgain.protection.pixel_ddpm`")
    unet = UNet2DModel.from_pretrained(path / "unet").to(device).eval()
    unet.requires_grad_(False)
    sched = DDPMScheduler.from_pretrained(path / "scheduler")
    if sched.config.prediction_type != "epsilon":
        raise InputError(f"{path}: prediction_type {sched.config.prediction_type!r} is not "
                         "supported; the protection mode needs 'epsilon'")
    info = {}
    if (path / TRAINING_NAME).is_file():
        info = json.loads((path / TRAINING_NAME).read_text())
    acp = sched.alphas_cumprod.to(torch.float64)
    return PixelDDPM(unet, acp, int(info.get("max_timestep", len(acp) - 1)))
