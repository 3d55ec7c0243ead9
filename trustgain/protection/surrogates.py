"""Surrogate models for protection: small architectures trained here, and adapters that plug
any torch classifier, a diffusers VAE encoder or a transformers image classifier into the PGD
core.

Every surrogate is a ``torch.nn.Module`` taking ``[B, C, H, W]`` floats in [0, 1] (normalisation
and resizing live inside). Classifiers return logits; feature surrogates (the VAE encoder,
PhotoGuard's "encoder attack", arXiv 2302.06588) instead expose ``reference(x)`` and
``adv_loss(x, ref)`` (the PGD core maximises it).

The architectures live in :mod:`trustgain.protection.archs` (plain ``torch.nn``; why no package
fits is said there). Weights are saved with safetensors.

Command: ``python -m trustgain.protection.surrogates --data DIR -o OUT`` trains them on a
folder (subfolders = classes; a flat folder = one class per image, labelled by patch source).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trustgain.errors import ConfigError, InputError
from trustgain.protection.archs import ARCHS, make_net  # noqa: F401 (re-exported)

CONFIG_NAME = "surrogates.json"


# -- adapters ------------------------------------------------------------------------------


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable resize to ``size`` x ``size``: area averaging when shrinking (fast
    backward, no aliasing), bilinear when enlarging."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if min(x.shape[-2:]) >= size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class Classifier(nn.Module):
    """Wrap a torch classifier: [0, 1] images in, logits out.

    ``mean``/``std`` normalise per channel; ``size`` resizes (area/bilinear, differentiable) to
    what the net was trained on; ``channels`` converts 1 <-> 3 channels.
    """

    def __init__(self, net: nn.Module, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, size: int | None = None,
                 channels: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.size = size
        self.channels = channels
        m = torch.tensor(mean if mean is not None else [0.0]).view(1, -1, 1, 1)
        s = torch.tensor(std if std is not None else [1.0]).view(1, -1, 1, 1)
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif self.channels == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if self.size is not None:
            x = resize(x, self.size)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(x))


class JudgeSurrogate(nn.Module):
    """The embedded digits judge as a surrogate: RGB in [0, 1] -> ink map (max over RGB)."""

    def __init__(self, judge: nn.Module | None = None) -> None:
        super().__init__()
        if judge is None:
            from trustgain.models import load_judge

            judge = load_judge()
        self.judge = judge
        self.size = int(getattr(judge, "config", {}).get("image_size", 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.judge(resize(x[:, :3].amax(1, keepdim=True), self.size))


class FeatureSurrogate(nn.Module):
    """Base for non-classifier surrogates: PGD maximises ``adv_loss(x, reference(x_clean))``."""

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    @torch.no_grad()
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).detach()

    def adv_loss(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Squared distance of the features from the clean ones (PhotoGuard, untargeted)."""
        return (self.features(x) - ref).pow(2).flatten(1).sum(1).sum()


class VAEEncoderSurrogate(FeatureSurrogate):
    """A diffusers ``AutoencoderKL`` encoder: push the latent mean away from the clean one."""

    def __init__(self, vae: nn.Module, *, size: int | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.size = size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.size is not None:
            x = resize(x, self.size)
        return self.vae.encode(x * 2 - 1).latent_dist.mean


class HFImageClassifier(Classifier):
    """A transformers image-classification model (``...ForImageClassification``)."""

    def __init__(self, model: nn.Module, *, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), size: int | None = None) -> None:
        cfg = getattr(model, "config", None)
        size = size or getattr(cfg, "image_size", None)
        super().__init__(model, mean=mean, std=std, size=size,
                         channels=getattr(cfg, "num_channels", 3))

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> HFImageClassifier:
        """Load model and its image processor's normalisation (local folders or the hub)."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs).eval()
        try:
            proc = AutoImageProcessor.from_pretrained(name_or_path)
            mean, std = proc.image_mean, proc.image_std
        except (OSError, ValueError):
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        return cls(model, mean=mean, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=self.prepare(x)).logits


def wrap(arch: str, net: nn.Module, channels: int = 3) -> Classifier:
    """The trained net as a [0, 1]-input surrogate (normalisation, resize to 32)."""
    return Classifier(net, mean=[0.5] * channels, std=[0.25] * channels, size=32,
                      channels=channels).eval()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C -> float [N, C, H, W] in [0, 1]."""
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255


