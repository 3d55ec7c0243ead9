"""The unauthorized trainer of the dataset-mode evaluation: a model trained from scratch on
(possibly protected) data, optionally with PGD adversarial training (Madry et al., arXiv
1706.06083) or after JPEG purification of the training set (Image Shortcut Squeezing, Liu et
al., arXiv 2301.13838). Architectures are those of :mod:`trustgain.protection.surrogates`.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F


def jpeg(images: np.ndarray, quality: int = 50) -> np.ndarray:
    """JPEG round trip (Pillow, 4:2:0) of every uint8 N x H x W [x C] image."""
    from PIL import Image

    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img.squeeze(-1) if img.ndim == 3 and img.shape[2] == 1 else img).save(
            buf, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buf)).reshape(img.shape)
    return out


def _pgd_train_batch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                     steps: int, g: torch.Generator) -> torch.Tensor:
    """PGD-``steps`` examples at ``eps`` for adversarial training (model in eval mode inside)."""
    was = model.training
    model.eval()
    alpha = 2.5 * eps / steps
    delta = (torch.rand(x.shape, generator=g) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    model.train(was)
    return (x + delta).clamp(0, 1).detach()


def train_victim(images: np.ndarray, labels: np.ndarray, *, arch: str = "cnn",
                 epochs: int = 15, seed: int = 0, adversarial_eps: int = 0, pgd_steps: int = 5,
                 batch: int = 64, lr: float = 2e-3) -> torch.nn.Module:
    """Train ``arch`` from scratch on uint8 images (flips, 2-px shifts, OneCycle Adam); with
    ``adversarial_eps`` (pixel units) every batch is replaced by its PGD examples."""
    from trustgain.protection import surrogates as sg

    torch.manual_seed(seed)
    x, y = sg.to_tensor(images), torch.as_tensor(labels, dtype=torch.long)
    net = sg.make_net(arch, int(y.max()) + 1, x.shape[1])
    model = sg.wrap(arch, net, x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = (len(x) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * per_epoch)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for idx, xb in sg.augmented_batches(x, epochs=epochs, batch=batch, g=g):
        if adversarial_eps:
            xb = _pgd_train_batch(model, xb, y[idx], adversarial_eps / 255, pgd_steps, g)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    from trustgain.protection import surrogates as sg

    pred = sg.predict(model, images)
    return float((pred == np.asarray(labels)).mean())
