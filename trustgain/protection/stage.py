"""The ``protect.rae`` stage: reversible adversarial protection of generated images.

Each image output is perturbed against the surrogates (by default the embedded digits judge,
which serves the digits domain of trustgain-mini-sd) within an L-infinity budget of ``eps``
pixel units, and its sealed residual (AES-256-GCM under the stage's ``residual`` sub-key) is
kept so the key holder recovers the generated image bit for bit. Residuals travel in
``item.notes["protect.rae/residuals"]`` (base64, one per output) and, when ``residual_dir`` is
set, as ``<run id>-<index>.rae`` files there. The record lists method, budget, each residual's
SHA-256, size and location, never key material.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from trustgain import settings
from trustgain.errors import SettingError
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult

KEY_PURPOSE = "residual"
NOTE = "protect.rae/residuals"


@dataclass(frozen=True)
class ProtectRAE:
    """Protect each image output; ``surrogates``: ``"judge"`` or a folder of saved surrogates."""

    name: ClassVar[str] = "protect.rae"
    phase: ClassVar[Phase] = Phase.PROTECT
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"images"})

    method: str = "pgd"
    eps: int = 8
    steps: int = 10
    surrogates: str = "judge"
    residual_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", settings.text("method", self.method))
        object.__setattr__(self, "eps", settings.integer("eps", self.eps, 1, 255))
        object.__setattr__(self, "steps", settings.integer("steps", self.steps, 0))
        object.__setattr__(self, "surrogates", settings.text("surrogates", self.surrogates,
                                                             path=True))
        object.__setattr__(self, "residual_dir", settings.text(
            "residual_dir", self.residual_dir, optional=True, path=True))
        if self.method != "pgd":  # ddpm needs a DDPM folder and poison class folders: the CLI
            raise SettingError(f"method must be 'pgd' in this stage, not {self.method!r}; "
                               "ddpm and poison run through `trustgain protect --method`")
        self.config()  # validates method / eps / steps early, as a ValueError-free ConfigError
        if self.surrogates != "judge" and not Path(self.surrogates).is_dir():
            raise ValueError(f"surrogates must be 'judge' or a folder, got {self.surrogates!r}")

    def config(self):
        from trustgain.protection.api import ProtectConfig

        return ProtectConfig(method=self.method, eps=self.eps, steps=self.steps,
                             eot=("blur", "resize"), diversity=0.5)

    def _models(self) -> list[Any]:
        from trustgain.protection import surrogates

        if self.surrogates == "judge":
            return [surrogates.JudgeSurrogate()]
        return surrogates.load(self.surrogates)

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        from trustgain.protection.api import protect
        from trustgain.watermark.pixel_stage import psnr

        images = [o for o in item.outputs if isinstance(o, Image.Image)]
        if not images:
            return StageResult(item, {"method": self.method, "eps": self.eps}, applied=False,
                               reason="no image outputs to protect")
        key = ctx.key(KEY_PURPOSE)
        config, models = self.config(), self._models()
        outputs, sealed_all, entries = [], [], []
        for i, output in enumerate(item.outputs):
            if not isinstance(output, Image.Image):
                outputs.append(output)
                continue
            mode = "L" if output.mode in ("L", "1") else "RGB"
            original = np.asarray(output.convert(mode))
            protected, sealed = protect(original, key=key.material, config=config,
                                        surrogates=models, image_id=f"{ctx.run_id}/{i}")
            out = Image.fromarray(protected)
            where = f"notes:{NOTE}[{i}]"
            if self.residual_dir is not None:
                from trustgain.fileio import write_atomic

                path = write_atomic(Path(self.residual_dir) / f"{ctx.run_id}-{i}.rae", sealed)
                where += f"; file:{path}"
            outputs.append(out)
            sealed_all.append(base64.b64encode(sealed).decode("ascii"))
            entries.append({"index": i, "residual_sha256": hashlib.sha256(sealed).hexdigest(),
                            "residual_bytes": len(sealed), "stored": where,
                            "psnr_db": psnr(output.convert(mode), out)})
        params: dict[str, Any] = {
            "method": self.method, "eps": self.eps, "eps_unit": "pixel (0..255)",
            "steps": self.steps, "surrogates": self.surrogates, "key_id": key.key_id,
            "config": config.to_dict(), "residuals": entries,
        }
        new = item.replace(outputs=tuple(outputs)).with_note(NOTE, tuple(sealed_all))
        return StageResult(new, params)
