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
Everything it can check is checked before training (architecture names, numbers, device, that
OUT can be written and is new, or replaced with ``--force``); OUT appears whole or not at all
(written in a hidden sibling folder, then renamed into place). Hidden folders are skipped; a
class folder without a readable image, images beside class folders, and 16-bit or float
images (which ``trustgain protect`` refuses) are refused with the file or folder named.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import numbers
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trustgain.errors import (
    ConfigError,
    InputError,
    OutputExistsError,
    OutputWriteError,
    TrustgainError,
)
from trustgain.fileio import write_atomic
from trustgain.protection.archs import ARCHS, make_net  # make_net is also re-exported

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


# -- files ---------------------------------------------------------------------------------


def _files(models: dict[str, Classifier], meta: dict[str, Any]) -> dict[str, bytes]:
    """What :func:`save` writes: ``<name>.safetensors`` per model, then ``surrogates.json``."""
    from safetensors.torch import save

    files, entries = {}, {}
    for name, model in models.items():
        state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
        files[f"{name}.safetensors"] = save(state)
        entries[name] = {"arch": name.split("-")[0], "file": f"{name}.safetensors"}
    doc = {"format": "trustgain.surrogates", "version": 1, "models": entries, **meta}
    files[CONFIG_NAME] = (json.dumps(doc, indent=2) + "\n").encode()
    return files


def save(models: dict[str, Classifier], folder: str | Path, *, meta: dict[str, Any],
         overwrite: bool = False) -> Path:
    """Write ``<name>.safetensors`` per model and ``surrogates.json`` (architectures, classes)
    into ``folder``, each file atomically, ``surrogates.json`` last; other files there stay.

    Without ``overwrite`` nothing is written when any of these files exists. To replace a
    whole surrogates folder at once (never a mix of old and new files), use
    :func:`save_folder`.
    """
    folder = Path(folder)
    files = _files(models, meta)
    if not overwrite:
        for name in files:
            if (folder / name).exists():
                raise OutputExistsError(folder / name)
    for name, data in files.items():
        write_atomic(folder / name, data, overwrite=overwrite)
    return folder


def _ours(name: str) -> bool:
    """A file a surrogates folder holds: models, the config, an interrupted write's temp file."""
    return (name == CONFIG_NAME or name.endswith(".safetensors")
            or (name.startswith(".") and name.endswith(".tmp")))


def _exists_error(folder: Path) -> OutputExistsError:
    err = OutputExistsError(folder)
    err.hint = "choose another folder, or pass --force to replace it"
    return err


def check_output(folder: str | Path, *, replace: bool = False) -> None:
    """Refuse now, before any training, an output folder :func:`save_folder` could not write:
    a file in the way, a folder holding anything but surrogates (never replaced), existing
    surrogates without ``replace``, or a place this process may not write."""
    folder = Path(folder).resolve()
    if folder.exists():
        if not folder.is_dir():
            raise TrustgainError(f"{folder} is a file, not a folder",
                                 hint="choose a folder path for -o")
        try:
            names = sorted(p.name for p in folder.iterdir())
        except OSError as exc:
            raise OutputWriteError(folder, exc) from None
        foreign = [n for n in names if not _ours(n)]
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise TrustgainError(
                f"{folder} holds files that are not surrogates ({', '.join(foreign[:3])}{more}); "
                "refusing to replace it", hint="choose a new or empty folder for -o")
        if names and not replace:
            raise _exists_error(folder)
        base = folder.parent
    else:
        base = next(p for p in folder.parents if p.exists())
        if not base.is_dir():
            raise OutputWriteError(folder, NotADirectoryError(
                errno.ENOTDIR, f"{base} is a file, not a folder"))
    try:  # the only reliable test of writability (ACLs, read-only mounts, root): try it
        probe = base / f".{folder.name}.{secrets.token_hex(4)}.probe"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise OutputWriteError(folder, exc) from None


