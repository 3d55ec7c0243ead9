"""The library path (wrap / TrustPipeline / Artifact.save) on odd input: refused early, in
one line, and never after a generation has run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trustgain import GenerationRequest, TrustPipeline, wrap
from trustgain.audit.outputs import OutputCheck
from trustgain.config import PipelineConfig
from trustgain.errors import ConfigError
from trustgain.generators.diffusers import DiffusersGenerator
from trustgain.provenance.record import SignedRecord, record_seed, request_matches
from trustgain.stage import build_stage

SD = dict(num_inference_steps=2, height=16, width=16)


@pytest.mark.parametrize(("kwargs", "says"), [
    (dict(seed="7"), "seed must be an integer"),
    (dict(seed=True), "seed must be an integer"),
    (dict(num_inference_steps=2.0), "num_inference_steps must be an integer"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (dict(prompt=["a", 3]), "prompt must be a string or a non-empty list of strings"),
    (dict(extra={"generator": torch.Generator()}), "'generator' is managed by trustgain"),
    (dict(extra={"prompt_embeds": torch.zeros(1)}), "only JSON values"),
])
def test_requests_are_checked_when_made(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        GenerationRequest(**kwargs)


def test_numpy_integers_and_prompt_lists_are_fine():
    r = GenerationRequest(prompt=["a cat", "a dog"], seed=np.int64(3), num_images_per_prompt=2)
    assert r.seed == 3 and type(r.seed) is int and r.batch_size == 4
    assert r.to_dict()["prompt"] == ["a cat", "a dog"]


def test_prompt_lists_through_prepare_stages_and_keyed_latents(sd_pipe, keyring):
    stages = ["privacy.redact", "prompt.normalize", "generate.keyed_latents"]
    art = wrap(sd_pipe, stages, keyring=keyring)(
        ["mail bob@example.com", "a dog"], seed=1, **SD)
    assert len(art.images) == 2
    redact = art.record.record["stages"][0]["params"]
    assert redact["prompt"] == {"EMAIL": 1} and redact["masked"] == 1


def test_one_side_given_draws_latents_as_diffusers_does(sd_pipe):
    gen = DiffusersGenerator(sd_pipe)
    default = gen.latent_shape(GenerationRequest())
    assert gen.latent_shape(GenerationRequest(height=40)) == default  # both reset, as diffusers


def test_record_keeps_seed_and_a_keyed_request_digest(sd_pipe, keyring, other_keyring):
    art = wrap(sd_pipe, keyring=keyring)("a secret prompt", **SD)
    record = art.record.record
    assert "request_sha256" not in record and "seed" not in record
    assert record_seed(record, keyring) == art.request.seed  # the owner can replay it
    assert record_seed(record, other_keyring) is None  # nobody else can read it
    assert str(art.request.seed) not in json.dumps(record)
    assert request_matches(record, art.request.to_dict(), keyring)
    assert not request_matches(record, art.request.replace(prompt="a guess").to_dict(), keyring)
    assert not request_matches(record, art.request.to_dict(), other_keyring)
    old = {k: v for k, v in record.items() if k != "request_hmac_sha256"}
    env = json.dumps({"record": old, "signature": ""})
    with pytest.raises(Exception, match="lacks request_hmac_sha256"):
        SignedRecord.from_envelope(env)


def test_huge_integers_in_a_record_are_malformed_not_a_crash():
    env = '{"record": {"x": %s}, "signature": ""}' % ("9" * 5000)
    with pytest.raises(Exception, match="record is not JSON") as info:
        SignedRecord.from_envelope(env)
    assert type(info.value).__name__ == "VerificationError"


@pytest.mark.parametrize(("name", "settings", "says"), [
    ("audit.outputs", dict(min_std=float("nan")), "min_std must be a finite number"),
    ("generate.latent_trace", dict(every=1.5), "every must be an integer"),
    ("watermark.latent", dict(payload_bits=64.5), "payload_bits must be an integer"),
    ("prompt.normalize", dict(max_chars=float("inf")), "max_chars must be an integer"),
    ("protect.rae", dict(method="ddpm"), "method must be 'pgd' in this stage"),
    ("privacy.memorization", dict(index=5), "index must be a non-empty path"),
    ("schedule.backend_steps", dict(deadline_s=float("nan")), "deadline_s must be a finite"),
    ("schedule.backend_steps", dict(steps="12"), "must be lists"),
    ("schedule.backend_steps", dict(reserve="no"), "reserve must be true or false"),
    ("schedule.backend_steps", dict(backends=[{"name": "x"}]), "lacks quality"),
])
def test_stage_settings_fail_when_the_stage_is_built(name, settings, says):
    with pytest.raises(ConfigError, match=says):
        build_stage(name, **settings)


def test_pipeline_level_mistakes_are_refused_at_wrap(sd_pipe, keyring):
    with pytest.raises(ConfigError, match="is a stage class; pass an instance"):
        wrap(sd_pipe, [OutputCheck], keyring=keyring)
    with pytest.raises(ConfigError, match="not the string"):
        wrap(sd_pipe, "audit.outputs", keyring=keyring)
    with pytest.raises(ConfigError, match="output_format must be"):
        wrap(sd_pipe, keyring=keyring, output_format="gif")
    with pytest.raises(ConfigError, match=r"jpeg_quality must be an integer in 1\.\.100"):
        TrustPipeline(DiffusersGenerator(sd_pipe), keyring=keyring, jpeg_quality=500)
    with pytest.raises(ConfigError, match="does not serve"):
        wrap(sd_pipe, ["schedule.backend_steps"], keyring=keyring)
    with pytest.raises(ConfigError, match="output_format must be"):
        PipelineConfig(output_format="webp")


def test_save_never_writes_half_a_pair(sd_pipe, keyring, tmp_path):
    art = wrap(sd_pipe, keyring=keyring)("a cat", seed=1, **SD)
    out = tmp_path / "x.png"
    (tmp_path / "x.png.trustgain.json").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        art.save(out, overwrite=True)
    assert not out.exists()
    with pytest.raises(ConfigError, match="index must be an integer"):
        art.save(tmp_path / "y.png", index="0")
    stale = tmp_path / "z.png.trustgain.json"
    art.save(tmp_path / "z.png")
    other = wrap(sd_pipe, keyring=keyring)("a dog", seed=2, **SD)
    other.save(tmp_path / "z.png", overwrite=True, sidecar=False)
    assert not stale.exists()  # it described the replaced image, not this one


def test_shipped_model_is_recorded_by_name_not_path():
    from trustgain.models import MINI_SD_ID, load_mini_sd

    assert DiffusersGenerator(load_mini_sd()).model_id == MINI_SD_ID


def test_config_digest_is_the_same_wherever_the_model_lives(tmp_path):
    """Records of one model agree across machines: no install folder in the digest."""
    import shutil

    from diffusers import DiffusionPipeline

    from trustgain.models import load_mini_sd, mini_sd_path

    shutil.copytree(mini_sd_path(), tmp_path / "copy")
    here = DiffusersGenerator(load_mini_sd())
    there = DiffusersGenerator(DiffusionPipeline.from_pretrained(tmp_path / "copy"))
    assert here.config_sha256() == there.config_sha256()
    assert "vae" not in here.describe() and here.decoder() == "vae"
    marked = DiffusersGenerator(load_mini_sd(mark_vae=True))
    assert marked.describe()["vae"] == "vae_mark"
    assert marked.config_sha256() == here.config_sha256()  # same architecture, other weights


@pytest.mark.parametrize(("text", "out"), [
    ("nu\u034fde", "nude"),  # combining grapheme joiner
    ("a\ufe01b", "ab"),  # a variation selector outside any emoji
    ("x\U000e0100y", "xy"),  # variation selectors supplement ("emoji smuggling")
    ("\u3164hi", "hi"),  # Hangul filler (NFKC makes it U+1160, still invisible)
    ("zero\u200bwidth", "zerowidth"),
    ("a\u200db", "ab"),  # a joiner between letters hides nothing a model should read
    ("\U0001f468\u200d\U0001f469\u200d\U0001f467", None),  # family: one emoji, kept whole
    ("\U0001f3f3\ufe0f\u200d\U0001f308", None),  # rainbow flag
    ("\u2764\ufe0f\ufe0f\ufe0f", "\u2764\ufe0f"),  # one presentation selector, not a payload
    ("\U0001f3f4\U000e0067\U000e0062\U000e0077\U000e006c\U000e0073\U000e007f", None),  # Wales
    # tag text after a black flag is not a flag ("ASCII smuggling"): the tags go
    ("\U0001f3f4\U000e0072\U000e0075\U000e006e\U000e007f!", "\U0001f3f4!"),
    ("hi\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f", "hi"),  # no flag base
])
def test_normalize_strips_ignorables_but_keeps_emoji_sequences(text, out):
    from trustgain.prompting.normalize import normalize_text

    assert normalize_text(text)[0] == (text if out is None else out)


def test_output_check_refuses_latents_before_generating(sd_pipe, keyring):
    from trustgain.errors import StageError

    with pytest.raises(StageError, match="output_type is 'latent'"):
        wrap(sd_pipe, ["audit.outputs"], keyring=keyring)("a cat", output_type="latent", **SD)
