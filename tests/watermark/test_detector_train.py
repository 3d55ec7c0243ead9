"""trustgain.watermark.detector_train on the shipped tiny pipeline: a few steps of each phase."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from trustgain.models import MINI_SD_ID, load_mini_sd
from trustgain.watermark import detector_train as dt
from trustgain.watermark.latent_invert import ddim_invert

SETTINGS = dt.Settings(samples=16, eval_samples=8, x0_seconds=60, e2e_seconds=60, x0_steps=2,
                       e2e_steps=2, batch=8, e2e_batch=4, gen_batch=16, steps=5, workers=2,
                       reliability_samples=9)
DECODER = ("decoder.", "post_quant_conv.")


@pytest.fixture(scope="module")
def pipe(one_torch_thread):
    return load_mini_sd()


@pytest.fixture(scope="module")
def trained(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("detector") / "vae"
    report = dt.run(MINI_SD_ID, out, SETTINGS, progress=False, command="test")
    return out, report


def test_decoder_kept_encoder_tuned(pipe, trained):
    out, _ = trained
    tuned = AutoencoderKL.from_pretrained(out).state_dict()
    base = pipe.vae.state_dict()
    assert tuned.keys() == base.keys()
    for name, value in base.items():
        if name.startswith(DECODER):
            assert torch.equal(tuned[name], value.float()), name
    changed = [n for n in base if n.startswith(("encoder.", "quant_conv."))
               and not torch.equal(tuned[n], base[n].float())]
    assert changed


def test_pipeline_untouched(pipe, trained):
    fresh = load_mini_sd()
    for name, value in fresh.vae.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[name], value), name


def test_training_json(trained):
    out, report = trained
    saved = json.loads((out / "training.json").read_text())
    assert saved == json.loads(json.dumps(report))
    for field in ("command", "model", "hardware", "seconds", "settings", "losses", "eval"):
        assert field in saved
    # the folder's reliability was fitted for this encoder (9 samples x 6 conditions)
    from trustgain.watermark.latent_reliability import Reliability

    rel = Reliability.load(out / "reliability.json")
    assert rel.size == 256 and rel.meta["pairs"] == 54 and rel.meta["encoder"] == "detector"
    assert saved["reliability"]["samples"] == 9
    assert saved["hardware"]["torch"] == torch.__version__
    assert saved["settings"]["samples"] == 16
    assert saved["phase1_x0"]["steps"] == 2 and saved["phase2_e2e"]["steps"] == 2
    assert all(np.isfinite(v) for v in saved["losses"].values())
    for which in ("base", "tuned"):
        assert list(saved["eval"][which]) == list(dt.EVAL_ATTACKS)
        for scores in saved["eval"][which].values():
            assert 0.0 <= scores["sign_accuracy"] <= 1.0
            assert 0.0 <= scores["tpr_sign_at_1e-6"] <= 1.0
    assert not list(out.parent.glob(".vae.*"))  # no temporary folder left behind


def test_refuses_to_overwrite(trained, capsys):
    out, _ = trained
    before = (out / "training.json").read_bytes()
    code = dt.main(["--model", MINI_SD_ID, "-o", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error:") and "--overwrite" in err and len(err.splitlines()) == 1
    assert (out / "training.json").read_bytes() == before


def test_overwrite_replaces(tmp_path, pipe):
    out = tmp_path / "vae"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(dt.DetectorTrainError):
        dt.save_output(pipe.vae, {"x": 1}, out)
    dt.save_output(pipe.vae, {"x": 2}, out, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "training.json").read_text()) == {"x": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]
    (tmp_path / "file").write_text("")
    with pytest.raises(dt.DetectorTrainError, match="not a folder"):
        dt.check_output(tmp_path / "file", overwrite=True)


def test_inverter_matches_detector(pipe):
    latents = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    ours = dt.Inverter(pipe, 5).latents(latents, batch=2)
    theirs = ddim_invert(pipe, latents, num_inference_steps=5)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_inverter_is_differentiable(pipe):
    latents = torch.randn((2, 4, 8, 8), requires_grad=True)
    dt.Inverter(pipe, 2)(latents).square().sum().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_attacks_and_masks():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    out, mask = dt.named_attack(image, "crop_centre_50", np.random.default_rng(0), (32, 32), 4)
    assert out.size == (32, 32) and mask.shape == (8, 8)
    assert 0 < mask.sum() < 64
    kinds = [dt.random_attack(image, np.random.default_rng(s), (32, 32), 4) for s in range(40)]
    assert all(o.size == (32, 32) and m.shape == (8, 8) for o, m in kinds)
    assert any(m.sum() < 64 for _, m in kinds) and any(m.all() for _, m in kinds)


def test_missing_components_and_prompts(tmp_path):
    with pytest.raises(dt.DetectorTrainError, match="has no unet"):
        dt.check_pipeline(SimpleNamespace(vae=object(), unet=None, scheduler=object()), "m")
    with pytest.raises(dt.DetectorTrainError, match="--prompts"):
        dt.load_prompts("someone/other-model", None)
    (tmp_path / "p.txt").write_text("a cat\n\n a dog \n")
    assert dt.load_prompts("someone/other-model", tmp_path / "p.txt") == ["a cat", "a dog"]
    assert len(dt.load_prompts(MINI_SD_ID, None)) == 200


def test_schedule_and_budget():
    assert dt.one_cycle_lr(0.0, 1.0) == pytest.approx(1 / 25)
    assert dt.one_cycle_lr(0.1, 1.0) == pytest.approx(1.0)
    assert dt.one_cycle_lr(1.0, 1.0) == pytest.approx(1 / 25 / 1e4)
    assert len(list(dt.budget(60, 3))) == 3
    assert list(dt.budget(0, None)) == [] and list(dt.budget(60, 0)) == []


def test_help_has_example(capsys):
    with pytest.raises(SystemExit) as exc:
        dt.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text and "--x0-steps" in text and "--overwrite" in text


def test_continue_from_an_earlier_run(trained, tmp_path):
    out, _ = trained
    settings = dt.Settings(**{**SETTINGS.__dict__, "x0_seconds": 0.0, "deadline": 600.0})
    report = dt.run(MINI_SD_ID, tmp_path / "more", settings, progress=False, init=str(out))
    assert report["init"] == str(out)
    assert report["deadline"]["scale"] == 1.0 and report["deadline"]["seconds"] == 600.0
    assert report["phase1_x0"]["steps"] == 0 and report["phase2_e2e"]["steps"] == 2
    assert list(report["eval"]["init"]) == list(dt.EVAL_ATTACKS)
    start = AutoencoderKL.from_pretrained(out).state_dict()
    more = AutoencoderKL.from_pretrained(tmp_path / "more").state_dict()
    assert any(not torch.equal(start[n], more[n]) for n in start if n.startswith("encoder."))


def test_init_with_another_decoder_refused(pipe, trained, tmp_path):
    out, _ = trained
    other = AutoencoderKL.from_pretrained(out)
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(0.1)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(dt.DetectorTrainError, match="decoder"):
        dt.load_init(str(tmp_path / "other"), MINI_SD_ID, pipe)
    with pytest.raises(dt.DetectorTrainError, match="not 'detector'"):
        dt.load_init(str(tmp_path / "missing"), MINI_SD_ID, pipe)
    assert dt.load_init("detector", MINI_SD_ID, pipe) is not None


def test_deadline_shrinks_the_phases_to_fit():
    settings = dt.Settings(x0_seconds=100.0, e2e_seconds=300.0, deadline=100.0)
    fitted, fit = dt.fit_deadline(settings, elapsed=40.0, seconds={"eval_base": 5.0})
    # 100 s - 40 s spent - (2 x 5 s + 10 s) for the last evaluation = 40 s for 400 planned
    assert fit["scale"] == 0.1
    assert (fitted.x0_seconds, fitted.e2e_seconds) == pytest.approx((10.0, 30.0))
    roomy, fit = dt.fit_deadline(dataclasses.replace(settings, deadline=1e4), 40.0, {})
    assert fit["scale"] == 1.0 and roomy.e2e_seconds == 300.0
    assert dt.fit_deadline(dt.Settings(), 1e6, {}) == (dt.Settings(), {})
    with pytest.raises(dt.DetectorTrainError, match="leaves no time to train"):
        dt.fit_deadline(settings, elapsed=95.0, seconds={"eval_base": 5.0})


def test_deadline_recorded_and_validated(trained, capsys, tmp_path):
    _, report = trained
    assert report["deadline"] == {}
    code = dt.main(["--model", MINI_SD_ID, "-o", str(tmp_path / "x"), "--deadline", "0"])
    assert code == 1 and "--deadline must be" in capsys.readouterr().err
