"""The PGD core: budget, exactness against torchattacks, transforms, surrogate adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trustgain.errors import ConfigError, InputError
from trustgain.protection import ProtectConfig, pgd, protect, recover
from trustgain.protection import surrogates as S


def _linear2(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)).eval()


def _tiny_cnn(seed=0, n=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, n)).eval()


@pytest.fixture(scope="module")
def key(keyring):
    return keyring.derive("protect.rae", "residual").material


def test_matches_torchattacks_pgd_exactly_on_two_class_linear_model():
    """For two classes, sign(grad CE) == sign(grad margin): the loops must agree exactly."""
    torchattacks = pytest.importorskip("torchattacks")
    model = _linear2()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    eps, alpha, steps = 8 / 255, 2 / 255, 7
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    refs = pgd.references([model], x, y)
    ours = pgd.attack(x, [model], refs, eps=eps, alpha=alpha, steps=steps, momentum=0.0,
                      p_div=0.0, eot=(), samples=1, kappa=1e9, g=torch.Generator(),
                      random_start=False)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert (model(ours).argmax(1) != y).float().mean() > 0


def test_at_least_as_strong_as_torchattacks_on_cnn():
    torchattacks = pytest.importorskip("torchattacks")
    model = _tiny_cnn()
    x = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    theirs = torchattacks.PGD(model, eps=4 / 255, alpha=1 / 255, steps=10)(x, y)
    cfg = ProtectConfig(eps=4, steps=10, step_size=1.0, eot=(), diversity=0.0, block=1,
                        smooth=0.0)  # the plain core against plain PGD
    ours = pgd.perturb(x, key=b"", config=cfg, surrogates=[model], labels=y.tolist())
    acc = lambda a: float((model(a).argmax(1) == y).float().mean())  # noqa: E731
    assert acc(ours) <= acc(theirs) + 0.1
    assert acc(ours) < 0.5
    assert (ours - x).abs().max() <= 4 / 255 + 1e-6


def test_protect_budget_is_integer_exact_and_recovers(key):
    model = _tiny_cnn()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    img[0, :] = 0
    img[1, :] = 255  # clipping at both ends
    for eps in (1, 3, 8):
        cfg = ProtectConfig(eps=eps, steps=3)
        xp, sealed = protect(img, key=key, config=cfg, surrogates=[model], image_id="t")
        assert xp.dtype == np.uint8 and xp.shape == img.shape
        d = np.abs(xp.astype(int) - img)
        assert d.max() <= eps and d.max() > 0
        assert np.array_equal(recover(xp, sealed, key=key), img)


def test_block_perturbation_is_block_constant(key):
    model = _tiny_cnn()
    img = np.full((16, 16, 3), 128, np.uint8)
    cfg = ProtectConfig(eps=8, steps=4, block=2)
    xp, _ = protect(img, key=key, config=cfg, surrogates=[model], image_id="b")
    d = xp.astype(int) - img
    assert np.array_equal(d, d[::2, ::2].repeat(2, 0).repeat(2, 1))
    assert np.abs(d).max() > 0


def test_protect_grayscale_and_2d(key):
    model = S.Classifier(_tiny_cnn(), channels=3)
    img = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
    xp, sealed = protect(img, key=key, config=ProtectConfig(steps=3), surrogates=[model],
                         image_id="g")
    assert xp.shape == (16, 16)
    assert np.array_equal(recover(xp, sealed, key=key), img)


def test_deterministic_per_seed_and_id(key):
    model = _tiny_cnn()
    img = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    cfg = ProtectConfig(steps=4)
    a, _ = protect(img, key=key, config=cfg, surrogates=[model], image_id="same")
    b, _ = protect(img, key=key, config=cfg, surrogates=[model], image_id="same")
    assert np.array_equal(a, b)


def test_bad_inputs(key):
    model = _tiny_cnn()
    with pytest.raises(ConfigError, match="integer"):
        ProtectConfig(eps=0.03)
    with pytest.raises(ConfigError, match="EoT"):
        ProtectConfig(eot=("sharpen",))
    with pytest.raises(InputError, match="uint8"):
        protect(np.zeros((16, 16, 3)), key=key, config=ProtectConfig(), surrogates=[model],
                image_id="x")
    with pytest.raises(ConfigError, match="unknown protection method"):
        protect(np.zeros((16, 16, 3), np.uint8), key=key,
                config=ProtectConfig(method="nosuch"), surrogates=[model], image_id="x")
    with pytest.raises(ConfigError, match="surrogate"):
        protect(np.zeros((16, 16, 3), np.uint8), key=key, config=ProtectConfig(),
                surrogates=[], image_id="x")


@pytest.mark.parametrize("name", ["jpeg", "blur", "resize", "noise"])
def test_transforms_keep_shape_and_pass_gradients(name):
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = pgd.transform(x, name, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert pgd.diversity(x, torch.Generator().manual_seed(0)).shape == x.shape


def test_vae_encoder_surrogate_moves_latent(key):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                        norm_num_groups=4, sample_size=16).eval()
    sur = S.VAEEncoderSurrogate(vae)
    img = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    cfg = ProtectConfig(eps=8, steps=3, eot=(), diversity=0.0)
    xp, sealed = protect(img, key=key, config=cfg, surrogates=[sur], image_id="v")
    def to(a):
        return torch.from_numpy(a.transpose(2, 0, 1).copy()).float()[None] / 255

    rnd = np.clip(img.astype(int) + np.random.default_rng(4).choice([-8, 8], img.shape), 0, 255)
    with torch.no_grad():
        ref = sur.features(to(img))
        moved = (sur.features(to(xp)) - ref).pow(2).sum()
        random = (sur.features(to(rnd.astype(np.uint8))) - ref).pow(2).sum()
    assert moved > 2 * random
    assert np.array_equal(recover(xp, sealed, key=key), img)


def test_transformers_classifier_surrogate(key, tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=16,
                    num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    num_labels=3)
    ViTForImageClassification(cfg).save_pretrained(tmp_path)
    sur = S.HFImageClassifier.from_pretrained(str(tmp_path))
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # resized inside
    y = sur(x).argmax(1)
    adv = pgd.perturb(x, key=b"", config=ProtectConfig(eps=8, steps=5, eot=()),
                      surrogates=[sur])
    with torch.no_grad():  # a random ViT barely separates classes: check the margin moved
        before = pgd.margin_loss(sur(x), y, 1e9)
        after = pgd.margin_loss(sur(adv), y, 1e9)
    assert after > before + 0.05 * abs(float(before))


def test_judge_surrogate_and_ensemble(key):
    judge = S.JudgeSurrogate()
    img = np.zeros((32, 32, 3), np.uint8)
    img[8:24, 14:18] = 255  # a "1"
    cfg = ProtectConfig(eps=8, steps=2, eot=("blur",))
    models = [judge, S.Classifier(_tiny_cnn(n=10), size=16)]
    xp, sealed = protect(img, key=key, config=cfg, surrogates=models, image_id="j")
    assert np.abs(xp.astype(int) - img).max() <= 8
    assert np.array_equal(recover(xp, sealed, key=key), img)


def test_protect_batch_draws_per_image_and_recovers(key):
    """An image's noise comes from its id, not its batch-mates; every image recovers exactly."""
    from trustgain.protection import protect_batch

    rng = np.random.default_rng(5)
    a, b, c = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3))
    cfg = ProtectConfig(eps=8, steps=3, eot=("noise", "blur"), diversity=0.5)
    model = _tiny_cnn()
    ab = protect_batch([a, b], key=key, config=cfg, surrogates=[model], image_ids=["a", "b"])
    ac = protect_batch([a, c], key=key, config=cfg, surrogates=[model], image_ids=["a", "c"])
    assert np.array_equal(ab[0][0], ac[0][0])  # same id, same draws, other batch-mate
    aa = protect_batch([a, a], key=key, config=cfg, surrogates=[model], image_ids=["a", "a2"])
    assert not np.array_equal(aa[0][0], aa[1][0])  # another id, other noise
    one = protect(a, key=key, config=cfg, surrogates=[model], image_id="a")
    assert np.mean(one[0] == ab[0][0]) > 0.9  # batch of 1 vs 2: float rounding at most
    for (prot, sealed), orig in zip(ab + ac, [a, b, a, c], strict=True):
        assert np.abs(prot.astype(int) - orig.astype(int)).max() <= 8
        assert np.array_equal(recover(prot, sealed, key=key), orig)


