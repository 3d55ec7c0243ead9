"""Natural 32x32 RGB patches with a fixed, region-disjoint train/test split (a CIFAR-like proxy).

Label = source image (the research note's suite ii). Sources: eight colour images bundled
with scikit-image (always available) and, when present, the first photos of the folder named by
``$TRUSTGAIN_PHOTOS`` (default ``../shared/data/photos`` next to the repository). Each source is
resized to a short side of 256 px; training patches come from the left 75% of its width, test
patches from the right 25%, so no pixel is in both splits. Patches with almost no texture
(std < 4/255) are skipped. Everything is seeded: the same call returns the same arrays.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

SKIMAGE_SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
                   "hubble_deep_field", "retina", "stereo_motorcycle")
SHORT_SIDE = 256
PATCH = 32
TRAIN_FRACTION = 0.75


def photos_dir() -> Path | None:
    """The optional photo folder, or None when absent."""
    env = os.environ.get("TRUSTGAIN_PHOTOS")
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "shared/data/photos"
    return path if path.is_dir() else None


def _resize(img: np.ndarray, short: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = short / min(h, w)
    pil = Image.fromarray(img).resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS)
    return np.asarray(pil.convert("RGB"))


@lru_cache(maxsize=2)
def sources(n_photos: int = 2) -> tuple[tuple[str, np.ndarray], ...]:
    """``(name, uint8 HxWx3)`` per class, resized to a short side of 256."""
    import skimage.data

    out = []
    for name in SKIMAGE_SOURCES:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img
        out.append((f"skimage:{name}", _resize(img, SHORT_SIDE)))
    folder = photos_dir()
    if folder is not None and n_photos:
        from PIL import Image

        for path in sorted(folder.glob("*.png"))[:n_photos]:
            out.append((f"photo:{path.name}", _resize(np.asarray(
                Image.open(path).convert("RGB")), SHORT_SIDE)))
    return tuple(out)


def crop(img: np.ndarray, n: int, split: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` textured 32x32 crops from the train (left) or test (right) region of ``img``."""
    h, w = img.shape[:2]
    cut = int(w * TRAIN_FRACTION)
    lo, hi = (0, cut - PATCH) if split == "train" else (cut, w - PATCH)
    out: list[np.ndarray] = []
    tries = 0
    while len(out) < n:
        tries += 1
        y, x = int(rng.integers(0, h - PATCH + 1)), int(rng.integers(lo, hi + 1))
        p = img[y:y + PATCH, x:x + PATCH]
        if p.std() >= 4 or tries > 50 * n:
            out.append(p)
    return np.stack(out)


def load(split: str, per_class: int, *, seed: int = 0,
         n_photos: int = 2) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images uint8 N x 32 x 32 x 3, labels int64, class names)`` of one split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    srcs = sources(n_photos)
    xs = [crop(img, per_class, split, rng) for _, img in srcs]
    ys = [np.full(per_class, i, dtype=np.int64) for i in range(len(srcs))]
    return np.concatenate(xs), np.concatenate(ys), [name for name, _ in srcs]


def photo_patches(n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` 32x32 patches drawn across every photo of the photo folder (for recovery tests);
    falls back to scikit-image sources when the folder is absent."""
    from PIL import Image

    rng = np.random.default_rng([seed, 2])
    folder = photos_dir()
    paths = sorted(folder.glob("*.png")) if folder is not None else []
    imgs = ([np.asarray(Image.open(p).convert("RGB")) for p in paths]
            or [img for _, img in sources(0)])
    out = []
    for i in range(n):
        img = imgs[i % len(imgs)]
        h, w = img.shape[:2]
        y, x = int(rng.integers(0, h - PATCH + 1)), int(rng.integers(0, w - PATCH + 1))
        out.append(img[y:y + PATCH, x:x + PATCH])
    return np.stack(out)
