"""Folded, channels-last surrogate copies for the PGD loop: same function, originals untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustgain.errors import ConfigError
from trustgain.protection import ProtectConfig, pgd
from trustgain.protection import surrogates as S
from trustgain.protection.fused import LinearBackpropReLU, fold_batchnorm, for_attack


def _trained_like(arch: str, seed: int = 0) -> nn.Module:
    """A surrogate whose batch norms hold non-trivial running statistics."""
    torch.manual_seed(seed)
    model = S.wrap(arch, S.make_net(arch, 5))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize("arch", ["cnn", "wide", "resnet"])
def test_folded_copy_computes_the_same_logits_and_gradients(arch):
    model = _trained_like(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (fast,) = for_attack([model])
    assert fast is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2), requires_grad=True)
    a, b = model(x), fast(x)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # gradients in float64: in float32 a rounding-level difference can flip a max-pool's choice
    # between two near-equal activations (seen on some CPUs for "wide"), a different but
    # equally valid subgradient; in float64 the two copies agree to rounding
    model64 = _trained_like(arch).double()
    (fast64,) = for_attack([model64])
    x64 = x.detach().double().requires_grad_(True)
    (ga,) = torch.autograd.grad(model64(x64).logsumexp(1).sum(), x64)
    (gb,) = torch.autograd.grad(fast64(x64).logsumexp(1).sum(), x64)
    assert torch.allclose(ga, gb, atol=1e-12, rtol=1e-9)
    # the caller's model is not modified
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_models_without_foldable_pairs_or_in_training_mode_are_passed_through():
    mlp = S.wrap("mlp", S.make_net("mlp", 5)).eval()
    training = _trained_like("cnn").train()
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()).eval()
    assert [m is o for m, o in zip(for_attack([mlp, training, no_bn]),
                                   [mlp, training, no_bn], strict=True)] == [True] * 3


def test_feature_surrogates_keep_their_loss_interface():
    class Feat(S.FeatureSurrogate):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))

        def features(self, x):
            return self.body(x)

    feat = Feat().eval()
    feat.body[1].running_mean.fill_(0.3)
    (fast,) = for_attack([feat])
    assert hasattr(fast, "adv_loss") and isinstance(fast.body[1], nn.Identity)
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(fast.adv_loss(x, feat.reference(x)),
                          feat.adv_loss(x, feat.reference(x)), atol=1e-5)


def test_fold_keeps_the_other_layers_names():
    model = _trained_like("cnn")
    folded = fold_batchnorm(model)
    names = {k for k in folded.state_dict() if "running" not in k and "num_batches" not in k}
    assert {k for k in model.state_dict() if k.endswith("0.weight")} <= names


def test_perturb_with_folded_surrogates_matches_the_unfolded_attack():
    """perturb() folds; attack() on the original models gives the same signs almost everywhere."""
    models = [_trained_like("cnn", 1), _trained_like("wide", 2)]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    cfg = ProtectConfig(eps=8, steps=5, eot=(), diversity=0.0, block=1, smooth=0.0,
                        linear_backprop=None)
    ours = pgd.perturb(x, key=b"", config=cfg, surrogates=models, image_id="a")
    refs = pgd.references(models, x, None)
    g = torch.Generator().manual_seed(pgd.seed_for(cfg, "a"))
    plain = pgd.attack(x, models, refs, eps=8 / 255, alpha=cfg.alpha / 255, steps=5,
                       momentum=cfg.momentum, p_div=0.0, eot=(), samples=1, kappa=cfg.kappa,
                       g=g, random_start=True, block=1)
    same = ((ours - plain).abs() < 0.5 / 255).float().mean()
    assert same > 0.99


def test_linear_backprop_keeps_the_forward_pass_and_linearises_later_relus():
    model = _trained_like("cnn")
    (lin,) = for_attack([model], linear_backprop=1)
    relus = [m for m in lin.modules() if isinstance(m, nn.ReLU)]
    linear = [m for m in lin.modules() if isinstance(m, LinearBackpropReLU)]
    assert (len(relus), len(linear)) == (1, 2)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 3  # original untouched
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5), requires_grad=True)
    assert torch.allclose(model(x), lin(x), atol=1e-4)
    (g0,) = torch.autograd.grad(model(x).logsumexp(1).sum(), x)
    (g1,) = torch.autograd.grad(lin(x).logsumexp(1).sum(), x)
    assert not torch.allclose(g0, g1, atol=1e-4)


def test_linear_backprop_relu_passes_negative_gradients():
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    y = LinearBackpropReLU()(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert y.tolist() == [0.0, 2.0] and g.tolist() == [1.0, 1.0]


def test_linear_backprop_leaves_models_without_convolutions_alone():
    mlp = S.wrap("mlp", S.make_net("mlp", 5)).eval()
    assert for_attack([mlp], linear_backprop=0)[0] is mlp


@pytest.mark.parametrize("bad", [True, -1, 1.5, 65])
def test_linear_backprop_setting_is_checked(bad):
    with pytest.raises(ConfigError, match="linear_backprop"):
        ProtectConfig(linear_backprop=bad)