def save_folder(models: dict[str, Classifier], folder: str | Path, *, meta: dict[str, Any],
                replace: bool = False) -> Path:
    """Write the surrogates as a whole new ``folder``: into a hidden sibling folder first,
    then renamed into place, so a reader (or a crash, a full disk, Ctrl-C) never sees a mix
    of old and new files. With ``replace`` an existing surrogates folder is swapped out (a
    folder holding other files is always refused; see :func:`check_output`)."""
    folder = Path(folder).resolve()
    check_output(folder, replace=replace)
    files = _files(models, meta)
    tmp = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.tmp"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise OutputWriteError(folder, exc) from None
    try:
        for name, data in files.items():
            write_atomic(tmp / name, data)
        _swap_in(tmp, folder, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _swap_in(tmp: Path, folder: Path, replace: bool) -> None:
    """Rename ``tmp`` to ``folder``; an existing ``folder`` (``replace``) is moved aside first
    and put back if the rename fails."""
    try:
        os.rename(tmp, folder)  # also replaces an empty folder
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise OutputWriteError(folder, exc) from None
    check_output(folder, replace=replace)  # it may have changed while we trained
    old = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.old"
    try:
        os.rename(folder, old)
    except OSError as exc:
        raise OutputWriteError(folder, exc) from None
    try:
        os.rename(tmp, folder)
    except BaseException as exc:
        os.rename(old, folder)
        if isinstance(exc, OSError):
            raise OutputWriteError(folder, exc) from None
        raise
    shutil.rmtree(old, ignore_errors=True)


def load(folder: str | Path) -> list[Classifier]:
    """Surrogates saved by :func:`save`, wrapped and in eval mode."""
    return list(load_named(folder).values())


def load_named(folder: str | Path) -> dict[str, Classifier]:
    """Like :func:`load`, keyed by the names they were saved under. A folder whose files do
    not fit its ``surrogates.json`` raises :class:`~trustgain.errors.InputError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    hint = "train surrogates with python -m trustgain.protection.surrogates"
    try:
        doc = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder} holds no readable {CONFIG_NAME} ({exc})", hint=hint) from None
    try:
        n_classes, channels = int(doc["n_classes"]), int(doc.get("channels", 3))
        entries = [(name, e["arch"], e["file"]) for name, e in doc["models"].items()]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(f"{folder / CONFIG_NAME} is not a surrogates file (it needs models "
                         "and n_classes)", hint=hint) from None
    models = {}
    for name, arch, file in entries:
        net = make_net(arch, n_classes, channels)
        try:
            net.load_state_dict(load_file(str(folder / file)))
        except (OSError, SafetensorError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{folder / file} does not fit {CONFIG_NAME} ({arch}, {n_classes} "
                             f"classes, {channels} channels): {first}", hint=hint) from None
        models[name] = wrap(arch, net, channels)
    return models


#: Image files the training command reads (others are left alone).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})

#: Pixel formats refused for training, as ``trustgain protect`` refuses them: converting to
#: 8 bits is a choice (full range? window? gamma?) the user has to make, and the surrogates
#: should see the same 8-bit images that will be protected.
_WIDE_MODES = {"I;16": "a 16-bit", "I;16B": "a 16-bit", "I;16L": "a 16-bit",
               "I;16N": "a 16-bit", "I": "a 32-bit integer", "F": "a 32-bit float"}


def _visible(folder: Path) -> list[Path]:
    """``folder``'s entries not hidden (name starting with '.'), sorted."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise InputError(f"cannot read {folder}: {exc.strerror or exc}") from None


def _some(paths: Sequence[Path]) -> str:
    more = f", ... ({len(paths)} in all)" if len(paths) > 3 else ""
    return ", ".join(p.name for p in paths[:3]) + more


def read_image(path: Path) -> np.ndarray | None:
    """An image file as uint8 RGB; None (and a note on stderr) when it cannot be read.
    16-bit and float images raise :class:`~trustgain.errors.InputError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in _WIDE_MODES:
                raise InputError(
                    f"{path} is {_WIDE_MODES[image.mode]} image ({image.mode}); trustgain "
                    "protect takes 8-bit images only, so surrogates are trained on 8-bit ones",
                    hint="convert it (and the images you will protect) to 8 bits first")
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        why = "not an image Pillow can read"
    except Image.DecompressionBombError:
        why = "too large to decode safely"
    except (OSError, SyntaxError, ValueError) as exc:
        why = f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
    print(f"skipping unreadable {path} ({why})", file=sys.stderr)
    return None


def folder_dataset(data: Path, *, per_image: int = 64, seed: int = 0, progress: bool = False,
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images of a user's folder as 32x32 RGB with labels and class names.

    Subfolders are classes (hidden ones, name starting with '.', are skipped; a class folder
    without a readable image is refused, so the classes saved are the classes trained); with
    no subfolder, each image of at least 128x128 px is a class of ``per_image`` random
    crops. Images beside class folders are refused rather than silently left out. Unreadable
    files are skipped with a note; 16-bit and float images are refused (see
    :func:`read_image`).
    """
    from PIL import Image
    from tqdm import tqdm

    from trustgain.protection.patches import PATCH, crop

    data = Path(data)
    if not data.is_dir():
        raise InputError(f"{data} is not a folder")
    entries = _visible(data)
    subdirs = [p for p in entries if p.is_dir()]
    top = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    exts = ", ".join(sorted(IMAGE_SUFFIXES))
    if subdirs and top:
        raise InputError(
            f"{data} holds class folders ({_some(subdirs)}) and also images beside them "
            f"({_some(top)}), which would be left out",
            hint="move those images into a class folder, or the folders out (a flat folder "
                 "is one class per image); folders whose names start with '.' are skipped")
    if subdirs:
        classes = []
        for sub in subdirs:
            files = [p for p in _visible(sub) if p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise InputError(f"class folder {sub} holds no images ({exts})",
                                 hint="remove it, or rename it to start with '.' to skip it")
            classes.append((sub, files))
        jobs = [(label, path) for label, (_, files) in enumerate(classes) for path in files]
    else:
        jobs = [(0, path) for path in top]
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    names: list[str] = []
    found = np.zeros(len(subdirs), dtype=np.int64)
    rng = np.random.default_rng(seed)
    bar = tqdm(jobs, desc="reading", unit="image", disable=not progress or len(jobs) < 2,
               file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.5)
    for label, path in bar:
        img = read_image(path)
        if img is None:
            continue
        if subdirs:
            pil = Image.fromarray(img).resize((PATCH, PATCH), Image.Resampling.LANCZOS)
            xs.append(np.asarray(pil)[None])
            ys.append(np.asarray([label]))
            found[label] += 1
        elif min(img.shape[:2]) < 4 * PATCH:
            print(f"skipping {path}: {img.shape[1]}x{img.shape[0]} px is smaller than "
                  f"{4 * PATCH}x{4 * PATCH} (each image of a flat folder is a class of random "
                  f"{PATCH}x{PATCH} crops)", file=sys.stderr)
        else:
            xs.append(crop(img, per_image, "train", rng))
            ys.append(np.full(per_image, len(names)))
            names.append(path.name)
    if subdirs:
        names = [sub.name for sub, _ in classes]
        empty = [sub for (sub, _), n in zip(classes, found, strict=True) if n == 0]
        if empty:
            raise InputError(f"class folder {empty[0]} holds no readable image",
                             hint="remove it, or rename it to start with '.' to skip it")
        if len(names) < 2:
            raise InputError(f"{data} needs images of at least two classes; it has one class "
                             f"folder ({names[0]})", hint="add a folder per class")
    elif len(names) < 2:
        raise InputError(f"{data} needs images of at least two classes: a flat folder is one "
                         f"class per image of at least {4 * PATCH}x{4 * PATCH} px, and it "
                         f"holds {len(names)}",
                         hint="use one subfolder per class, or a flat folder of >= 2 images")
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), names


# -- the command ---------------------------------------------------------------------------


EPILOG = """\
The data folder: one subfolder per class (data/cats/*.jpg, data/dogs/*.jpg; folders whose
names start with '.' are skipped), or a flat folder of photos of at least 128x128 px, each
its own class of random 32x32 crops. Images are read as 8-bit RGB; 16-bit and float images
are refused, as trustgain protect refuses them.

examples:
  python -m trustgain.protection.surrogates --data photos/ -o surrogates/
  python -m trustgain.protection.surrogates --data photos/ -o surrogates/ \\
      --archs cnn,resnet,vit --epochs 20 --device cuda
  python -m trustgain.protection.surrogates --data photos/ -o surrogates/ --force
                                       # replace surrogates trained before
  TRUSTGAIN_NO_PROGRESS=1 python -m trustgain.protection.surrogates --data photos/ -o s/

then attack them: trustgain protect photos/ -o protected/ --surrogate surrogates/
"""


def _whole(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            bounds = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"{value} is out of range (must be {bounds})")
        return value

    parse.__name__ = "whole number"
    return parse


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number > 0")
    return value


def _arch_list(text: str) -> tuple[str, ...]:
    names = tuple(a.strip() for a in text.split(","))
    known = ", ".join(ARCHS)
    for i, name in enumerate(names):
        if not name:
            raise argparse.ArgumentTypeError(f"{text!r} has an empty name (e.g. cnn,wide,mlp)")
        if name not in ARCHS:
            raise argparse.ArgumentTypeError(f"unknown architecture {name!r}; known: {known}")
        if name in names[:i]:
            raise argparse.ArgumentTypeError(f"{name!r} is listed twice")
    return names


def _device(text: str) -> str:
    from trustgain.devices import device_problem

    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem.replace("use cpu", "use --device cpu"))
    return text


