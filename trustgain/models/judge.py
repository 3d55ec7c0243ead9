"""The digits judge: a small CNN that names the digit in a 32x32 image.

It scores the embedded text-to-image model (does the picture show the prompted digit?). The
network is a plain ``torch.nn`` module written here: no PyPI package ships a digits classifier
with weights, and the model is small enough that its definition is the clearest documentation.
Input is the ink map: the maximum over the RGB channels of an image in [0, 1], so any ink
colour on a dark background reads the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

JUDGE_ID = "trustgain-digits-judge"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class DigitsJudge(nn.Module):
    """Three conv blocks (conv-BN-ReLU, max-pool) and a linear head over 10 digits."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), image_size: int = 32) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "model_type": "trustgain-digits-judge",
            "channels": list(channels),
            "image_size": image_size,
            "num_classes": 10,
            "input": "max over RGB channels of an image in [0, 1], resized to image_size",
        }
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in, 10))

    def forward(self, ink: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) ink maps in [0, 1] -> (N, 10) logits."""
        h = self.features(ink * 2.0 - 1.0)
        return self.head(F.adaptive_avg_pool2d(h, 1))

    def save(self, folder: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``folder``."""
        from safetensors.torch import save

        from trustgain.fileio import write_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        # write_atomic's 0644, not safetensors' save_file (0600): weights are no secret
        write_atomic(folder / WEIGHTS_NAME, save(state, metadata={"format": "pt"}),
                     overwrite=True)
        write_atomic(folder / CONFIG_NAME, (json.dumps(self.config, indent=2) + "\n").encode(),
                     overwrite=True)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> DigitsJudge:
        """Load a saved judge (eval mode) from ``folder``."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"no judge weights at {folder / WEIGHTS_NAME}; train them with "
                "`python -m trustgain.models.train judge`"
            )
        cfg = json.loads((folder / CONFIG_NAME).read_text())
        model = cls(cfg["channels"], cfg["image_size"])
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        return model.to(device).eval()


def to_ink(images: Any, size: int = 32) -> torch.Tensor:
    """PIL images, a list of them, or a tensor/array in [0, 1] -> (N, 1, size, size) ink maps.

    Tensors may be (H, W), (C, H, W) or (N, C, H, W), channels-first; numpy arrays from
    diffusers' ``output_type="np"`` are (N, H, W, C) and are transposed.
    """
    from PIL import Image

    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images to classify")
        if isinstance(images[0], Image.Image):
            arrs = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
            x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
        else:
            x = torch.stack([torch.as_tensor(im, dtype=torch.float32) for im in images])
    elif isinstance(images, np.ndarray):
        x = torch.from_numpy(images.astype(np.float32))
        if x.dim() == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = x.permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        x = images.detach().float()
    else:
        raise TypeError(f"cannot classify {type(images).__name__}: give PIL images or tensors")
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"expected images of 2 to 4 dimensions, got shape {tuple(x.shape)}")
    x = x.cpu()[:, :3].amax(dim=1, keepdim=True)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    return x.clamp(0.0, 1.0)


@torch.no_grad()
def classify(judge: DigitsJudge, images: Any, batch_size: int = 256,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(digits, confidence)``: the judge's label and softmax probability per image."""
    ink = to_ink(images, judge.config["image_size"])
    device = next(judge.parameters()).device
    probs = torch.cat([judge(ink[i:i + batch_size].to(device)).softmax(-1).cpu()
                       for i in range(0, len(ink), batch_size)])
    conf, digits = probs.max(dim=-1)
    return digits, conf
