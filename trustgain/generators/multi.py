"""Several wrapped pipelines behind one generator: a SCHEDULE stage picks one per request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trustgain.errors import ConfigError, GeneratorError
from trustgain.generators.diffusers import DiffusersGenerator
from trustgain.types import GenerationRequest, StepHook

if TYPE_CHECKING:
    import torch


class MultiGenerator:
    """Runs ``request.backend`` among named generators (``default`` when none is chosen).

    A stage may rely on a capability only when every backend has it, since the choice is
    made per request.
    """

    kind = "multi"

    def __init__(self, backends: Mapping[str, DiffusersGenerator], *, default: str) -> None:
        if not backends:
            raise ConfigError("MultiGenerator needs at least one backend")
        if default not in backends:
            raise ConfigError(f"default backend '{default}' is not one of {', '.join(backends)}")
        self.backends = dict(backends)
        self.default = default
        inputs = [set(g.callback_tensor_inputs) for g in self.backends.values()]
        self.callback_tensor_inputs = tuple(sorted(set.intersection(*inputs)))

    def pick(self, request: GenerationRequest) -> DiffusersGenerator:
        name = request.backend or self.default
        if name not in self.backends:
            raise GeneratorError(f"unknown backend '{name}'; known: {', '.join(self.backends)}")
        return self.backends[name]

    def supports(self, capability: str) -> bool:
        return all(g.supports(capability) for g in self.backends.values())

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "default": self.default,
            "backends": {n: g.describe() for n, g in sorted(self.backends.items())},
        }

    def latent_shape(self, request: GenerationRequest) -> tuple[int, ...]:
        return self.pick(request).latent_shape(request)

    def __call__(
        self,
        request: GenerationRequest,
        *,
        latents: torch.Tensor | None = None,
        hooks: Sequence[StepHook] = (),
    ) -> tuple[Any, ...]:
        return self.pick(request)(request, latents=latents, hooks=hooks)