def test_protect_batch_mixed_shapes_and_bad_input(key):
    from trustgain.protection import protect_batch

    rng = np.random.default_rng(6)
    imgs = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(16, 16, 3), (16, 16), (16, 16, 3)]]
    out = protect_batch(imgs, key=key, config=ProtectConfig(eps=4, steps=2, eot=()),
                        surrogates=[S.Classifier(_tiny_cnn(), channels=3)],
                        image_ids=["x", "y", "z"], batch_size=1)
    assert [o[0].shape for o in out] == [im.shape for im in imgs]
    with pytest.raises(InputError, match="tiny:"):
        protect_batch([imgs[0], np.zeros((4, 4, 3), np.uint8)], key=key,
                      config=ProtectConfig(eps=4, steps=2), surrogates=[_tiny_cnn()],
                      image_ids=["ok", "tiny"])
    with pytest.raises(InputError, match="image ids"):
        protect_batch(imgs, key=key, config=ProtectConfig(), surrogates=[_tiny_cnn()],
                      image_ids=["x"])


def test_smooth_gradient_gives_a_smoother_perturbation_that_still_attacks():
    """TI-FGSM (``smooth``): blurred gradients make neighbouring pixels move together."""
    model = _tiny_cnn()
    x = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)

    def run(smooth):
        cfg = ProtectConfig(eps=4, steps=10, step_size=1.0, eot=(), diversity=0.0, block=1,
                            random_start=False, smooth=smooth)
        return pgd.perturb(x, key=b"", config=cfg, surrogates=[model], labels=y.tolist())

    def roughness(adv):
        d = adv - x
        return float((d[..., 1:, :] - d[..., :-1, :]).abs().mean()
                     + (d[..., :, 1:] - d[..., :, :-1]).abs().mean())

    plain, smooth = run(0.0), run(1.0)
    assert roughness(smooth) < 0.7 * roughness(plain)
    assert float((model(smooth).argmax(1) == y).float().mean()) < 0.6
    assert (smooth - x).abs().max() <= 4 / 255 + 1e-6
    tiny = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    assert pgd.gaussian_blur(tiny, 2.0).shape == tiny.shape  # radius 6 > 4: replicate pad
    for bad in (-1.0, 9.0):
        with pytest.raises(ConfigError, match="smooth"):
            ProtectConfig(smooth=bad)
    assert ProtectConfig().smooth == 1.0 and ProtectConfig().to_dict()["smooth"] == 1.0
    assert ProtectConfig(**ProtectConfig(smooth=1.0).to_dict()).smooth == 1.0


