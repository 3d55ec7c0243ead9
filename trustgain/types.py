"""Frozen data passed between stages: the request, the item in flight, and stage records."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from trustgain.errors import ConfigError

if TYPE_CHECKING:  # torch is imported by whoever makes tensors; not at `import trustgain`
    import torch

#: A step hook receives (step index, timestep, the tensors it asked for) and returns the
#: tensors it changes (or None). The pipeline folds all hooks into one diffusers
#: ``callback_on_step_end``.
StepFn = Callable[[int, int, Mapping[str, "torch.Tensor"]], "Mapping[str, torch.Tensor] | None"]


#: Largest seed: records are RFC 8785 JSON, whose integers are exact up to 2**53 - 1.
MAX_SEED = 2**53 - 1


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


#: Pipeline arguments trustgain sets itself, with what to do instead.
RESERVED = {
    "generator": "pass seed= (recorded, so the output can be replayed)",
    "latents": "use a GENERATE stage (generate.keyed_latents, watermark.latent)",
    "callback_on_step_end": "write a GENERATE stage that returns a StepHook",
    "callback_on_step_end_tensor_inputs": "declare tensor_inputs on the stage's StepHook",
}


def _prompt(name: str, value: Any) -> str | tuple[str, ...] | None:
    """A prompt is None, a string, or a non-empty list of strings (kept as a tuple)."""
    if value is None:
        return value
    if isinstance(value, str):
        _utf8(name, value)
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        for v in value:
            _utf8(name, v)
        return tuple(value)
    raise ConfigError(f"{name} must be a string or a non-empty list of strings, not "
                      f"{type(value).__name__}")


def _utf8(name: str, text: str) -> None:
    """Refuse text that is not Unicode (bytes the terminal could not decode arrive in
    ``sys.argv`` as lone surrogates), naming where."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{name} is not valid UTF-8 text (undecodable byte at character "
                          f"{exc.start})",
                          hint="pass the text as UTF-8; check the terminal's locale") from None


