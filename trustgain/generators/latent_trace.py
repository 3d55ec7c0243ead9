"""``generate.latent_trace``: per-step latent statistics, through ``callback_on_step_end``.

Records mean and standard deviation of the latents at every ``every``-th denoising step,
the first step with a non-finite value (the usual cause of black fp16 images), and the
digest of the final latents, so a replay can be checked step by step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from trustgain import settings
from trustgain.digest import output_sha256
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult, StepHook


def _num(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


@dataclass(frozen=True)
class LatentTrace:
    name: ClassVar[str] = "generate.latent_trace"
    phase: ClassVar[Phase] = Phase.GENERATE
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"callback_on_step_end"})

    every: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "every", settings.integer("every", self.every, 1))

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        trace: list[dict[str, Any]] = []
        state: dict[str, Any] = {"steps": 0, "first_nonfinite_step": None, "final": None}

        def on_step(step: int, timestep: int, tensors: Mapping[str, torch.Tensor]) -> None:
            latents = tensors["latents"].detach().float()
            finite = bool(torch.isfinite(latents).all())
            state["steps"] += 1
            if not finite and state["first_nonfinite_step"] is None:
                state["first_nonfinite_step"] = step
            if step % self.every == 0:
                trace.append(
                    {
                        "step": step,
                        "timestep": timestep,
                        "finite": finite,
                        "mean": _num(float(latents.mean())),
                        "std": _num(float(latents.std())),
                    }
                )
            state["final"] = latents

        def report() -> dict[str, Any]:
            final = state["final"]
            return {
                "steps": state["steps"],
                "trace": trace,
                "first_nonfinite_step": state["first_nonfinite_step"],
                "final_latents_sha256": None if final is None else output_sha256(final),
            }

        hook = StepHook(stage=self.name, fn=on_step, tensor_inputs=("latents",), report=report)
        return StageResult(item.replace(step_hooks=(*item.step_hooks, hook)), {"every": self.every})