def test_surrogate_weights_scale_each_models_pull():
    """A zero weight drops a surrogate: the result equals attacking the other one alone."""
    a, b = _tiny_cnn(seed=0), _tiny_cnn(seed=1)
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    y = (a(x) + b(x)).argmax(1).tolist()

    def run(surrogates, weights=None):
        cfg = ProtectConfig(eps=4, steps=5, step_size=1.0, eot=(), diversity=0.0, block=1,
                            weights=weights)
        return pgd.perturb(x, key=b"", config=cfg, surrogates=surrogates, labels=y)

    assert torch.equal(run([a, b], (1, 0)), run([a]))
    assert torch.equal(run([a, b], (0, 2.5)), run([b], (2.5,)))
    assert not torch.equal(run([a, b], (1, 3)), run([a, b]))
    with pytest.raises(ConfigError, match="2 surrogates"):
        run([a, b], (1, 1, 1))
    for bad in ((), (0, 0), (-1, 1), (float("nan"),), "12", ("a",), 3):
        with pytest.raises(ConfigError, match="weights"):
            ProtectConfig(weights=bad)
    cfg = ProtectConfig(weights=[1, 2])
    assert cfg.weights == (1.0, 2.0) and ProtectConfig(**cfg.to_dict()) == cfg
    assert ProtectConfig().weights is None and "weights" not in ProtectConfig().to_dict()
