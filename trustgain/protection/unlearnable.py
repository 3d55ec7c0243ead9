"""Sample-wise error-minimizing noise ("Unlearnable Examples", Huang et al., ICLR 2021,
arXiv 2101.04898; reference code HanxunH/Unlearnable-Examples, MIT).

The min-min game of the paper, on CPU-sized data: alternate a few training steps of a fresh
model on ``x + delta`` with PGD steps that *minimise* that model's loss over ``delta``; stop
when the model classifies the noisy training set almost perfectly (the paper stops at 99%
accuracy) or after ``rounds`` rounds. Written here because no maintained package ships it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def error_minimizing(images: np.ndarray, labels: np.ndarray, *, eps: float, alpha: float,
                     steps: int, rounds: int, g: torch.Generator, arch: str = "cnn",
                     train_batches: int = 10, batch: int = 128, stop_accuracy: float = 0.99,
                     progress: bool = False) -> torch.Tensor:
    """Noise ``delta`` [N, C, H, W] in [0, 1] units, ``|delta| <= eps``."""
    from tqdm import tqdm

    from trustgain.protection import surrogates as sg
    from trustgain.protection.poison import pgd_steps

    x, y = sg.to_tensor(images), torch.as_tensor(labels, dtype=torch.long)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=g)))
    net = sg.make_net(arch, int(y.max()) + 1, x.shape[1])
    model = sg.wrap(arch, net, x.shape[1])
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    delta = torch.zeros_like(x)
    for _ in tqdm(range(rounds), disable=not progress, desc="unlearnable", leave=False):
        model.train()
        for _b in range(train_batches):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            loss = F.cross_entropy(model((x[idx] + delta[idx]).clamp(0, 1)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        for i in range(0, len(x), batch):
            xb, yb = x[i:i + batch], y[i:i + batch]
            delta[i:i + batch] = pgd_steps(
                xb, lambda xa, yb=yb: F.cross_entropy(model(xa), yb, reduction="sum"),
                eps=eps, alpha=alpha, steps=steps, g=g, delta=delta[i:i + batch])
        with torch.no_grad():
            acc = float(torch.cat([model((x[i:i + 512] + delta[i:i + 512]).clamp(0, 1)).argmax(1)
                                   for i in range(0, len(x), 512)]).eq(y).float().mean())
        if acc >= stop_accuracy:
            break
    return delta