def _no_progress_env() -> bool:
    """TRUSTGAIN_NO_PROGRESS, read as click reads it for ``trustgain --no-progress``."""
    value = os.environ.get("TRUSTGAIN_NO_PROGRESS", "").strip().lower()
    return value in ("1", "true", "t", "yes", "y", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trustgain.protection.surrogates",
        description="Train small image classifiers (surrogates) on a folder of images,\n"
                    "for trustgain protect --surrogate to attack.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="image folder: one subfolder per class, or a flat folder (one class "
                        "per image)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUT",
                   help="output folder (new or empty; written whole at the end)")
    p.add_argument("--archs", type=_arch_list, default="cnn,wide,mlp", metavar="A,B,...",
                   help=f"architectures, comma-separated, from: {', '.join(ARCHS)} "
                        "[default: %(default)s]")
    p.add_argument("--epochs", type=_whole(1), default=12,
                   help="passes over the data per architecture [default: %(default)s]")
    p.add_argument("--batch", type=_whole(1), default=64,
                   help="images per training step [default: %(default)s]")
    p.add_argument("--lr", type=_learning_rate, default=2e-3,
                   help="peak learning rate (one-cycle Adam) [default: %(default)s]")
    p.add_argument("--per-image", type=_whole(1, 100_000), default=64, metavar="N",
                   help="random 32x32 crops per image of a flat folder [default: %(default)s]")
    p.add_argument("--seed", type=_whole(0, 2**32 - 1), default=0,
                   help="random seed; architecture i trains with seed + i "
                        "[default: %(default)s]")
    p.add_argument("--device", type=_device, default="cpu",
                   help="torch device to train on, e.g. cpu, cuda, cuda:1, mps "
                        "[default: %(default)s]")
    p.add_argument("--threads", type=_whole(1, 1024), default=1,
                   help="torch CPU threads [default: %(default)s; often fastest for these "
                        "small nets]")
    p.add_argument("--force", "--overwrite", dest="force", action="store_true",
                   help="replace surrogates already in OUT (a folder holding other files is "
                        "never replaced)")
    p.add_argument("--no-progress", action="store_true", default=_no_progress_env(),
                   help="no progress bars (also TRUSTGAIN_NO_PROGRESS=1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except TrustgainError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; {args.out} was not written", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    out, data = args.out.resolve(), args.data.resolve()
    if out == data or data in out.parents:
        raise ConfigError(f"-o {args.out} is inside --data {args.data}",
                          hint="a later run would take it for a class folder")
    check_output(out, replace=args.force)  # before any work, not after the training
    torch.set_num_threads(args.threads)
    show = not args.no_progress
    x, y, names = folder_dataset(args.data, per_image=args.per_image, seed=args.seed,
                                 progress=show)
    counts = np.bincount(y, minlength=len(names))
    if len(counts) != len(names) or not counts.all():  # the saved classes are those trained
        raise AssertionError(f"labels do not match the {len(names)} classes")
    print(f"{len(x)} training images of {len(names)} classes from {args.data}")
    models = {}
    for i, arch in enumerate(args.archs):
        t0 = time.time()
        models[arch] = train(arch, x, y, epochs=args.epochs, seed=args.seed + i,
                             batch=args.batch, lr=args.lr, device=args.device, progress=show)
        acc = float((predict(models[arch], x) == y).mean())
        print(f"{arch}: train accuracy {acc:.3f} ({time.time() - t0:.1f} s)")
    save_folder(models, out, replace=args.force,
                meta={"n_classes": len(names), "channels": 3, "classes": names})
    print(f"saved {len(models)} surrogates to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
