"""Copies of surrogates for the PGD loop: batch norm folded into the convolution before it,
channels-last memory layout (speed) and, optionally, linear backpropagation (transfer).

The attack runs each surrogate forward and backward ``steps x samples`` times in eval mode,
where a ``BatchNorm2d`` is a fixed affine map that can be folded into the preceding
``Conv2d`` (``torch.nn.utils.fusion.fuse_conv_bn_eval`` does the arithmetic). Together with
the channels-last layout that oneDNN's CPU convolutions prefer, this cuts the PGD-20 time of
the bench's three surrogates by about a third on 2 CPU cores (measured: 36-43 ms -> 23-29 ms
per step at a batch of 16). The copies compute the same function up to floating-point
rounding; the caller's models are never modified.

Why not ``torch.fx.experimental.optimization.fuse`` or ``torch.compile``: the first needs a
symbolically traceable model (wrappers with Python control flow, such as a transformers
classifier, are not), the second compiles for tens of seconds per shape, more than a batch
of 32x32 images costs. The walk below handles the common case (a ``Conv2d`` followed by a
``BatchNorm2d`` inside an ``nn.Sequential``) and leaves everything else as it is.

LinBP (Guo, Li & Chen, NeurIPS 2020, arXiv 2012.03528): the later ReLUs of a convolutional
surrogate keep their forward pass but backpropagate as the identity, so the attack follows
a more linear gradient, which transfers better to models the attack never saw. On the
bench's patches (BENCHMARKS.md, protection, eleventh pass) it lifted transfer to the
held-out logistic regression from 68.5% to 79.8%. Only ``nn.ReLU`` modules are replaced
(a ``torch.nn.functional.relu`` inside a ``forward`` cannot be reached from outside).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fusable(seq: nn.Sequential) -> list[int]:
    """Indices ``i`` where ``seq[i]`` is a Conv2d and ``seq[i + 1]`` a BatchNorm2d, both eval."""
    mods = list(seq)
    return [i for i in range(len(mods) - 1)
            if type(mods[i]) is nn.Conv2d and type(mods[i + 1]) is nn.BatchNorm2d
            and not mods[i].training and not mods[i + 1].training
            and mods[i + 1].track_running_stats and mods[i].out_channels ==
            mods[i + 1].num_features]


def _has_fusable(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Sequential) and _fusable(m) for m in model.modules())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every eval-mode Conv2d -> BatchNorm2d pair in an
    ``nn.Sequential`` folded into one convolution (the norm replaced by ``nn.Identity``, so
    indices and state-dict names of the other layers stay as they were)."""
    model = copy.deepcopy(model)
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in _fusable(seq):
            seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()
    return model.eval()


class _ChannelsLast(nn.Module):
    """Run ``net`` on a channels-last copy of its input (its 4-D weights are channels-last)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


class _IdentityGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad


class LinearBackpropReLU(nn.Module):
    """ReLU forward, identity backward (LinBP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _IdentityGrad.apply(x)


def _relus(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(parent, name) for parent in model.modules()
            for name, child in parent.named_children() if type(child) is nn.ReLU]


def _linearizable(model: nn.Module, keep: int | None) -> bool:
    return (keep is not None and any(isinstance(m, nn.Conv2d) for m in model.modules())
            and len(_relus(model)) > keep)


def linearize(model: nn.Module, keep: int) -> nn.Module:
    """``model`` (modified in place, pass a copy) with every ``nn.ReLU`` after the first
    ``keep`` (in module order) replaced by :class:`LinearBackpropReLU`."""
    for parent, name in _relus(model)[keep:]:
        setattr(parent, name, LinearBackpropReLU())
    return model


def for_attack(models: Sequence[nn.Module], *, linear_backprop: int | None = None
               ) -> list[nn.Module]:
    """Per surrogate, what the PGD loop should differentiate: a copy with batch norms folded
    and, with ``linear_backprop=K``, the ReLUs after the first K of each convolutional
    surrogate made linear in backward; classifier copies run channels-last (feature
    surrogates keep their ``reference``/``adv_loss`` interface and layout). A model that
    needs none of this, or is in training mode, is returned itself. Call after the models
    are in eval mode."""
    out: list[nn.Module] = []
    for m in models:
        fold, lin = _has_fusable(m), _linearizable(m, linear_backprop)
        if m.training or not (fold or lin):
            out.append(m)
            continue
        copy_ = fold_batchnorm(m) if fold else copy.deepcopy(m).eval()
        if lin:
            linearize(copy_, int(linear_backprop))  # not None: _linearizable said so
        out.append(copy_ if hasattr(m, "adv_loss") else _ChannelsLast(copy_))
    return out
