from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import trustgain
from trustgain import GenerationRequest, KeyRing, Phase, StageResult, TrustPipeline, wrap
from trustgain.errors import AuditFailed, GeneratorError, StageError
from trustgain.generators.keyed_latents import keyed_latents
from trustgain.provenance import verify_bytes

SD = dict(num_inference_steps=3, height=16, width=16)


def _same_images(a, b) -> bool:
    return len(a) == len(b) and all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("output_type", ["pil", "np"])
def test_wrap_without_stages_is_bit_identical_sd(sd_pipe, keyring, output_type):
    bare = sd_pipe(
        "a red cat",
        generator=torch.Generator().manual_seed(7),
        output_type=output_type,
        num_images_per_prompt=2,
        **SD,
    ).images
    art = wrap(sd_pipe, keyring=keyring)(
        "a red cat", seed=7, output_type=output_type, num_images_per_prompt=2, **SD
    )
    if output_type == "pil":
        assert _same_images(art.images, bare)
    else:
        assert np.array_equal(np.stack(art.outputs), bare)
    different = wrap(sd_pipe, keyring=keyring)(
        "a red cat", seed=8, output_type=output_type, num_images_per_prompt=2, **SD
    )
    assert not np.array_equal(np.asarray(different.outputs[0]), np.asarray(art.outputs[0]))


def test_wrap_without_stages_is_bit_identical_ddim(ddim_pipe, keyring):
    bare = ddim_pipe(
        generator=torch.Generator().manual_seed(3), num_inference_steps=4, output_type="np"
    ).images
    art = wrap(ddim_pipe, keyring=keyring)(seed=3, num_inference_steps=4, output_type="np")
    assert np.array_equal(np.stack(art.outputs), bare)
    assert art.record.record["generator"]["class"] == "DDIMPipeline"


def test_wrapping_does_not_change_the_pipeline(sd_pipe, keyring):
    before = (
        dict(sd_pipe.config),
        sd_pipe._progress_bar_config.copy() if hasattr(sd_pipe, "_progress_bar_config") else None,
    )
    wrap(sd_pipe, ["generate.keyed_latents", "generate.latent_trace"], keyring=keyring)(
        "x", seed=1, **SD
    )
    after = (
        dict(sd_pipe.config),
        sd_pipe._progress_bar_config.copy() if hasattr(sd_pipe, "_progress_bar_config") else None,
    )
    assert before == after


def test_keyed_latents_reach_the_pipeline_and_replay(sd_pipe, keyring):
    pipe = wrap(sd_pipe, ["generate.keyed_latents"], keyring=keyring)
    art = pipe("a digit", seed=5, output_type="np", **SD)
    params = art.record.record["stages"][0]["params"]
    assert params["key_id"].startswith("hkdf:") and len(params["nonce"]) == 32
    # A key holder redraws the latents from the record and regenerates the same output.
    key = keyring.derive("generate.keyed_latents", "latents")
    latents = keyed_latents(key, bytes.fromhex(params["nonce"]), tuple(params["shape"]))
    replay = sd_pipe(
        "a digit",
        latents=latents,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
        **SD,
    ).images
    assert np.array_equal(np.stack(art.outputs), replay)
    # Another key cannot: its latents differ.
    other = KeyRing.generate().derive("generate.keyed_latents", "latents")
    assert not torch.equal(
        latents, keyed_latents(other, bytes.fromhex(params["nonce"]), tuple(params["shape"]))
    )


def test_latent_trace_observes_every_step(sd_pipe, keyring):
    art = wrap(sd_pipe, ["generate.latent_trace"], keyring=keyring)("x", seed=2, **SD)
    observed = art.record.record["stages"][0]["params"]["observed"]
    assert observed["steps"] == 3 and len(observed["trace"]) == 3
    assert observed["first_nonfinite_step"] is None
    assert all(t["finite"] and t["std"] > 0 for t in observed["trace"])


def test_full_record_verifies(sd_pipe, keyring):
    stages = [
        "prompt.normalize",
        "generate.keyed_latents",
        "generate.latent_trace",
        "audit.outputs",
    ]
    art = wrap(sd_pipe, stages, keyring=keyring)("  a\u200b zebracorn  ", seed=1, **SD)
    record = art.record.record
    assert [s["name"] for s in record["stages"]] == stages
    assert [s["phase"] for s in record["stages"]] == ["PREPARE", "GENERATE", "GENERATE", "AUDIT"]
    assert record["stages"][0]["params"]["prompt"]["removed_invisible"] == 1
    assert "zebracorn" not in json.dumps(record)  # prompts are digested, never stored
    assert record["signer"]["key_id"] == keyring.key_id
    verified = verify_bytes(art.files[0].data, trusted=[keyring.public_key])
    assert verified.binding == "file" and verified.output_index == 0


def test_stage_needing_latents_is_refused_at_build(ddim_pipe, keyring):
    with pytest.raises(GeneratorError, match="needs 'latents'"):
        wrap(ddim_pipe, ["generate.keyed_latents"], keyring=keyring)


def test_stage_failure_is_wrapped_with_its_name(sd_pipe, keyring):
    class Broken:
        name, phase, version, requires = "test.broken", Phase.PROTECT, "1", frozenset()

        def __call__(self, item, ctx):
            raise RuntimeError("boom")

    with pytest.raises(StageError, match=r"stage 'test\.broken' failed: RuntimeError: boom"):
        wrap(sd_pipe, [Broken()], keyring=keyring)("x", seed=0, **SD)


def test_audit_rejects_blank_outputs(sd_pipe, keyring):
    class Blank:
        name, phase, version, requires = "test.blank", Phase.PROTECT, "1", frozenset()

        def __call__(self, item, ctx):
            outs = tuple(o.point(lambda _: 0) for o in item.outputs)
            return StageResult(item.replace(outputs=outs), {})

    with pytest.raises(AuditFailed, match="blank"):
        wrap(sd_pipe, [Blank(), "audit.outputs"], keyring=keyring)("x", seed=0, **SD)


def test_config_round_trip(sd_pipe, keyring, tmp_path):
    stages = [
        trustgain.build_stage("prompt.normalize", max_chars=50),
        "generate.latent_trace",
        trustgain.build_stage("audit.outputs", min_std=1.0),
    ]
    pipe = wrap(sd_pipe, stages, keyring=keyring, output_format="jpeg", jpeg_quality=80)
    path = pipe.save_config(tmp_path / "trustgain.json")
    loaded = TrustPipeline.from_config(pipe.generator, path, keyring=keyring)
    assert loaded.stages == pipe.stages
    assert loaded.config.output_format == "jpeg" and loaded.config.jpeg_quality == 80
    with pytest.raises(trustgain.errors.OutputExistsError):
        pipe.save_config(path)


def test_request_validation():
    with pytest.raises(trustgain.errors.ConfigError):
        GenerationRequest(prompt="x", num_images_per_prompt=0)
    with pytest.raises(trustgain.errors.ConfigError, match="managed by trustgain"):
        from tiny import tiny_ddim_pipeline

        from trustgain.generators import DiffusersGenerator

        DiffusersGenerator(tiny_ddim_pipeline()).kwargs(GenerationRequest(extra={"latents": 1}))


def test_pipeline_requires_a_keyring(sd_pipe):
    with pytest.raises(trustgain.errors.ConfigError, match="KeyRing"):
        wrap(sd_pipe, keyring=None)
