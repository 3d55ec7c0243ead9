"""The stage contract: phases, the ``Stage`` protocol, the run context, and the registry.

A stage is a small, cheap, serialisable object with one method. Built-in stages are listed
by dotted path in :data:`BUILTIN_STAGES` and imported only when built, so importing
trustgain loads no stage code and registers nothing as a side effect. Users add their own
with :func:`register_stage`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from trustgain.errors import ConfigError, StageOrderError, UnknownStageError
from trustgain.types import GenerationRequest, Item, StageResult

if TYPE_CHECKING:
    from trustgain.keys import DerivedKey, KeyRing


class Phase(IntEnum):
    """When a stage runs. Phases never go backwards in a pipeline."""

    PREPARE = 10  # prompt engineering, privacy redaction, bias-aware prompt balancing
    SCHEDULE = 20  # choose backend / model / inference steps for the job
    GENERATE = 30  # in-generation hooks: initial latents, per-step callbacks
    PROTECT = 40  # post-hoc watermark, reversible adversarial protection
    AUDIT = 50  # read-only checks that may fail the job


class GeneratorInfo(Protocol):
    """What a stage may ask of the wrapped generator."""

    callback_tensor_inputs: tuple[str, ...]

    def supports(self, capability: str) -> bool: ...

    def latent_shape(self, request: GenerationRequest) -> tuple[int, ...]: ...


@runtime_checkable
class Stage(Protocol):
    """One trust step.

    ``name`` is the registry key, ``phase`` when it runs, ``version`` goes into records.
    ``requires`` lists generator capabilities (``"latents"``, ``"callback_on_step_end"``,
    ``"prompt"``) checked when the pipeline is built, before anything runs. Stages are frozen
    dataclasses, so their settings are their fields (saved in trustgain.json).
    """

    name: ClassVar[str]
    phase: ClassVar[Phase]
    version: ClassVar[str]
    requires: ClassVar[frozenset[str]]

    def __call__(self, item: Item, ctx: RunContext) -> StageResult: ...


@dataclass(frozen=True)
class RunContext:
    """What a running stage may use: its own keys, the generator's shape, the run id."""

    run_id: str
    stage: str
    generator: GeneratorInfo | None
    _keyring: KeyRing | None = dataclasses.field(default=None, repr=False)

    def key(self, purpose: str = "") -> DerivedKey:
        """This stage's sub-key for ``purpose`` (HKDF of the master secret)."""
        if self._keyring is None:
            raise ConfigError(f"stage '{self.stage}' needs a key but the pipeline has no KeyRing")
        return self._keyring.derive(self.stage, purpose)


# -- registry -----------------------------------------------------------------------------

BUILTIN_STAGES: dict[str, str] = {
    "privacy.redact": "trustgain.privacy.redact:RedactPII",
    "privacy.redact_outputs": "trustgain.privacy.redact:RedactOutputs",
    "prompt.normalize": "trustgain.prompting.normalize:NormalizePrompt",
    "prompt.rewrite": "trustgain.prompting.rewrite:RewritePrompt",
    "prompt.policy": "trustgain.prompting.choose:PolicyPrompt",
    "schedule.backend_steps": "trustgain.scheduling.backend_steps:ScheduleBackendSteps",
    "generate.keyed_latents": "trustgain.generators.keyed_latents:KeyedLatents",
    "generate.latent_trace": "trustgain.generators.latent_trace:LatentTrace",
    "watermark.latent": "trustgain.watermark.latent:LatentMark",
    "watermark.text": "trustgain.watermark.text:TextMark",
    "audit.balance": "trustgain.audit.balance:BalanceCheck",
    "watermark.pixel": "trustgain.watermark.pixel_stage:PixelMark",
    "protect.rae": "trustgain.protection.stage:ProtectRAE",
    "audit.outputs": "trustgain.audit.outputs:OutputCheck",
    "privacy.memorization": "trustgain.privacy.memorization:MemorizationGuard",
}
_USER_STAGES: dict[str, type] = {}


def register_stage(cls: type) -> type:
    """Add a stage class to the registry (usable as a decorator). Re-registering is a no-op."""
    for attr in ("name", "phase", "version"):
        if not hasattr(cls, attr):
            raise ConfigError(f"stage class {cls.__name__} has no '{attr}'")
    if not isinstance(cls.phase, Phase):
        raise ConfigError(f"stage class {cls.__name__} has phase {cls.phase!r}, not a Phase")
    name = cls.name
    known = _USER_STAGES.get(name)
    if name in BUILTIN_STAGES or (known is not None and known is not cls):
        raise ConfigError(f"stage name '{name}' is already registered")
    _USER_STAGES[name] = cls
    return cls


def known_stages() -> list[str]:
    return sorted({*BUILTIN_STAGES, *_USER_STAGES})


def stage_class(name: str) -> type:
    if name in _USER_STAGES:
        return _USER_STAGES[name]
    if name not in BUILTIN_STAGES:
        raise UnknownStageError(f"unknown stage '{name}'; known: {', '.join(known_stages())}")
    module, _, attr = BUILTIN_STAGES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def build_stage(name: str, **settings: Any) -> Stage:
    """Build a registered stage by name; unknown names and settings list the valid ones."""
    cls = stage_class(name)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else None
    if fields is not None and (unknown := set(settings) - fields):
        raise ConfigError(
            f"stage '{name}' has no setting {', '.join(sorted(map(repr, unknown)))}; "
            f"settings: {', '.join(sorted(fields)) or '(none)'}"
        )
    try:
        return cls(**settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"stage '{name}': {exc}") from None


def stage_settings(stage: Stage) -> dict[str, Any]:
    """A stage's settings, as saved in trustgain.json."""
    if dataclasses.is_dataclass(stage):
        return dataclasses.asdict(stage)
    getter: Callable[[], dict[str, Any]] | None = getattr(stage, "settings", None)
    if getter is None:
        raise ConfigError(f"stage '{stage.name}' is not a dataclass and has no settings()")
    return dict(getter())


def resolve_stages(stages: Sequence[Stage | str]) -> list[Stage]:
    """Build names, then check the contract: known phases, no duplicates, phases in order."""
    if isinstance(stages, str):
        raise ConfigError(f"stages must be a list of names or stages, not the string {stages!r}",
                          hint=f"write [{stages!r}]")
    for s in stages:
        if isinstance(s, type):
            raise ConfigError(f"{s.__name__} is a stage class; pass an instance, "
                              f"{s.__name__}(...), or its name")
    built = [build_stage(s) if isinstance(s, str) else s for s in stages]
    seen: set[str] = set()
    for stage in built:
        for attr in ("name", "phase", "version"):
            if not hasattr(stage, attr):
                raise ConfigError(f"{type(stage).__name__} is not a stage: it has no '{attr}'")
        if not isinstance(stage.phase, Phase):
            raise ConfigError(f"stage '{stage.name}' declares phase {stage.phase!r}, not a Phase")
        if stage.name in seen:
            raise ConfigError(f"stage '{stage.name}' is listed twice")
        seen.add(stage.name)
    for before, after in pairwise(built):
        if after.phase < before.phase:
            raise StageOrderError(
                f"stage '{after.name}' ({after.phase.name}) cannot run after "
                f"'{before.name}' ({before.phase.name}); phase order is "
                + " < ".join(p.name for p in Phase)
            )
    return built
