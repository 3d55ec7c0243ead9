"""trustgain.watermark.mark_vae: the attack channel, a few training steps on the shipped model,
the output folder and its checks, and the shipped vae_mark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from trustgain.models import MINI_SD_ID, load_mini_sd, mark_vae_for, reliability_for
from trustgain.watermark import mark_vae as mv
from trustgain.watermark.detector_train_data import to_pixels


@pytest.fixture(scope="module")
def pipe(one_torch_thread):
    return load_mini_sd()


@pytest.fixture(scope="module")
def trained(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "vae_mark"
    report = mv.run(MINI_SD_ID, out, samples=12, minutes=5, steps=3, reliability_samples=9,
                    e2e_minutes=5, e2e_steps=2, progress=False, command="test")
    return out, report


@pytest.mark.parametrize("name", mv.CONDITIONS)
def test_channel_is_the_real_attack_forward_and_differentiable(name):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    pixels = to_pixels(torch.from_numpy(u8)).requires_grad_(True)
    out = mv.through_channel(pixels, name, np.random.default_rng(1))
    real = mv.real_attack(u8, name, np.random.default_rng(1))
    assert torch.allclose(out, real, atol=1e-6)
    out.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["blur1", "resize0.5_restored"])
def test_stand_in_follows_the_real_attack(name):
    # a smooth image, so the comparison is about the filter, not 8-bit noise
    y, x = np.mgrid[0:32, 0:32]
    u8 = np.stack([(127 + 100 * np.sin(x / 3 + c) * np.cos(y / 5)).astype(np.uint8)
                   for c in range(3)], -1)[None]
    real = mv.real_attack(u8, name, np.random.default_rng(0))
    soft = mv.stand_in(to_pixels(torch.from_numpy(u8)), name)
    assert float((soft - real).abs().mean()) < 0.02


def test_jpeg_stand_in_is_the_codec_not_the_identity():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:32, 0:32]
    smooth = np.stack([(127 + 90 * np.sin(x / 4 + c) * np.cos(y / 6)).astype(np.uint8)
                       for c in range(3)], -1)[None]
    u8 = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    real = mv.real_attack(u8, "jpeg50", rng)
    pixels = to_pixels(torch.from_numpy(u8)).requires_grad_(True)
    soft = mv.stand_in(pixels, "jpeg50")
    # close to PIL's JPEG 50, much closer than the input is
    gap, before = (soft.detach() - real).abs().mean(), (pixels.detach() - real).abs().mean()
    assert float(gap) < 0.5 * float(before)
    # the gradient of a checkerboard (what JPEG 50 drops) is damped, that of a flat change kept
    # at about the identity's unit gain
    checker = torch.from_numpy((-1.0) ** (x + y)).float().expand(1, 3, 32, 32)
    flat = torch.ones(1, 3, 32, 32)
    damp = [float(torch.autograd.grad((soft * d).sum(), pixels, retain_graph=True)[0].mul(d)
                  .sum()) / float(d.pow(2).sum()) for d in (checker, flat)]
    assert damp[0] < 0.2 and 0.7 < damp[1] < 1.5


def test_jpeg_stand_in_without_kornia_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "kornia.enhance", None)  # import fails
    with pytest.raises(mv.DetectorTrainError, match=r"needs kornia: pip install"):
        mv.stand_in(torch.zeros(1, 3, 8, 8), "jpeg50")


def test_warmup_ramps_the_learning_rate():
    vae = AutoencoderKL(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
                        latent_channels=4, sample_size=8)
    x0 = torch.randn(16, 4, 8, 8) * 0.1
    reference = torch.zeros(16, 3, 8, 8)
    seen = []
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.optim.Adam, "step", spy)
        log = mv.train_mark_vae(vae, x0, reference, minutes=5, steps=6, lr=1e-3, batch=7,
                                warmup=4, progress=False)
    assert log["warmup"] == 4 and log["steps"] == 6
    assert seen == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_focus_changes_the_step_and_is_logged():
    def one_step(focus):
        torch.manual_seed(0)
        vae = AutoencoderKL(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
                            latent_channels=4, sample_size=8)
        x0 = torch.randn(16, 4, 8, 8) * torch.linspace(0.01, 1, 16).view(-1, 1, 1, 1)
        log = mv.train_mark_vae(vae, x0, torch.zeros(16, 3, 8, 8), minutes=5, steps=1,
                                batch=14, focus=focus, progress=False)
        return log, torch.cat([p.detach().flatten() for p in vae.parameters()])

    (plain_log, plain), (hard_log, hard) = one_step(0.0), one_step(2.0)
    _, again = one_step(0.0)
    assert plain_log["focus"] == 0.0 and hard_log["focus"] == 2.0
    assert torch.equal(plain, again) and not torch.equal(plain, hard)


def test_averaging_shift_is_a_difference_of_two_means():
    rng = np.random.default_rng(0)
    reference = torch.from_numpy(rng.uniform(-1, 1, (50, 3, 8, 8))).float()
    shifts = mv.averaging_shifts(reference, 4, np.random.default_rng(3), scale=(1.0, 1.0))
    assert shifts.shape == (4, 3, 8, 8)
    # the same draws by hand: two sets of 20 per shift, mean minus mean
    idx = np.random.default_rng(3).integers(0, 50, (4, 2, 20))
    by_hand = reference[idx[:, 0]].mean(1) - reference[idx[:, 1]].mean(1)
    assert torch.allclose(shifts, by_hand, atol=1e-6)
    half = mv.averaging_shifts(reference, 4, np.random.default_rng(3), scale=(0.5, 0.5))
    assert torch.allclose(half, by_hand / 2, atol=1e-6)
    # no spread among the images, no shift
    same = mv.averaging_shifts(reference[:1].expand(10, -1, -1, -1), 3, rng)
    assert float(same.abs().max()) == 0
    assert mv.SHIFT in mv.TRAINED and set(mv.CONDITIONS) < set(mv.TRAINED)


def test_run_writes_a_pair_that_differs_where_it_should(pipe, trained):
    out, _ = trained
    tuned = AutoencoderKL.from_pretrained(out).state_dict()
    base = pipe.vae.state_dict()
    assert tuned.keys() == base.keys()
    for prefix in ("decoder.", "encoder."):
        assert any(not torch.equal(tuned[n], base[n].float()) for n in base
                   if n.startswith(prefix)), prefix
    saved = json.loads((out / "training.json").read_text())
    assert saved["training"]["steps"] == 3 and saved["command"] == "test"
    e2e = saved["training"]["end_to_end"]
    assert e2e["steps"] == 2 and e2e["conditions"] == list(mv.CONDITIONS)
    held = saved["held_out"]
    assert 10 < held["psnr_db"] < 100 and 0 <= held["judge_agreement"] <= 1
    assert saved["reliability"]["samples"] == 9


def test_pipeline_untouched(pipe, trained):
    fresh = load_mini_sd()
    for name, value in fresh.vae.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[name], value), name


def test_model_folder_finds_its_mark_vae_and_reliability(trained):
    out, _ = trained
    vae = mark_vae_for(str(out.parent))
    assert isinstance(vae, AutoencoderKL) and not vae.training
    rel = reliability_for(str(out.parent), "mark")
    assert rel is not None and rel.meta["encoder"] == "mark" and rel.size == 4 * 8 * 8
    assert reliability_for(str(out.parent)) is None  # no vae_detector there
    assert mark_vae_for(str(out.parent.parent)) is None
    with pytest.raises(ValueError, match="vae must be"):
        reliability_for(None, "other")


def test_refuses_existing_output_and_bad_init_before_work(trained, tmp_path, capsys):
    out, _ = trained
    assert mv.main(["-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert mv.main(["-o", str(tmp_path / "new"), "--init", str(tmp_path)]) == 1
    assert "not a VAE folder" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    AutoencoderKL(latent_channels=2, block_out_channels=(8,), norm_num_groups=4,
                  sample_size=32).save_pretrained(tmp_path / "other")
    assert mv.main(["-o", str(tmp_path / "new"), "--init", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert "does not fit trustgain-mini-sd: latent_channels 2 where the pipeline's VAE has 4" \
        in err, err
    assert not (tmp_path / "new").exists()
    assert mv.main(["-o", str(tmp_path / "new"), "--reliability-samples", "3"]) == 1
    assert "at least 9" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        mv.main(["-o", str(tmp_path / "x"), "--samples", "0"])
    assert exc.value.code == 2


def test_latent_mismatch_names_what_differs(pipe):
    assert mv.latent_mismatch(pipe.vae, pipe.vae) is None
    fewer = AutoencoderKL(latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
                          down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2,
                          scaling_factor=pipe.vae.config.scaling_factor)
    assert "1 downsampling steps where the pipeline's VAE has 2" \
        in mv.latent_mismatch(fewer, pipe.vae)
    scaled = AutoencoderKL.from_config({**pipe.vae.config, "scaling_factor": 0.5})
    assert "scaling_factor 0.5" in mv.latent_mismatch(scaled, pipe.vae)


def test_reliability_fit_refuses_a_mark_vae_of_another_latent_space(pipe, tmp_path, capsys):
    from trustgain.watermark.reliability_fit import main

    model = tmp_path / "model"
    pipe.save_pretrained(model)
    AutoencoderKL.from_config({**pipe.vae.config, "scaling_factor": 0.5}).save_pretrained(
        model / "vae_mark")
    (tmp_path / "prompts.txt").write_text("a handwritten seven\n")
    out = tmp_path / "rel.json"
    capsys.readouterr()  # the saves' progress bars
    assert main(["-o", str(out), "--model", str(model), "--mark-vae", "--samples", "9",
                 "--prompts", str(tmp_path / "prompts.txt"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "does not fit its pipeline: scaling_factor 0.5" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        mv.main(["--help"])
    assert "--init vae_mark" in capsys.readouterr().out


def test_shipped_mark_vae_keeps_more_of_the_latent_than_the_detector_path():
    """The shipped pair against the pipeline decoder + detector encoder, on the same 12
    initial latents and JPEG 50 files: more signs of z_T come back (measured margin about 0.05;
    the test asks for any gain larger than 12 x 256 draws' noise allows by chance)."""
    from trustgain.models import load_detector_vae
    from trustgain.watermark.attacks import SUITE
    from trustgain.watermark.latent_invert import invert_images

    pipe = load_mini_sd()
    mark = mark_vae_for(None)
    rel = reliability_for(None, "mark")
    assert rel is not None and rel.meta["encoder"] == "mark" and rel.meta["samples"] >= 1000
    z = torch.randn((12, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    from trustgain.bench.models import prompts_for

    prompts = prompts_for(1)[0] + prompts_for(1)[0][:2]
    rng = np.random.default_rng(0)

    def signs(vae, encoder):
        pipe.vae = vae
        images = pipe(prompts, num_inference_steps=10, guidance_scale=4.0, latents=z).images
        attacked = [SUITE["jpeg50"](im, rng) for im in images]
        inv = invert_images(pipe, attacked, num_inference_steps=10, encoder=encoder)
        return float(((inv > 0) == (z > 0)).float().mean())

    plain = signs(pipe.vae, load_detector_vae())
    marked = signs(mark, mark)
    assert marked > plain + 0.02, (plain, marked)


def _tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
                         latent_channels=4, sample_size=8)


def test_end_to_end_phase_moves_the_encoder_only_and_lowers_the_z_error():
    from trustgain.watermark.mark_vae_e2e import train_encoder_e2e

    vae = _tiny_vae()
    rng = torch.Generator().manual_seed(1)
    x0 = torch.randn(32, 4, 8, 8, generator=rng)
    z = x0.flip(1) * 1.5  # a fixed map from x0 to z: the inverter's "exact" inverse
    seen = torch.tanh(x0[:, :3])  # the images carry three of the four channels
    views = {"none": seen, "jpeg50": seen + 0.05 * torch.randn(seen.shape, generator=rng)}

    def inverter(latents):
        return latents.flip(1) * 1.5

    before = {k: v.clone() for k, v in vae.state_dict().items()}

    @torch.no_grad()
    def z_error():
        return sum(float(((inverter(vae.encode(v).latent_dist.mean * vae.config.scaling_factor)
                           - z) ** 2).mean()) for v in views.values())

    start = z_error()
    log = train_encoder_e2e(vae, views, x0, z, inverter, minutes=5, steps=40, lr=3e-3,
                            batch=16, progress=False)
    assert log["steps"] == 40 and log["batch"] == 16 and log["conditions"] == list(views)
    assert len(log["history"]) == 2 and set(log["history"][-1]["z_error"]) == set(views)
    assert z_error() < 0.9 * start
    after = vae.state_dict()
    for name, value in before.items():
        if not name.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(after[name], value), name
    assert any(not torch.equal(after[n], before[n]) for n in before if n.startswith("encoder."))
    assert all(p.requires_grad for p in vae.parameters()) and not vae.training


def test_end_to_end_phase_stops_on_divergence():
    from trustgain.watermark.mark_vae_e2e import train_encoder_e2e

    vae = _tiny_vae()
    x0 = torch.randn(8, 4, 8, 8)
    with pytest.raises(mv.DetectorTrainError, match="diverged at step 0"):
        train_encoder_e2e(vae, {"none": torch.zeros(8, 3, 8, 8)}, x0, x0,
                          lambda latents: latents * float("nan"), minutes=5, steps=3,
                          progress=False)
