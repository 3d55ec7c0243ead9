"""The shipped embedded models load, run and do what their cards claim (fast checks only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trustgain import models
from trustgain.models import data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    return models.load_mini_sd("cpu")


@pytest.fixture(scope="module")
def judge():
    return models.load_judge()


def test_shipped_folder_is_a_stock_sd_pipeline(pipe):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    index = json.loads((models.mini_sd_path() / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    direct = StableDiffusionPipeline.from_pretrained(models.mini_sd_path())
    assert isinstance(direct.vae, AutoencoderKL)
    assert isinstance(direct.unet, UNet2DConditionModel)
    assert isinstance(direct.text_encoder, CLIPTextModel)
    assert isinstance(direct.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.steps_offset == 1
    assert pipe.unet.dtype == torch.float32 and pipe.vae.dtype == torch.float32
    files = [p for p in models.mini_sd_path().rglob("*") if p.is_file()]
    detector = [p for p in files if p.parent.name == "vae_detector"]
    mark = [p for p in files if p.parent.name == "vae_mark"]
    assert sum(p.stat().st_size for p in files if p not in detector + mark) < 10_000_000
    assert 0 < sum(p.stat().st_size for p in detector) < 1_000_000  # detection-only encoder
    assert 0 < sum(p.stat().st_size for p in mark) < 2_500_000  # the mark VAE, float16
    assert all(p.suffix != ".bin" for p in files)


def test_generates_32px_image_with_hooks(pipe):
    seen: list[int] = []

    def on_step(p, i, t, kw):
        seen.append(int(t))
        return kw

    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    out = pipe("a handwritten seven", num_inference_steps=3, latents=latents,
               callback_on_step_end=on_step)
    assert out.images[0].size == (32, 32)
    assert len(seen) == 3
    again = pipe("a handwritten seven", num_inference_steps=3, latents=latents)
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(again.images[0]))


def test_tokenizer_knows_every_caption_word(pipe):
    tok = pipe.tokenizer
    for word in data.caption_vocabulary():
        pieces = tok.tokenize(word)
        assert pieces == [word + "</w>"], (word, pieces)
    rng = np.random.default_rng(0)
    looks = data.draw_looks(200, rng)
    for i, look in enumerate(looks):
        text = data.caption(i % 10, look, rng)
        ids = tok(text).input_ids
        assert tok.unk_token_id not in ids[1:-1], text
        assert len(ids) <= tok.model_max_length


def test_judge_reads_held_out_real_digits(judge):
    images, labels = data.load_split("test")
    pred, conf = models.classify_digits(data.upsample(images[:60]), judge)
    assert (pred.numpy() == labels[:60]).mean() >= 0.95
    assert conf.min() > 0 and conf.max() <= 1


def test_judge_accepts_pil_and_rejects_junk(judge):
    from PIL import Image

    images, labels = data.load_split("test")
    ink = data.upsample(images[:4])
    pil = [Image.fromarray((x[0].numpy() * 255).astype(np.uint8)).convert("RGB") for x in ink]
    pred, _ = models.classify_digits(pil, judge)
    assert pred.tolist() == labels[:4].tolist()
    with pytest.raises(TypeError):
        models.classify_digits("not an image", judge)


def test_split_is_fixed_and_disjoint():
    train, _ = data.load_split("train")
    test, _ = data.load_split("test")
    assert (len(train), len(test)) == (1437, 360)
    train_set = {x.tobytes() for x in train}
    assert sum(x.tobytes() in train_set for x in test) <= 5  # the scans hold a few duplicates


def test_prompted_digit_mostly_recognised(pipe, judge):
    prompts = [f"a handwritten {w}" for w in data.WORDS]
    latents = torch.randn((10, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    out = pipe(prompts, num_inference_steps=6, guidance_scale=4.0, latents=latents,
               output_type="pt")
    pred, _ = models.classify_digits(out.images, judge)
    assert (pred == torch.arange(10)).sum() >= 8, pred.tolist()


def test_detector_vae_keeps_the_decoder_and_tunes_the_encoder(pipe):
    det = models.load_detector_vae()
    ref, tuned = pipe.vae.state_dict(), det.state_dict()
    assert set(ref) == set(tuned)
    for name in ref:
        same = torch.equal(ref[name], tuned[name])
        if name.startswith(("encoder.", "quant_conv.")):
            continue
        assert same, name  # decoder, post_quant_conv: the pipeline's own
    changed = [n for n in ref if n.startswith("encoder.") and not torch.equal(ref[n], tuned[n])]
    assert len(changed) > 10
    assert det.config.scaling_factor == pipe.vae.config.scaling_factor


def test_detector_vae_for_finds_the_shipped_one_or_none(tmp_path):
    assert models.detector_vae_for(models.MINI_SD_ID) is not None
    assert models.detector_vae_for(str(tmp_path)) is None  # a model folder without vae_detector


def test_latent_factor_2_builds_a_16x16_latent_model():
    """``--latent-factor 2``: a two-level VAE (32x32 <-> 4x16x16) and a UNet on 16x16 latents,
    so a mark in the initial latents gets 1,024 elements instead of 256."""
    from trustgain.models import build

    vae, unet = build.make_vae(2).eval(), build.make_unet(16).eval()
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
        assert z.shape == (1, 4, 16, 16)
        assert vae.decode(z).sample.shape == (1, 3, 32, 32)
        eps = unet(z, 10, encoder_hidden_states=torch.zeros(1, 4, 64)).sample
    assert eps.shape == z.shape
    assert build.make_vae().config.block_out_channels == (32, 64, 64)  # shipped: factor 4
    with pytest.raises(ValueError, match="4 or 2"):
        build.make_vae(8)


def test_train_latent_factor_2_refuses_the_shipped_folder_and_vae_from():
    from trustgain.models import train

    for argv in (["mini-sd", "--latent-factor", "2"],
                 ["mini-sd", "--latent-factor", "2", "--out", "x", "--vae-from", "y"]):
        with pytest.raises(SystemExit, match="needs --out DIR"):
            train.main(argv)


def test_unet_from_needs_out_and_a_model_folder(tmp_path):
    from trustgain.models import train

    with pytest.raises(SystemExit, match="needs --out DIR"):
        train.main(["mini-sd", "--unet-from", models.MINI_SD_ID])
    with pytest.raises(SystemExit, match="no unet/ folder"):
        train.main(["mini-sd", "--unet-from", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match=r"no vae/config\.json"):
        train.main(["mini-sd", "--vae-from", str(tmp_path), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_load_for_finetune_moves_the_shipped_unet_to_16x16_latents():
    """The fine-tune path of ``--unet-from``: the shipped UNet, fully convolutional, runs on
    a factor-2 VAE's 16x16 latents and records that size as its default."""
    from trustgain.models.train_sd import load_for_finetune

    tok, text, unet = load_for_finetune(str(models.mini_sd_path()), 16)
    assert unet.config.sample_size == 16 and unet.dtype == torch.float32
    ids = tok(["a handwritten seven"], padding="max_length", max_length=8,
              truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        states = text(ids)[0]
        eps = unet(torch.randn(1, 4, 16, 16), 500, encoder_hidden_states=states).sample
    assert eps.shape == (1, 4, 16, 16) and torch.isfinite(eps).all()


def test_mini_sd_card_names_latent_shape_and_fine_tune_origin():
    from trustgain.models.cards import mini_sd_card

    shipped = mini_sd_card({"scaling_factor": 0.7}, None)
    assert "latents 4x8x8" in shipped and "fine-tuned" not in shipped
    variant = mini_sd_card({"latent_shape": [4, 16, 16], "unet_from": "/m/trustgain-mini-sd"},
                           None)
    assert "latents 4x16x16" in variant and "cross-attention at 16x16 and\n  8x8" in variant
    assert "fine-tuned from `/m/trustgain-mini-sd`" in variant


@pytest.mark.slow
def test_fine_tune_the_shipped_unet_onto_a_factor_2_vae_end_to_end(tmp_path):
    """The two commands of the factor-2 recipe, at 2 steps each: a new VAE (``--steps 0``),
    then the shipped text encoder + UNet fine-tuned on its latents (``--unet-from``)."""
    import json

    from diffusers import StableDiffusionPipeline

    from trustgain.models import train

    vae_dir, out = tmp_path / "vae", tmp_path / "ft"
    train.main(["mini-sd", "--latent-factor", "2", "--steps", "0", "--vae-steps", "2",
                "--copies", "1", "--out", str(vae_dir)])
    train.main(["mini-sd", "--vae-from", str(vae_dir), "--unet-from", "trustgain-mini-sd",
                "--steps", "2", "--copies", "1", "--batch", "4", "--warmup", "1",
                "--out", str(out)])
    log = json.loads((out / "training.json").read_text())
    assert log["latent_shape"] == [4, 16, 16] and log["recipe"]["latent_factor"] == 2
    assert log["unet_from"].endswith("trustgain-mini-sd") and log["unet_steps_done"] == 2
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.unet.config.sample_size == 16
    img = pipe("a handwritten three", num_inference_steps=2, output_type="np").images[0]
    assert img.shape == (32, 32, 3)
