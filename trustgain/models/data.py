"""Training data for the embedded models: scikit-learn's handwritten digits, a fixed split,
augmentations and captions that describe them.

scikit-learn is needed here (training, tests, benchmarks) and nowhere at runtime: loading the
shipped models never imports this module's data loader.

The split is fixed and documented in the model cards: a seeded permutation (seed 0) of the
1,797 scans; the last 360 are the judge's held-out *test* split, the first 1,437 the *train*
split. Both models train on the train split only; the judge is scored on the test split.

The augmentation is hand-written with ``torch.nn.functional.affine_grid``/``grid_sample`` and
max-pooling because every caption must name the exact transform drawn for its image
(size, corner, tilt, stroke thickness, ink colour); torchvision's random transforms hide the
parameters they draw and are not a dependency of this project.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_SEED = 0
N_TEST = 360
IMAGE_SIZE = 32

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLORS: dict[str, tuple[float, float, float]] = {
    "white": (1.0, 1.0, 1.0),
    "red": (1.0, 0.15, 0.1),
    "green": (0.15, 1.0, 0.2),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (1.0, 0.95, 0.1),
    "cyan": (0.1, 0.95, 1.0),
    "magenta": (1.0, 0.15, 0.95),
}
CORNERS: dict[str, tuple[float, float]] = {  # (x, y) of the digit centre, in [-1, 1] units
    "top left": (-0.45, -0.45),
    "top right": (0.45, -0.45),
    "bottom left": (-0.45, 0.45),
    "bottom right": (0.45, 0.45),
}


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` of one fixed split: images float32 (N, 8, 8) in [0, 1].

    ``split`` is ``"train"`` (1,437 scans), ``"test"`` (360, the judge's held-out split) or
    ``"all"``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "training and measuring the embedded models needs scikit-learn "
            "(pip install scikit-learn); loading them does not"
        ) from exc
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    if split == "train":
        idx = order[:-N_TEST]
    elif split == "test":
        idx = order[-N_TEST:]
    elif split == "all":
        idx = order
    else:
        raise ValueError(f"unknown split {split!r}: use 'train', 'test' or 'all'")
    return images[idx], labels[idx]


def upsample(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """8x8 scans in [0, 1] -> (N, 1, 32, 32) grey ink maps in [0, 1]: the scan is enlarged to
    24x24 and centred with a 4-pixel margin, so tilts and shifts do not clip it."""
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.dim() == 3:
        x = x[:, None]
    x = F.interpolate(x, size=(24, 24), mode="bicubic", align_corners=False)
    return F.pad(x.clamp(0.0, 1.0), (4, 4, 4, 4))


@dataclass(frozen=True)
class Look:
    """The augmentation drawn for one image; ``caption`` puts it into words."""

    size: str  # "small", "normal", "large"
    corner: str  # "" or a key of CORNERS (small digits only)
    tilt: str  # "", "left", "right"
    stroke: str  # "thin", "normal", "thick"
    color: str  # key of COLORS


def draw_looks(n: int, rng: np.random.Generator) -> list[Look]:
    """Draw ``n`` augmentation settings with the training mixture."""
    sizes = rng.choice(["small", "normal", "large"], size=n, p=[0.25, 0.55, 0.2])
    in_corner = rng.random(n) < 0.5
    corners = rng.choice(list(CORNERS), size=n)
    tilts = rng.choice(["", "left", "right"], size=n, p=[0.7, 0.15, 0.15])
    strokes = rng.choice(["thin", "normal", "thick"], size=n, p=[0.2, 0.6, 0.2])
    white = rng.random(n) < 0.5
    colors = rng.choice(list(COLORS)[1:], size=n)
    return [Look(str(sizes[i]), str(corners[i]) if sizes[i] == "small" and in_corner[i] else "",
                 str(tilts[i]), str(strokes[i]), "white" if white[i] else str(colors[i]))
            for i in range(n)]


_SCALES = {"small": (0.55, 0.65), "normal": (0.9, 1.05), "large": (1.18, 1.28)}


def render(ink: torch.Tensor, looks: list[Look], rng: np.random.Generator) -> torch.Tensor:
    """Apply ``looks`` to (N, 1, 32, 32) ink maps; returns RGB (N, 3, 32, 32) in [-1, 1].

    Small jitter (shift up to ~2 px, rotation up to 6 degrees) is always added and is not
    captioned; every named attribute is large enough to see.
    """
    n = len(looks)
    ink = ink.clone()
    # stroke thickness on the full-size map: grey dilation / erosion
    for stroke, sign in (("thick", 1.0), ("thin", -1.0)):
        sel = [i for i, lk in enumerate(looks) if lk.stroke == stroke]
        if sel:
            ink[sel] = sign * F.max_pool2d(sign * ink[sel], 3, 1, 1)
    lo = np.array([_SCALES[lk.size][0] for lk in looks])
    hi = np.array([_SCALES[lk.size][1] for lk in looks])
    scale = lo + (hi - lo) * rng.random(n)
    tilt = np.array([{"": 0.0, "right": 1.0, "left": -1.0}[lk.tilt] for lk in looks])
    angle = np.where(tilt == 0, rng.uniform(-6, 6, n), tilt * rng.uniform(18, 28, n))
    centre = rng.uniform(-0.1, 0.1, (n, 2))
    corner = np.array([CORNERS.get(lk.corner, (np.nan, np.nan)) for lk in looks])
    has = ~np.isnan(corner[:, 0])
    centre[has] = corner[has] + rng.uniform(-0.05, 0.05, (int(has.sum()), 2))
    a = np.radians(angle)
    # output -> input mapping: inverse of scale-rotate-translate
    rot = np.stack([np.stack([np.cos(a), np.sin(a)], -1),
                    np.stack([-np.sin(a), np.cos(a)], -1)], -2) / scale[:, None, None]
    shift = -np.einsum("nij,nj->ni", rot, centre)
    theta = torch.from_numpy(np.concatenate([rot, shift[:, :, None]], -1).astype(np.float32))
    theta = theta.to(ink.device)
    grid = F.affine_grid(theta, [n, 1, IMAGE_SIZE, IMAGE_SIZE], align_corners=False)
    placed = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rgb = torch.tensor([COLORS[lk.color] for lk in looks], dtype=torch.float32,
                       device=ink.device)[:, :, None, None]
    return (placed * rgb) * 2.0 - 1.0


def caption(label: int, look: Look, rng: np.random.Generator) -> str:
    """A varied caption naming the digit and (usually) every attribute of ``look``."""
    word, num = WORDS[label], str(label)
    say = rng.random(5) < 0.9  # each attribute is named with probability 0.9
    adjs = []
    if look.size != "normal" and say[0]:
        adjs.append(look.size)
    if look.color != "white" and say[1]:
        adjs.append(look.color)
    adj = " ".join(adjs)
    adj_ = adj + " " if adj else ""
    noun = str(rng.choice([
        f"a {adj_}handwritten {word}", f"the {adj_}digit {num}", f"a {adj_}{num}",
        f"the {adj_}number {word}", f"a {adj_}handwritten digit {num}",
        f"a {adj_}scanned handwritten {word}", f"a {adj_}{word}",
    ]))
    if noun.startswith("a ") and (noun[2] in "aeiu8" or noun[2:].startswith("orange")):
        noun = "an " + noun[2:]
    parts = [noun]
    if look.stroke != "normal" and say[2]:
        parts.append(str(rng.choice([f"in {look.stroke} strokes",
                                     f"written with {look.stroke} lines"])))
    if look.tilt and say[3]:
        parts.append(str(rng.choice([f"tilted to the {look.tilt}", f"slanted {look.tilt}"])))
    if look.corner and say[4]:
        parts.append(f"in the {look.corner} corner")
    if look.color == "white" and rng.random() < 0.3:
        parts.append("on black")
    return " ".join(parts)


def caption_vocabulary() -> list[str]:
    """Every word any caption can use (for the tokenizer test)."""
    words = set(WORDS) | {str(d) for d in range(10)} | (set(COLORS) - {"white"})
    words |= {"a", "an", "the", "handwritten", "digit", "number", "scanned", "small", "large",
              "in", "thick", "thin", "strokes", "written", "with", "lines", "tilted", "to",
              "left", "right", "slanted", "corner", "top", "bottom", "on", "black"}
    return sorted(words)


def augmented_set(images: np.ndarray, labels: np.ndarray, copies: int, seed: int,
                  device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``copies`` augmented renderings of every scan: (RGB in [-1,1], labels, captions).

    Images stay on ``device`` (rendering on a GPU is much faster); labels are on the CPU.
    """
    rng = np.random.default_rng(seed)
    ink = upsample(images).to(device)
    xs, ys, caps = [], [], []
    for _ in range(copies):
        looks = draw_looks(len(labels), rng)
        xs.append(render(ink, looks, rng))
        ys.append(torch.as_tensor(labels))
        caps += [caption(int(y), lk, rng) for y, lk in zip(labels, looks, strict=True)]
    return torch.cat(xs), torch.cat(ys), caps