def train(arch: str, images: np.ndarray, labels: np.ndarray, *, epochs: int = 12,
          seed: int = 0, batch: int = 64, lr: float = 2e-3) -> Classifier:
    """Train one surrogate (Adam, flips and 2-px shifts) and return it wrapped, in eval mode."""
    torch.manual_seed(seed)
    x, y = to_tensor(images), torch.as_tensor(labels, dtype=torch.long)
    n_classes = int(y.max()) + 1
    net = make_net(arch, n_classes, x.shape[1])
    model = wrap(arch, net, x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * (
        (len(x) + batch - 1) // batch))
    g = torch.Generator().manual_seed(seed)
    net.train()
    for idx, xb in augmented_batches(x, epochs=epochs, batch=batch, g=g):
        loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def augmented_batches(x: torch.Tensor, *, epochs: int, batch: int, g: torch.Generator):
    """Shuffled minibatches ``(indices, images)`` with random horizontal flips and one random
    2-px shift per batch, drawn from ``g`` (shared by surrogate and victim training)."""
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            xb = x[idx]
            flip = torch.rand(len(xb), generator=g) < 0.5
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


# -- files ---------------------------------------------------------------------------------


def save(models: dict[str, Classifier], folder: str | Path, *, meta: dict[str, Any],
         overwrite: bool = False) -> Path:
    """Write ``<name>.safetensors`` per model and ``surrogates.json`` (architectures, classes)."""
    from safetensors.torch import save

    from trustgain.fileio import write_atomic

    folder = Path(folder)
    entries = {}
    for name, model in models.items():
        state = {k: v.detach().contiguous() for k, v in model.net.state_dict().items()}
        write_atomic(folder / f"{name}.safetensors", save(state), overwrite=overwrite)
        entries[name] = {"arch": name.split("-")[0], "file": f"{name}.safetensors"}
    doc = {"format": "trustgain.surrogates", "version": 1, "models": entries, **meta}
    write_atomic(folder / CONFIG_NAME, (json.dumps(doc, indent=2) + "\n").encode(),
                 overwrite=overwrite)
    return folder


def load(folder: str | Path) -> list[Classifier]:
    """Surrogates saved by :func:`save`, wrapped and in eval mode."""
    return list(load_named(folder).values())


def load_named(folder: str | Path) -> dict[str, Classifier]:
    """Like :func:`load`, keyed by the names they were saved under."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        doc = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder} holds no readable {CONFIG_NAME} ({exc})",
                         hint="train surrogates with python -m trustgain.protection.surrogates"
                         ) from None
    models = {}
    for name, entry in doc["models"].items():
        net = make_net(entry["arch"], int(doc["n_classes"]), int(doc.get("channels", 3)))
        net.load_state_dict(load_file(str(folder / entry["file"])))
        models[name] = wrap(entry["arch"], net, int(doc.get("channels", 3)))
    return models


def folder_dataset(data: Path, *, per_image: int = 64, seed: int = 0,
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images of a user's folder as 32x32 RGB with labels (subfolders = classes, else one
    class per image with ``per_image`` random crops)."""
    from PIL import Image, UnidentifiedImageError

    from trustgain.protection.patches import PATCH, crop

    exts = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
    if not data.is_dir():
        raise InputError(f"{data} is not a folder")
    subdirs = sorted(p for p in data.iterdir() if p.is_dir())

    def read(path: Path) -> np.ndarray | None:
        try:
            return np.asarray(Image.open(path).convert("RGB"))
        except (OSError, UnidentifiedImageError):
            print(f"skipping unreadable {path}", file=sys.stderr)
            return None

    xs, ys, names = [], [], []
    rng = np.random.default_rng(seed)
    if subdirs:
        for label, sub in enumerate(subdirs):
            names.append(sub.name)
            for path in sorted(p for p in sub.iterdir() if p.suffix.lower() in exts):
                img = read(path)
                if img is not None:
                    pil = Image.fromarray(img).resize((PATCH, PATCH), Image.Resampling.LANCZOS)
                    xs.append(np.asarray(pil)[None])
                    ys.append([label])
    else:
        for path in sorted(p for p in data.iterdir() if p.suffix.lower() in exts):
            img = read(path)
            if img is None or min(img.shape[:2]) < 4 * PATCH:
                continue
            xs.append(crop(img, per_image, "train", rng))
            ys.append([len(names)] * per_image)
            names.append(path.name)
    if len(names) < 2 or not xs:
        raise InputError(f"{data} needs images of at least two classes",
                         hint="use one subfolder per class, or a flat folder of >= 2 images")
    return np.concatenate(xs), np.concatenate([np.asarray(y) for y in ys]), names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trustgain.protection.surrogates",
                                description="Train protection surrogates on a folder.")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--archs", default="cnn,wide,mlp")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x, y, names = folder_dataset(args.data, seed=args.seed)
    models = {}
    for i, arch in enumerate(a.strip() for a in args.archs.split(",")):
        t0 = time.time()
        models[arch] = train(arch, x, y, epochs=args.epochs, seed=args.seed + i)
        acc = float((predict(models[arch], x) == y).mean())
        print(f"{arch}: train accuracy {acc:.3f} ({time.time() - t0:.1f} s)")
    save(models, args.out, overwrite=args.overwrite,
         meta={"n_classes": len(names), "channels": 3, "classes": names})
    print(f"saved {len(models)} surrogates to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
