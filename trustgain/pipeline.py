"""TrustPipeline: ordered trust stages around one generator, sealed by a signed record."""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trustgain.artifact import Artifact, attach_record, encode_outputs
from trustgain.config import PipelineConfig
from trustgain.digest import canonical_json, item_sha256
from trustgain.errors import ConfigError, GeneratorError, StageError, TrustgainError
from trustgain.generators.diffusers import DiffusersGenerator
from trustgain.generators.multi import MultiGenerator
from trustgain.generators.text import TransformersTextGenerator
from trustgain.keys import KeyRing
from trustgain.provenance.record import SignedRecord, build_record, request_digest, seal_seed
from trustgain.stage import Phase, RunContext, Stage, resolve_stages
from trustgain.types import MAX_SEED, GenerationRequest, Item, StageRecord, StageResult

Clock = Callable[[], datetime]


class TrustPipeline:
    """Run stages in phase order around a generator and return a signed :class:`Artifact`.

    The pipeline owns the call path: it checks the stage list and what the stages need from
    the generator before anything runs, times each stage, wraps failures in one
    :class:`StageError`, and always seals last, outside the reorderable stages.
    """

    def __init__(
        self,
        generator: DiffusersGenerator | MultiGenerator | TransformersTextGenerator,
        stages: Sequence[Stage | str] = (),
        *,
        keyring: KeyRing,
        output_format: str = "png",
        jpeg_quality: int = 95,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(keyring, KeyRing):
            raise ConfigError(
                "a KeyRing is needed to sign records: pass keyring=KeyRing.load() "
                "or KeyRing.generate()"
            )
        self.generator = generator
        self.config = PipelineConfig(
            stages=tuple(resolve_stages(stages)),
            output_format=output_format,
            jpeg_quality=jpeg_quality,
        )
        self._keyring = keyring
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        for stage in self.stages:
            check = getattr(stage, "check_generator", None)
            if check is not None:  # a stage that needs more of the generator than capabilities
                check(generator)
            for capability in sorted(getattr(stage, "requires", frozenset())):
                if not _supports(generator, capability):
                    raise GeneratorError(
                        f"stage '{stage.name}' needs '{capability}', which "
                        f"{generator.describe()['class']} does not take"
                    )

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self.config.stages

    @classmethod
    def from_config(
        cls,
        generator: DiffusersGenerator | MultiGenerator | TransformersTextGenerator,
        path: str | os.PathLike[str],
        *,
        keyring: KeyRing,
        clock: Clock | None = None,
    ) -> TrustPipeline:
        config = PipelineConfig.load(path)
        return cls(
            generator,
            config.stages,
            keyring=keyring,
            output_format=config.output_format,
            jpeg_quality=config.jpeg_quality,
            clock=clock,
        )

    def save_config(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        return self.config.save(path, overwrite=overwrite)

    def __call__(
        self,
        prompt: str | None = None,
        *,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        **pipeline_kwargs: Any,
    ) -> Artifact:
        """Generate with diffusers' argument names; other keywords go to the pipeline."""
        request = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            height=height,
            width=width,
            num_images_per_prompt=num_images_per_prompt,
            extra=pipeline_kwargs,
        )
        return self.run(request)

    def run(self, request: GenerationRequest) -> Artifact:
        if request.seed is None:  # recorded, so every output can be replayed
            request = request.replace(seed=secrets.randbelow(MAX_SEED + 1))
        for stage in self.stages:  # what a stage can tell from the request alone, before any
            check = getattr(stage, "check_request", None)  # work (e.g. a size it cannot mark)
            if check is not None:
                try:
                    check(request)
                except TrustgainError as exc:
                    raise StageError(stage.name, str(exc), hint=exc.hint) from None
        run_id = uuid.uuid4().hex
        digest = request_digest(request.to_dict(), self._keyring)
        item = Item(request=request)
        records: list[StageRecord] = []
        before = [s for s in self.stages if s.phase <= Phase.GENERATE]
        after = [s for s in self.stages if s.phase > Phase.GENERATE]
        for stage in before:
            item, record = self._run_stage(stage, item, run_id)
            records.append(record)

        start = time.perf_counter()
        try:
            outputs = self.generator(item.request, latents=item.latents, hooks=item.step_hooks)
        except TrustgainError:
            raise
        except Exception as exc:
            raise GeneratorError(f"the generator failed: {type(exc).__name__}: {exc}") from exc
        generation_seconds = time.perf_counter() - start
        records = _add_observations(records, item)
        item = item.replace(outputs=outputs, latents=None, step_hooks=())

        for stage in after:
            item, record = self._run_stage(stage, item, run_id)
            records.append(record)
        return self._seal(item, records, run_id, digest, generation_seconds)

    def _run_stage(self, stage: Stage, item: Item, run_id: str) -> tuple[Item, StageRecord]:
        ctx = RunContext(
            run_id=run_id, stage=stage.name, generator=self.generator, _keyring=self._keyring
        )
        digest_in = item_sha256(item)
        start = time.perf_counter()
        try:
            result = stage(item, ctx)
        except TrustgainError as exc:
            if isinstance(exc, StageError):
                raise
            raise StageError(stage.name, str(exc), hint=exc.hint) from exc
        except Exception as exc:
            raise StageError(stage.name, f"{type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - start
        if not isinstance(result, StageResult):
            raise StageError(stage.name, f"returned {type(result).__name__}, not a StageResult")
        canonical_json(dict(result.params))  # params must be JSON the record can sign
        record = StageRecord(
            name=stage.name,
            version=stage.version,
            phase=stage.phase.name,
            params=dict(result.params),
            applied=result.applied,
            reason=result.reason,
            digest_in=digest_in,
            digest_out=item_sha256(result.item),
            seconds=seconds,
        )
        return result.item, record

    def _seal(
        self,
        item: Item,
        records: list[StageRecord],
        run_id: str,
        digest: str,
        generation_seconds: float,
    ) -> Artifact:
        files, entries = encode_outputs(
            item.outputs, self.config.output_format, self.config.jpeg_quality
        )
        record = build_record(
            record_id=run_id,
            created=self._clock(),
            generator=self.generator.describe(),
            request_hmac_sha256=digest,
            seed_sealed=(None if item.request.seed is None
                         else seal_seed(item.request.seed, run_id, self._keyring)),
            stages=records,
            outputs=entries,
            signer_key_id=self._keyring.key_id,
            generation_seconds=generation_seconds,
        )
        signed = SignedRecord.sign(record, self._keyring)
        return Artifact(
            outputs=item.outputs,
            record=signed,
            files=attach_record(files, signed),
            request=item.request,
        )


def _supports(generator: Any, capability: str) -> bool:
    """``generator.supports``, except that ``"images"`` (what image stages require) holds for
    any generator that does not say it makes text: generators written before text
    generation existed make images and need not declare it."""
    if capability == "images":
        return not generator.supports("text")
    return generator.supports(capability)


def _add_observations(records: list[StageRecord], item: Item) -> list[StageRecord]:
    reports = {h.stage: h.report for h in item.step_hooks if h.report is not None}
    out = []
    for record in records:
        report = reports.get(record.name)
        if report is not None:
            observed = dict(report())
            canonical_json(observed)
            record = StageRecord(
                **{**record.__dict__, "params": {**record.params, "observed": observed}}
            )
        out.append(record)
    return out


def wrap(
    pipe: Any,
    stages: Sequence[Stage | str] = (),
    *,
    keyring: KeyRing,
    model_id: str | None = None,
    **kwargs: Any,
) -> TrustPipeline:
    """Wrap a diffusers ``DiffusionPipeline`` (unchanged) in trust stages."""
    return TrustPipeline(
        DiffusersGenerator(pipe, model_id=model_id), stages, keyring=keyring, **kwargs
    )


def wrap_text(
    model: Any,
    tokenizer: Any,
    stages: Sequence[Stage | str] = (),
    *,
    keyring: KeyRing,
    model_id: str | None = None,
    **kwargs: Any,
) -> TrustPipeline:
    """Wrap a ``transformers`` causal LM and its tokenizer (unchanged) in trust stages.

    ``pipe("a prompt", seed=1, max_new_tokens=64)`` returns an :class:`Artifact` whose
    ``texts`` are the generations (without the prompt) and whose record binds each text's
    SHA-256. See :class:`~trustgain.generators.text.TransformersTextGenerator`.
    """
    return TrustPipeline(
        TransformersTextGenerator(model, tokenizer, model_id=model_id), stages,
        keyring=keyring, **kwargs
    )
