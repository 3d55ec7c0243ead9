"""watermark.text: a keyed green-list mark on generated text, exact binomial detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binom
from tiny import tiny_lm, tiny_tokenizer_lm

import trustgain
from trustgain.errors import ConfigError
from trustgain.watermark.text import TextDetector, TextMark, detect_text, text_key


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer_lm(chat=False)


def _generate(lm, tok, ring, stages, seed):
    pipe = trustgain.wrap_text(lm, tok, stages, keyring=ring)
    return pipe("the cat sat", seed=seed, max_new_tokens=40, min_new_tokens=40,
                do_sample=True)


def test_marked_text_is_detected_with_its_key_only(lm, tok, keyring, other_keyring):
    marked = [_generate(lm, tok, keyring, [TextMark(bias=6.0)], s).texts[0] for s in range(4)]
    plain = [_generate(lm, tok, keyring, [], s).texts[0] for s in range(4)]
    mine = TextDetector(text_key(keyring), tokenizer=tok, model_config=lm.config)
    theirs = TextDetector(text_key(other_keyring), tokenizer=tok, model_config=lm.config)
    assert all(mine(t).detected for t in marked)
    assert not any(mine(t).detected for t in plain)
    assert not any(theirs(t).detected for t in marked)


def test_p_value_is_the_exact_binomial_tail(lm, tok, keyring):
    text = _generate(lm, tok, keyring, [TextMark(bias=6.0)], 9).texts[0]
    d = detect_text(text, key=text_key(keyring), tokenizer=tok, model_config=lm.config)
    gamma = int(lm.config.vocab_size * 0.25) / lm.config.vocab_size
    assert d.p_value == pytest.approx(binom.sf(d.green - 1, d.scored, gamma))
    assert 0 < d.scored <= 40 and d.green <= d.scored
    assert json.loads(json.dumps(d.to_dict())) == d.to_dict()


def test_null_p_values_are_uniform_enough_on_random_token_sequences(lm, tok, keyring):
    """Random tokens under the right key: the exact test never exceeds its level by much."""
    rng = np.random.default_rng(0)
    detector = TextDetector(text_key(keyring), tokenizer=tok, model_config=lm.config)
    ps = np.array([detector(rng.integers(2, lm.config.vocab_size, 60)).p_value for _ in range(300)])
    assert (ps <= 0.05).mean() <= 0.09 and (ps <= 0.01).mean() <= 0.03


def test_the_record_holds_settings_and_a_key_id_never_the_key(lm, tok, keyring):
    art = _generate(lm, tok, keyring, ["watermark.text"], 1)
    params = next(s for s in art.record.record["stages"] if s["name"] == "watermark.text")["params"]
    assert params["vocab_size"] == lm.config.vocab_size and params["key_id"].startswith("hkdf:")
    assert text_key(keyring).hex() not in json.dumps(art.record.record)
    processor = TextMark().processor(text_key(keyring), 27)
    assert text_key(keyring).hex() not in repr(processor) + repr(vars(processor).keys())


def test_short_text_scores_nothing_and_settings_are_checked(lm, tok, keyring):
    d = detect_text("", key=b"k" * 32, tokenizer=tok, model_config=lm.config)
    assert (d.p_value, d.scored, d.detected) == (1.0, 0, False)
    for bad in ({"greenlist_ratio": 1.0}, {"bias": -1}, {"context_width": 1}):
        with pytest.raises((ConfigError, TypeError)):
            TextMark(**bad)
    with pytest.raises(ConfigError, match="alpha"):
        detect_text("hello world", key=b"k" * 32, tokenizer=tok, model_config=lm.config,
                    alpha=0)
    with pytest.raises(ConfigError, match="16 bytes"):
        detect_text("hello world", key=15485863, tokenizer=tok, model_config=lm.config)


def test_every_bit_of_the_key_and_every_previous_token_change_the_green_lists(keyring):
    import torch

    key = text_key(keyring)
    flipped = bytes([key[0] ^ 0x80]) + key[1:]  # the highest bit only
    a, b = TextMark().processor(key, 1000), TextMark().processor(flipped, 1000)
    for previous in (0, 1, 999):
        seq = torch.tensor([previous])
        assert not torch.equal(a._get_greenlist_ids(seq), b._get_greenlist_ids(seq))
    assert not torch.equal(a._get_greenlist_ids(torch.tensor([0])),
                           a._get_greenlist_ids(torch.tensor([1])))


def test_a_leading_bos_is_dropped_not_a_crash(lm, tok, keyring):
    detector = TextDetector(text_key(keyring), tokenizer=tok, model_config=lm.config)
    assert detector([lm.config.bos_token_id, 5]).scored == 0
    assert detector([lm.config.bos_token_id, 5, 6, 7]).scored == 2


def test_an_image_generator_cannot_take_the_text_mark(sd_pipe, keyring):
    with pytest.raises(trustgain.TrustgainError, match="logits_processor"):
        trustgain.wrap(sd_pipe, ["watermark.text"], keyring=keyring)


def test_detect_text_command_reads_files_with_the_tokenizer_only(lm, tmp_path, capsys):
    from trustgain import KeyRing
    from trustgain.cli.main import main

    assert main(["keys", "create"]) == 0
    ring = KeyRing.load()
    model = tmp_path / "lm"
    lm.save_pretrained(model)
    tiny_tokenizer_lm(chat=False).save_pretrained(model)
    tok = tiny_tokenizer_lm(chat=False)
    for seed in range(2):
        art = _generate(lm, tok, ring, [TextMark(bias=6.0)], seed)
        art.save(tmp_path / "out" / f"marked{seed}.txt")
    (tmp_path / "out" / "plain.txt").write_text(_generate(lm, tok, ring, [], 5).texts[0])
    (tmp_path / "out" / "bad.txt").write_bytes(b"\xff\xfe")
    capsys.readouterr()
    code = main(["watermark", "detect-text", str(tmp_path / "out"), "--model", str(model),
                 "--json"])
    files = {f["file"].rsplit("/", 1)[1]: f for f in json.loads(capsys.readouterr().out)["files"]}
    assert code == 1 and files["bad.txt"]["reason"] == "not UTF-8 text (byte 0)"
    assert files["marked0.txt"]["detected"] and files["marked1.txt"]["detected"]
    assert not files["plain.txt"]["detected"]
    assert main(["watermark", "detect-text", str(tmp_path / "out" / "plain.txt"),
                 "--model", str(tmp_path / "nowhere.gguf")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_detect_text_refuses_devices_and_survives_a_leading_bos(lm, tmp_path, capsys):
    from trustgain.cli.main import main

    assert main(["keys", "create"]) == 0
    model = tmp_path / "lm"
    lm.save_pretrained(model)
    tiny_tokenizer_lm(chat=False).save_pretrained(model)
    (tmp_path / "bos.txt").write_text("[EOS] the")
    capsys.readouterr()
    code = main(["watermark", "detect-text", "/dev/zero", str(tmp_path / "bos.txt"),
                 "--model", str(model), "--json"])
    files = json.loads(capsys.readouterr().out)["files"]
    assert code == 1 and files[0]["reason"] == "not a regular file"
    assert files[1]["status"] == "ok" and files[1]["scored"] == 0
