"""Dataset mode: error-maximizing (targeted) poisons and unlearnable examples on a tiny set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustgain.errors import ConfigError, InputError
from trustgain.protection import poison, surrogates, victim
from trustgain.protection.api import ProtectConfig

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 32x32 RGB noise textures, told apart by a colour tint."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 16)
    tint = np.array([[24, 0, 0], [0, 24, 0], [0, 0, 24]])[labels][:, None, None, :]
    images = np.clip(rng.normal(110, 30, (48, 32, 32, 3)) + tint, 0, 255).astype(np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def crafter(data):
    images, labels = data
    return surrogates.train("mlp", images, labels, epochs=4)


def _cfg(**extra) -> ProtectConfig:
    return ProtectConfig(method="poison", eps=8, steps=5, diversity=0.0, extra=extra)


def test_targeted_poison_stays_in_budget_and_points_to_the_next_class(data, crafter):
    images, labels = data
    out = poison.protect_dataset(images, labels, key=KEY, config=_cfg(), surrogates=[crafter])
    assert out.shape == images.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - images.astype(int))
    assert diff.max() <= 8 and diff.mean() > 2
    target = (labels + 1) % 3
    with torch.no_grad():
        def p_target(imgs: np.ndarray) -> float:
            probs = crafter(surrogates.to_tensor(imgs)).softmax(1)
            return float(probs[torch.arange(len(imgs)), torch.from_numpy(target)].mean())

        before, after = p_target(images), p_target(out)
    assert after > before + 0.1  # a sign error in the objective would lower it
    again = poison.protect_dataset(images, labels, key=KEY, config=_cfg(), surrogates=[crafter])
    assert np.array_equal(out, again)


def test_crafting_models_are_trained_when_none_are_given(data):
    images, labels = data
    cfg = _cfg(crafting_archs=("mlp",), crafting_epochs=2)
    out = poison.protect_dataset(images[::4], labels[::4], key=KEY, config=cfg)
    assert np.abs(out.astype(int) - images[::4].astype(int)).max() <= 8


def test_unlearnable_noise_is_error_minimizing(data):
    images, labels = data
    cfg = _cfg(poison="ue", ue_rounds=2, ue_arch="mlp")
    out = poison.protect_dataset(images, labels, key=KEY, config=cfg)
    assert np.abs(out.astype(int) - images.astype(int)).max() <= 8
    assert not np.array_equal(out, images)


def _assert_class_patterns(images: np.ndarray, labels: np.ndarray, out: np.ndarray,
                           pats: torch.Tensor) -> None:
    """+-8 patterns, within budget, and away from clipping the change is the class pattern."""
    assert np.abs(out.astype(int) - images.astype(int)).max() <= 8
    assert torch.equal(pats.abs(), torch.full_like(pats, 8 / 255))
    mid = (images > 10) & (images < 245)
    delta = out.astype(int) - images.astype(int)
    want = np.rint(pats.numpy().transpose(0, 2, 3, 1) * 255).astype(int)[labels]
    assert np.array_equal(delta[mid], want[mid])


def test_shortcut_noise_is_one_keyed_pattern_per_class(data):
    images, labels = data
    out = poison.protect_dataset(images, labels, key=KEY, config=_cfg(poison="shortcut"))
    pats = poison.shortcut_patterns(KEY, _cfg(), 3, (3, 32, 32))
    _assert_class_patterns(images, labels, out, pats)
    assert not torch.equal(pats[0], pats[1])
    assert not torch.equal(pats, poison.shortcut_patterns(bytes(32), _cfg(), 3, (3, 32, 32)))


def test_per_image_perturb_and_the_api(data, crafter):
    from trustgain.protection import api

    images, labels = data
    x = surrogates.to_tensor(images[:2])
    adv = poison.perturb(x, key=KEY, config=_cfg(), surrogates=[crafter], labels=labels[:2])
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= 8 / 255 + 1e-6
    protected, sealed = api.protect(images[0], key=KEY, config=_cfg(), surrogates=[crafter],
                                    image_id="p0")
    assert np.abs(protected.astype(int) - images[0].astype(int)).max() <= 8
    assert np.array_equal(api.recover(protected, sealed, key=KEY), images[0])


def test_victim_training_and_jpeg(data):
    images, labels = data
    squeezed = victim.jpeg(images, 50)
    assert squeezed.shape == images.shape and not np.array_equal(squeezed, images)
    model = victim.train_victim(images, labels, arch="mlp", epochs=2, adversarial_eps=4,
                                pgd_steps=1)
    assert 0 <= victim.accuracy(model, images, labels) <= 1


def test_bad_inputs_are_refused(data, crafter):
    images, labels = data
    with pytest.raises(InputError, match="labels"):
        poison.protect_dataset(images, labels[:-1], key=KEY, config=_cfg())
    with pytest.raises(InputError, match="uint8"):
        poison.protect_dataset(images.astype(np.float32), labels, key=KEY, config=_cfg())
    with pytest.raises(ConfigError, match="unknown poison kind"):
        poison.protect_dataset(images, labels, key=KEY, config=_cfg(poison="nope"))
    with pytest.raises(ConfigError, match="whole labelled dataset"):
        poison.perturb(surrogates.to_tensor(images[:1]), key=KEY, config=_cfg(poison="ue"),
                       surrogates=[crafter])


def test_grating_poison_is_a_keyed_high_frequency_pattern_per_class(data):
    images, labels = data
    out = poison.protect_dataset(images, labels, key=KEY, config=_cfg(poison="grating"))
    pats = poison.grating_patterns(KEY, _cfg(), 3, (3, 32, 32))
    _assert_class_patterns(images, labels, out, pats)
    # period 2 (of the 9 first codes): sign flips between horizontal or vertical neighbours
    for p in pats:
        assert torch.equal(p[:, :, 1:], -p[:, :, :-1]) or torch.equal(p[:, 1:], -p[:, :-1])
    flat = pats.flatten(1)
    assert len({tuple(v.tolist()) for v in flat}) == 3
    ten = [poison.grating_patterns(k, _cfg(), 10, (3, 32, 32)) for k in (KEY, bytes(32))]
    assert not torch.equal(*ten)  # the key deals the gratings (same set, another order)
    assert {p.numpy().tobytes() for p in ten[0]} == {p.numpy().tobytes() for p in ten[1]}


def test_grating_codes_cover_many_classes_then_refuse():
    assert len(poison.grating_codes(3, (32, 32))) == 44
    assert len(poison.grating_codes(1, (32, 32))) == 11
    codes = poison.grating_codes(3, (32, 32))
    assert len({c.tobytes() for c in codes}) == 44  # all distinct
    # colour-opponent first: two channels agree, the third is opposite
    assert all(len(set(c[:, 0, 0].tolist())) == 2 for c in codes[:21])
    assert poison.grating_patterns(KEY, _cfg(), 44, (3, 32, 32)).shape == (44, 3, 32, 32)
    with pytest.raises(ConfigError, match="45 classes"):
        poison.grating_patterns(KEY, _cfg(), 45, (3, 32, 32))
    grey = poison.grating_patterns(KEY, _cfg(), 5, (1, 16, 16))
    assert grey.shape == (5, 1, 16, 16) and len({tuple(v.flatten().tolist()) for v in grey}) == 5


def test_class_wise_kinds_image_by_image(data):
    images, labels = data
    x = surrogates.to_tensor(images[:1])
    with pytest.raises(ConfigError, match="each image's class"):
        poison.perturb(x, key=KEY, config=_cfg(poison="grating"), surrogates=[], labels=[0])
    cfg = _cfg(poison="grating", n_classes=3)
    with pytest.raises(ConfigError, match=r"in \[0, 3\)"):
        poison.perturb(x, key=KEY, config=cfg, surrogates=[], labels=[3])
    whole = poison.protect_dataset(images, labels, key=KEY, config=cfg)
    one = poison.quantize_batch(images[:1], poison.perturb(
        x, key=KEY, config=cfg, surrogates=[], labels=[int(labels[0])]), 8)
    assert np.array_equal(one[0], whole[0])