def _integer(name: str, value: Any) -> int:
    """An integer (numpy integers too), never a bool, float or string."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    return int(value)


def _check_extra(extra: Mapping[str, Any]) -> None:
    """Extra pipeline arguments: not ones trustgain manages, and JSON values only (the request
    digest in the record covers them)."""
    from trustgain.digest import canonical_json

    for key, value in extra.items():
        if key in RESERVED:
            raise ConfigError(f"'{key}' is managed by trustgain; do not pass it to the pipeline",
                              hint=RESERVED[key])
        try:
            canonical_json(value)
        except (ConfigError, TypeError, ValueError):
            raise ConfigError(
                f"pipeline argument '{key}' is a {type(value).__name__}; only JSON values "
                "(numbers, strings, lists, objects) can be passed, since the record's request "
                "digest covers them",
                hint="pass text prompts rather than embeddings" if "embeds" in key else None,
            ) from None


@dataclass(frozen=True)
class GenerationRequest:
    """What the caller asked for, with diffusers' argument names.

    ``extra`` holds further keyword arguments for the wrapped pipeline (JSON-serialisable
    values only, since the request digest covers them).
    """

    prompt: str | tuple[str, ...] | None = None
    negative_prompt: str | tuple[str, ...] | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    height: int | None = None
    width: int | None = None
    num_images_per_prompt: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Which wrapped pipeline serves the request, when several do (set by SCHEDULE stages).
    backend: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))
        for name in ("prompt", "negative_prompt"):
            object.__setattr__(self, name, _prompt(name, getattr(self, name)))
        for name in ("num_inference_steps", "seed", "height", "width", "num_images_per_prompt"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _integer(name, value))
        if self.num_images_per_prompt is None or self.num_images_per_prompt < 1:
            raise ConfigError("num_images_per_prompt must be at least 1")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ConfigError("num_inference_steps must be at least 1")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be in [0, {MAX_SEED}] (exact in JSON records)")
        for name in ("height", "width"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.guidance_scale is not None:
            g = self.guidance_scale
            if isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(g):
                raise ConfigError(f"guidance_scale must be a finite number, not {g!r}")
            object.__setattr__(self, "guidance_scale", float(g))
        _check_extra(self.extra)

    @property
    def batch_size(self) -> int:
        """Outputs the call makes: prompts (one, or a list) times ``num_images_per_prompt``."""
        prompts = len(self.prompt) if isinstance(self.prompt, tuple) else 1
        return prompts * self.num_images_per_prompt

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": list(self.prompt) if isinstance(self.prompt, tuple) else self.prompt,
            "negative_prompt": (list(self.negative_prompt)
                                if isinstance(self.negative_prompt, tuple)
                                else self.negative_prompt),
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed,
            "height": self.height,
            "width": self.width,
            "num_images_per_prompt": self.num_images_per_prompt,
            "extra": dict(self.extra),
            "backend": self.backend,
        }

    def replace(self, **changes: Any) -> GenerationRequest:
        return replace(self, **changes)

    def __reduce__(self) -> tuple[Any, ...]:
        """Picklable (for Ray and multiprocessing), though ``extra`` is a read-only view."""
        return (_request_from_dict, (self.to_dict(),))


def _request_from_dict(state: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest(**state)


@dataclass(frozen=True)
class StepHook:
    """A per-step function attached through diffusers' ``callback_on_step_end``.

    ``tensor_inputs`` names the tensors it reads (checked against the pipeline's
    ``_callback_tensor_inputs`` before anything runs), as diffusers' callbacks declare them.
    For a text generator, ``tensor_inputs=("scores",)`` marks a ``transformers`` logits
    processor: ``fn(input_ids, scores) -> scores`` at every generated token.
    """

    stage: str
    fn: StepFn
    tensor_inputs: tuple[str, ...] = ("latents",)
    #: Called once after generation; what it returns is added to the stage's record as
    #: ``observed`` (e.g. statistics the hook gathered while the generator ran).
    report: Callable[[], Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class Item:
    """The job in flight. Stages never change an item; they return a new one.

    - ``request``: the (possibly rewritten) generation request.
    - ``latents``: initial latents for the generator (``latents=``), set by GENERATE stages.
    - ``step_hooks``: per-step hooks for the generator, set by GENERATE stages.
    - ``outputs``: what the generator produced (PIL images, arrays, or text), then transformed
      by PROTECT stages.
    - ``notes``: small facts stages pass on to later stages (e.g. a scheduling decision).
    """

    request: GenerationRequest
    latents: torch.Tensor | None = None
    step_hooks: tuple[StepHook, ...] = ()
    outputs: tuple[Any, ...] = ()
    notes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "notes", _frozen(self.notes))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "step_hooks", tuple(self.step_hooks))

    def replace(self, **changes: Any) -> Item:
        return replace(self, **changes)

    def with_note(self, key: str, value: Any) -> Item:
        return replace(self, notes={**self.notes, key: value})


@dataclass(frozen=True)
class StageResult:
    """What a stage returns: the new item and the parameters it actually used.

    ``params`` goes into the signed provenance record, so it must be JSON-serialisable and
    must never hold a secret (use key ids). ``applied=False`` with a ``reason`` records a stage
    that deliberately did nothing; a trust stage never skips quietly.
    """

    item: Item
    params: Mapping[str, Any] = field(default_factory=dict)
    applied: bool = True
    reason: str | None = None


@dataclass(frozen=True)
class StageRecord:
    """One stage's entry in the provenance record."""

    name: str
    version: str
    phase: str
    params: Mapping[str, Any]
    applied: bool
    reason: str | None
    digest_in: str
    digest_out: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "phase": self.phase,
            "params": dict(self.params),
            "applied": self.applied,
            "reason": self.reason,
            "digest_in": self.digest_in,
            "digest_out": self.digest_out,
            "seconds": round(self.seconds, 6),
        }
