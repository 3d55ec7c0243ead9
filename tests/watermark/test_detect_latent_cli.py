"""`trustgain watermark detect-latent`: record mode from the embedded record, blind mode without."""

from __future__ import annotations

import json
import random
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from trustgain import KeyRing, wrap
from trustgain.cli.main import main
from trustgain.models import load_mini_sd
from trustgain.watermark.latent import LatentMark

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECORD_ID, NONCE_SEED = 5, 0  # a draw whose p-value is about 2e-12 (record mode)


def _ring(seed: int) -> KeyRing:
    signing = Ed25519PrivateKey.from_private_bytes(bytes([seed + 1]) * 32)
    return KeyRing(master_secret=bytes([seed]) * 32, signing_key=signing)


def _fixed_draws(tmp_path, monkeypatch) -> KeyRing:
    """A keyring saved as ring.json, and the record id and nonce counter (random per run)
    fixed, so that the marked image, hence its p-value, is the same on every run."""
    monkeypatch.setenv("TRUSTGAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("trustgain.pipeline.uuid.uuid4", lambda: uuid.UUID(int=RECORD_ID))
    monkeypatch.setattr("trustgain.watermark.latent.random.SystemRandom",
                        lambda: random.Random(NONCE_SEED))
    ring = _ring(3)
    ring.save(tmp_path / "ring.json")
    return ring


def test_detect_latent_reads_the_record_and_falls_back_to_blind(tmp_path, capsys,
                                                                  monkeypatch):
    ring = _fixed_draws(tmp_path, monkeypatch)
    _ring(4).save(tmp_path / "other.json")
    # the benchmark's prompt family and guidance: the detector encoder was tuned on them
    art = wrap(load_mini_sd(), [LatentMark()], keyring=ring)(
        "a handwritten seven", seed=9, num_inference_steps=25, guidance_scale=4.0)
    out = tmp_path / "out"
    out.mkdir()
    art.save(out / "marked.png")
    Image.open(out / "marked.png").convert("RGB").save(tmp_path / "stripped.png")  # no record

    def run(*args):
        code = main(["watermark", "detect-latent", *args, "--model", "trustgain-mini-sd",
                     "--no-progress", "--json"])
        return code, capsys.readouterr()

    code, res = run(str(out / "marked.png"), str(tmp_path / "stripped.png"), "--keyring",
                    str(tmp_path / "ring.json"))
    assert code == 0, res.err
    doc = json.loads(res.out)
    assert doc["encoder"] == "detector" and doc["weights"] == "reliability"
    files = {f["file"].rsplit("/", 1)[-1]: f for f in doc["files"]}
    assert files["marked.png"]["mode"] == "record"
    stripped = files["stripped.png"]
    assert stripped["mode"] == "blind" and stripped["output_index"] is None
    assert files["marked.png"]["detected"]  # fixed key, seed, record id and nonce
    assert files["marked.png"]["p_value"] <= 1e-6
    code, res = run(str(out / "marked.png"), "--keyring", str(tmp_path / "ring.json"),
                    "--rank-weights")
    ranked = json.loads(res.out)
    assert code == 0 and ranked["weights"] == "rank"
    assert ranked["files"][0]["p_value"] != files["marked.png"]["p_value"]
    # the prompt known, read under it alone: inverted at the record's guidance (4), or at a
    # given one
    code, res = run(str(out / "marked.png"), "--keyring", str(tmp_path / "ring.json"),
                    "--prompt", "a handwritten seven", "--prompt-only")
    prompted = json.loads(res.out)["files"][0]
    assert code == 0 and prompted["detected"] and not json.loads(res.out)["both_ways"]
    code, res = run(str(out / "marked.png"), "--keyring", str(tmp_path / "ring.json"),
                    "--prompt", "a handwritten seven", "--prompt-only", "--guidance", "1")
    unguided = json.loads(res.out)["files"][0]
    assert code == 0 and unguided["p_value"] != prompted["p_value"]
    # the prompt guessed from the image (the judge names the digit: the same prompt here),
    # read both ways: the better of the empty-prompt and the prompted read, p doubled
    code, res = run(str(out / "marked.png"), "--keyring", str(tmp_path / "ring.json"),
                    "--guess-prompt")
    guessed = json.loads(res.out)
    assert code == 0 and guessed["prompt"] == "guessed"
    empty_p = files["marked.png"]["p_value"]
    assert empty_p != prompted["p_value"]
    assert guessed["files"][0]["p_value"] == 2 * min(empty_p, prompted["p_value"])
    assert guessed["files"][0]["prompted"] == (prompted["p_value"] < empty_p)
    # the prompt given, read both ways (the default): the same two reads as the guess here
    code, res = run(str(out / "marked.png"), "--keyring", str(tmp_path / "ring.json"),
                    "--prompt", "a handwritten seven")
    both = json.loads(res.out)
    assert code == 0 and both["prompt"] == "given" and both["both_ways"]
    assert both["files"][0]["p_value"] == guessed["files"][0]["p_value"]
    assert files["marked.png"]["prompted"] is False and prompted["prompted"] is True
    # the stripped copy read against the record given by hand: record mode again
    sidecar = out / "marked.png.trustgain.json"
    code, res = run(str(tmp_path / "stripped.png"), "--keyring", str(tmp_path / "ring.json"),
                    "--record", str(sidecar))
    given = json.loads(res.out)["files"][0]
    assert code == 0 and given["mode"] == "record"
    assert given["p_value"] == files["marked.png"]["p_value"]  # the same pixels
    # a record that does not verify, is not there, or marks under another key: refused
    doc = json.loads(sidecar.read_text())
    doc["record"]["stages"][0]["params"]["payload"] = "f" * 16  # the true one is 0 * 16
    (tmp_path / "tampered.json").write_text(json.dumps(doc))
    for record, why in ((tmp_path / "tampered.json", "signature"),
                        (tmp_path / "missing.json", "No such file"),
                        (sidecar, "not trusted")):  # another keyring: not its signer
        keyring = tmp_path / ("other.json" if record == sidecar else "ring.json")
        code = main(["watermark", "detect-latent", str(tmp_path / "stripped.png"), "--model",
                     "trustgain-mini-sd", "--keyring", str(keyring), "--record", str(record)])
        err = capsys.readouterr().err
        assert code == 2 and why in err and "--record" in err
    code, res = run(str(out / "marked.png"), "--keyring", str(tmp_path / "other.json"))
    wrong = json.loads(res.out)["files"][0]
    assert code == 0 and wrong["mode"] == "blind" and not wrong["detected"]
    (tmp_path / "junk.png").write_bytes(b"not an image")
    code, res = run(str(tmp_path / "junk.png"), "--keyring", str(tmp_path / "ring.json"))
    assert code == 1 and "not an image" in res.out


def test_mark_vae_and_pipeline_encoder_exclude_each_other(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRUSTGAIN_HOME", str(tmp_path / "home"))
    _ring(3).save(tmp_path / "ring.json")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    code = main(["watermark", "detect-latent", str(tmp_path / "a.png"), "--model",
                 "trustgain-mini-sd", "--mark-vae", "--pipeline-encoder", "--keyring",
                 str(tmp_path / "ring.json")])
    assert code == 2 and "exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--guidance", "4"], "--guidance needs --prompt"),
    (["--prompt", "a 7", "--guess-prompt"], "exclude each other"),
    (["--prompt-only"], "--prompt-only needs --prompt"),
    (["--combine", "average"], "--combine applies to reading both ways"),
    (["--prompt", "a 7", "--prompt-only", "--combine", "best"], "--combine applies"),
    (["--guess-prompt", "--model", "./other-sd"], "trustgain-mini-sd only"),
])
def test_prompt_options_are_checked_first(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRUSTGAIN_HOME", str(tmp_path / "home"))
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    code = main(["watermark", "detect-latent", str(tmp_path / "a.png"), "--model",
                 "trustgain-mini-sd", *args])
    assert code == 2 and message in capsys.readouterr().err


def test_mark_vae_round_trip(tmp_path, capsys, monkeypatch):
    """Generated with the mark VAE and read back with --mark-vae."""
    ring = _fixed_draws(tmp_path, monkeypatch)
    art = wrap(load_mini_sd(mark_vae=True), [LatentMark()], keyring=ring)(
        "a handwritten seven", seed=9, num_inference_steps=25, guidance_scale=4.0)
    art.save(tmp_path / "marked.png")
    code = main(["watermark", "detect-latent", str(tmp_path / "marked.png"), "--model",
                 "trustgain-mini-sd", "--mark-vae", "--keyring", str(tmp_path / "ring.json"),
                 "--no-progress", "--json"])
    res = capsys.readouterr()
    assert code == 0, res.err
    doc = json.loads(res.out)
    assert doc["encoder"] == "mark" and doc["weights"] == "reliability"
    got = doc["files"][0]
    assert got["mode"] == "record" and got["detected"] and got["p_value"] <= 1e-6
    assert "its record says" not in res.err
    # the default on the mini model with its mark VAE: guessed prompt and empty, both ways
    assert doc["prompt"] == "guessed" and doc["both_ways"]
    code = main(["watermark", "detect-latent", str(tmp_path / "marked.png"), "--model",
                 "trustgain-mini-sd", "--mark-vae", "--no-guess-prompt", "--keyring",
                 str(tmp_path / "ring.json"), "--no-progress", "--json"])
    empty = json.loads(capsys.readouterr().out)
    assert code == 0 and empty["prompt"] == "none" and not empty["both_ways"]
    assert empty["files"][0]["prompted"] is False and empty["files"][0]["detected"]
    # the both-ways read is the better of two at twice its p-value
    empty_p = empty["files"][0]["p_value"]
    assert (got["p_value"] == 2 * empty_p) if not got["prompted"] else (
        got["p_value"] < 2 * empty_p)
    assert doc["combine"] == "best" and empty["combine"] is None
    # or the mean of the same two inversions, read once
    code = main(["watermark", "detect-latent", str(tmp_path / "marked.png"), "--model",
                 "trustgain-mini-sd", "--mark-vae", "--combine", "average", "--keyring",
                 str(tmp_path / "ring.json"), "--no-progress", "--json"])
    mean = json.loads(capsys.readouterr().out)
    assert code == 0 and mean["combine"] == "average" and mean["both_ways"]
    assert mean["files"][0]["detected"] and mean["files"][0]["p_value"] <= 1e-6
    assert mean["files"][0]["p_value"] not in (got["p_value"], empty_p)
    code = main(["watermark", "detect-latent", str(tmp_path / "marked.png"), "--model",
                 "trustgain-mini-sd", "--keyring", str(tmp_path / "ring.json"), "--no-progress",
                 "--json"])
    res = capsys.readouterr()
    assert code == 0 and json.loads(res.out)["encoder"] == "detector"
    assert "its record says it was drawn with the mark VAE; read it with --mark-vae" in res.err


def _other_space_vae(folder):
    """A tiny VAE with two latent channels: not the mini model's latent space."""
    from diffusers import AutoencoderKL

    AutoencoderKL(latent_channels=2, block_out_channels=(8,), norm_num_groups=4,
                  sample_size=32).save_pretrained(folder)


@pytest.mark.parametrize("command", [["watermark", "detect-latent", "a.png"],
                                     ["generate", "a seven", "-o", "out.png"]])
def test_mark_vae_missing_or_misfit_is_a_usage_error(command, tmp_path, capsys, monkeypatch):
    import shutil

    from trustgain.models import mini_sd_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRUSTGAIN_HOME", str(tmp_path / "home"))
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    model = tmp_path / "mini"
    shutil.copytree(mini_sd_path(), model, ignore=shutil.ignore_patterns("vae_mark"))
    # no vae_mark: refused before the (missing) keyring is read
    code = main([*command, "--model", str(model), "--mark-vae", "--keyring",
                 str(tmp_path / "absent.json")])
    assert code == 2 and "has no vae_mark folder" in capsys.readouterr().err
    _ring(3).save(tmp_path / "ring.json")
    _other_space_vae(model / "vae_mark")
    code = main([*command, "--model", str(model), "--mark-vae", "--keyring",
                 str(tmp_path / "ring.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "does not fit its pipeline: latent_channels 2" in err, err
    assert not (tmp_path / "out.png").exists()


def test_a_record_without_the_latent_stage_or_under_another_key_gives_no_params():
    from trustgain.cli.watermark_latent import _latent_params

    stage = {"name": "watermark.latent", "params": {"key_id": "k1", "payload": "00"}}
    assert _latent_params({"stages": [stage]}, "k1") == (stage["params"], "")
    params, why = _latent_params({"stages": [stage]}, "k2")
    assert params is None and why == "marked under k1, not under this keyring's k2"
    params, why = _latent_params({"stages": [{"name": "watermark.pixel", "params": {}}]}, "k1")
    assert params is None and "no 'watermark.latent' stage" in why


def test_a_record_of_several_outputs_is_read_with_one_inversion(tmp_path, capsys, monkeypatch):
    from trustgain.watermark import latent_invert
    from trustgain.watermark.latent_stats import sidak

    ring = _fixed_draws(tmp_path, monkeypatch)
    monkeypatch.setattr("trustgain.watermark.latent.random.SystemRandom",
                        lambda: random.Random(3))  # second output's p about 5e-12
    art = wrap(load_mini_sd(), [LatentMark()], keyring=ring)(
        "a handwritten seven", seed=9, num_inference_steps=25, guidance_scale=4.0,
        num_images_per_prompt=2)
    art.save(tmp_path / "second.png", index=1)
    Image.open(tmp_path / "second.png").convert("RGB").save(tmp_path / "stripped.png")
    doc = json.loads((tmp_path / "second.png.trustgain.json").read_text())
    assert doc.pop("output_index") == 1  # unsigned: a copy of the record may have lost it
    (tmp_path / "bare.json").write_text(json.dumps(doc))
    calls, invert = [], latent_invert.invert_candidates

    def spy(*args, **kwargs):
        calls.append(len(args[1]))
        return invert(*args, **kwargs)

    monkeypatch.setattr(latent_invert, "invert_candidates", spy)

    def read(record):
        code = main(["watermark", "detect-latent", str(tmp_path / "stripped.png"), "--model",
                     "trustgain-mini-sd", "--keyring", str(tmp_path / "ring.json"), "--record",
                     str(tmp_path / record), "--no-progress", "--json"])
        assert code == 0
        return json.loads(capsys.readouterr().out)["files"][0]

    known, unknown = read("second.png.trustgain.json"), read("bare.json")
    assert calls == [1, 1]  # one inversion each, not one per output of the record
    assert known["mode"] == unknown["mode"] == "record" and known["detected"]
    # which output it is unknown: both nonces tried, the best kept at its Sidak-corrected p
    assert unknown["p_value"] == pytest.approx(sidak(known["p_value"], 2), rel=1e-9)
    assert unknown["detected"] and unknown["payload"] == known["payload"]
    # and the best nonce names the output: the second, as the signed sidecar says
    assert known["output_index"] == unknown["output_index"] == 1
