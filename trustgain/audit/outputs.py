"""``audit.outputs``: fail a job whose outputs are blank or non-finite.

A NaN in an fp16 VAE, a tripped safety checker or a broken scheduler setting yields black
or constant images that look like success to a service. This check refuses them (or records
the failure, with ``on_fail="record"``) instead of sealing them as good outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from trustgain import settings
from trustgain.errors import AuditFailed, ConfigError
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult

_ON_FAIL = ("raise", "record")


def _as_pixels(output: Any) -> np.ndarray | None:
    """Values on a 0..255 scale; None for outputs that are not images."""
    if isinstance(output, Image.Image):
        return np.asarray(output, dtype=np.float32)
    if isinstance(output, torch.Tensor):
        output = output.detach().float().cpu().numpy()
    if isinstance(output, np.ndarray):
        array = output.astype(np.float32)
        return array * 255.0 if np.issubdtype(output.dtype, np.floating) else array
    return None


@dataclass(frozen=True)
class OutputCheck:
    """Each image output must be finite with pixel standard deviation >= ``min_std``."""

    name: ClassVar[str] = "audit.outputs"
    phase: ClassVar[Phase] = Phase.AUDIT
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset()

    min_std: float = 2.0
    on_fail: str = "raise"

    def __post_init__(self) -> None:
        if self.on_fail not in _ON_FAIL:
            raise ValueError(f"on_fail must be one of {', '.join(_ON_FAIL)}, not {self.on_fail!r}")
        object.__setattr__(self, "min_std", settings.number("min_std", self.min_std, 0))

    def check_request(self, request: Any) -> None:
        """Latents are not pixels: their spread says nothing about a blank image."""
        if request.extra.get("output_type") == "latent":
            raise ConfigError("it checks decoded images, and output_type is 'latent'",
                              hint="use output_type 'pil', 'np' or 'pt' with this stage")

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        checked, problems = [], []
        for i, output in enumerate(item.outputs):
            pixels = _as_pixels(output)
            if pixels is None:
                if isinstance(output, str) and not output.strip():
                    problems.append(f"output {i} is empty text")
                continue
            finite = bool(np.isfinite(pixels).all())
            std = float(pixels[np.isfinite(pixels)].std()) if pixels.size else 0.0
            checked.append({"index": i, "finite": finite, "pixel_std": round(std, 3)})
            if not finite:
                problems.append(f"output {i} has non-finite values")
            elif std < self.min_std:
                problems.append(f"output {i} is blank (pixel std {std:.2f} < {self.min_std})")
        if problems and self.on_fail == "raise":
            raise AuditFailed(
                self.name,
                "; ".join(problems),
                hint="check for NaN in the VAE (fp16), a safety checker, or steps",
            )
        params = {
            "min_std": self.min_std,
            "on_fail": self.on_fail,
            "outputs": checked,
            "passed": not problems,
            "problems": problems,
        }
        return StageResult(item, params)
