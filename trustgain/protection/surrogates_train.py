"""Training surrogates: the small torch architectures (Adam, flips and 2-px shifts) and the
'unauthorized' scikit-learn models, and :func:`predict` for either.

Part of :mod:`trustgain.protection.surrogates`, which re-exports its public names.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trustgain.errors import ConfigError
from trustgain.protection.archs import make_net
from trustgain.protection.surrogates_adapters import Classifier, to_tensor, wrap


def train(arch: str, images: np.ndarray, labels: np.ndarray, *, epochs: int = 12,
          seed: int = 0, batch: int = 64, lr: float = 2e-3, device: str = "cpu",
          progress: bool = False) -> Classifier:
    """Train one surrogate (Adam, flips and 2-px shifts) and return it wrapped, in eval mode,
    on the CPU. ``device`` is where it trains; ``progress`` draws a progress bar on stderr.
    Raises :class:`~trustgain.errors.ConfigError` when the loss ends up NaN or infinite."""
    from tqdm import tqdm

    for name, value in (("epochs", epochs), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a finite number > 0, got {lr!r}")
    epochs, batch, lr = int(epochs), int(batch), float(lr)
    torch.manual_seed(seed)
    dev = torch.device(device)
    x = to_tensor(images).to(dev)
    y = torch.as_tensor(labels, dtype=torch.long).to(dev)
    n_classes = int(y.max()) + 1
    net = make_net(arch, n_classes, x.shape[1])
    model = wrap(arch, net, x.shape[1]).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    net.train()
    bar = tqdm(total=steps, desc=arch, unit="step", disable=not progress, file=sys.stderr,
               leave=False, dynamic_ncols=True, mininterval=0.5)
    loss = torch.zeros(())
    try:
        for idx, xb in augmented_batches(x, epochs=epochs, batch=batch, g=g):
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if progress:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
    finally:
        bar.close()
    final = float(loss.detach())
    weights = (t for t in net.state_dict().values() if t.is_floating_point())
    if not (math.isfinite(final) and all(bool(torch.isfinite(t).all()) for t in weights)):
        raise ConfigError(f"training {arch} diverged (last loss {final:g}, weights not all "
                          "finite)", hint="try a lower learning rate (--lr)")
    return model.cpu().eval()


def augmented_batches(x: torch.Tensor, *, epochs: int, batch: int, g: torch.Generator):
    """Shuffled minibatches ``(indices, images)`` with random horizontal flips and one random
    2-px shift per batch, drawn from ``g`` (a CPU generator, whatever device ``x`` is on;
    shared by surrogate and victim training)."""
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            xb = x[idx]
            flip = (torch.rand(len(xb), generator=g) < 0.5).to(xb.device)
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            yield idx, torch.roll(xb, (dy, dx), (2, 3))


def train_sklearn(kind: str, images: np.ndarray, labels: np.ndarray, *, seed: int = 0,
                  trees: int = 200) -> Any:
    """An 'unauthorized' scikit-learn model on raw pixels in [0, 1]: lr, svc or rf."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    flat = images.reshape(len(images), -1).astype(np.float32) / 255
    if kind == "lr":
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=300))
    elif kind == "svc":
        model = make_pipeline(StandardScaler(), SVC(C=3.0, gamma="scale", random_state=seed))
    elif kind == "rf":
        model = RandomForestClassifier(n_estimators=trees, n_jobs=1, random_state=seed)
    else:
        raise ConfigError(f"unknown scikit-learn model {kind!r}; known: lr, svc, rf")
    return model.fit(flat, labels)


@torch.no_grad()
def predict(model: Any, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """Labels from a torch surrogate or a scikit-learn model, for uint8 images."""
    if isinstance(model, nn.Module):
        x = to_tensor(images)
        return torch.cat([model(x[i:i + batch]).argmax(1)
                          for i in range(0, len(x), batch)]).numpy()
    return model.predict(images.reshape(len(images), -1).astype(np.float32) / 255)
