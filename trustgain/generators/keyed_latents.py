"""``generate.keyed_latents``: initial latents drawn from a key-derived seed.

The noise a diffusion model starts from is a function of this stage's secret key and a
random per-image nonce recorded in the provenance record. Whoever holds the key can redraw
the exact latents and regenerate the output, a proof of generation that no one else can
produce; the latents stay exactly N(0, 1). This is not a watermark: nothing is detectable
from the image alone (``watermark.latent`` builds on the same hook for that).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import ClassVar

import torch

from trustgain.keys import DerivedKey
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult

SAMPLER = "torch.randn(float32, cpu Generator seeded with HMAC-SHA256(key, nonce)[:63 bits])"


def keyed_latents(key: DerivedKey, nonce: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    """The latents for ``key`` and ``nonce``: the same on every machine and device."""
    digest = hmac.new(key.material, b"trustgain/latents\0" + nonce, hashlib.sha256).digest()
    seed = int.from_bytes(digest[:8], "big") >> 1
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


@dataclass(frozen=True)
class KeyedLatents:
    name: ClassVar[str] = "generate.keyed_latents"
    phase: ClassVar[Phase] = Phase.GENERATE
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"latents"})

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        if ctx.generator is None:
            raise ValueError("needs a generator to know the latent shape")
        key = ctx.key("latents")
        nonce = os.urandom(16)
        shape = ctx.generator.latent_shape(item.request)
        latents = keyed_latents(key, nonce, shape)
        params = {
            "key_id": key.key_id,
            "nonce": nonce.hex(),
            "shape": list(shape),
            "sampler": SAMPLER,
        }
        return StageResult(item.replace(latents=latents), params)
