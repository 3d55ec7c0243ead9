"""``privacy.memorization``: flag an output that is a near-copy of a training image.

Space and distance (Carlini et al. 2023, "Extracting Training Data from Diffusion Models",
section 5.1): each image is resized to ``size`` x ``size`` RGB, scaled to [0, 1] and
standardised (zero mean, unit variance per image, so a global brightness or contrast change
does not hide a copy); the distance is the root-mean-square difference. As in that paper a
generation's distance to its nearest training image is divided by its mean distance to its
``k`` nearest ones: a copy is far closer to one image than to the rest, while a blank or
generic output is about equally close to all. Pixels rather than learned copy-detection
features (SSCD, DINO) because those need model-hub weights that trustgain does not ship, and
the embedded models work at 32x32 where pixels are what a copy repeats.

The threshold on that ratio is calibrated on held-out generations (outputs of a model that
never saw the indexed images, or prompts away from them): :func:`calibrate` picks the
``k``-th smallest calibration score with ``k = floor(rate * (n + 1))``, so a fresh non-copy is
flagged with probability at most ``rate`` (split-conformal rank argument, Vovk et al.
2005). The index file keeps the features, threshold and how it was calibrated.

The index holds downscaled training images: keep it as private as the training data. The
stage records per output only the distance, the ratio and the flag, never which training
image matched or its content. It does not catch copies that are shifted, cropped or
mirrored far enough to move pixels, nor style or concept copying.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from trustgain.errors import AuditFailed, ConfigError, InputError
from trustgain.fileio import write_atomic
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult

FORMAT = "trustgain.memorization-index/1"
_ON_FLAG = ("raise", "record")


def features(images: Any, size: int = 32) -> np.ndarray:
    """Standardised pixels, (N, size*size*3) float32, of PIL images or uint8/float arrays."""
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 3):
        images = [images]
    rows = []
    for im in images:
        if isinstance(im, np.ndarray):
            arr = im if im.dtype == np.uint8 else (np.clip(im, 0, 1) * 255).round()
            im = Image.fromarray(arr.astype(np.uint8))
        if not isinstance(im, Image.Image):
            raise InputError(f"cannot index a {type(im).__name__}; give images")
        px = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
        px = px.reshape(-1) / 255.0
        rows.append((px - px.mean()) / max(float(px.std()), 1e-3))
    if not rows:
        raise InputError("no images given")
    return np.stack(rows).astype(np.float32)


def _distances(query: np.ndarray, base: np.ndarray) -> np.ndarray:
    """RMS distance between every query and base row (N_q, N_b)."""
    sq = (query**2).sum(1)[:, None] + (base**2).sum(1)[None] - 2.0 * query @ base.T
    return np.sqrt(np.maximum(sq, 0.0) / query.shape[1])


@dataclass(frozen=True)
class MemorizationIndex:
    """Features of the training images, the neighbour count and the calibrated threshold."""

    features: np.ndarray
    size: int = 32
    k: int = 10
    threshold: float | None = None
    calibration: dict[str, Any] | None = None

    def score(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """(nearest distance, ratio to the mean of the ``k`` nearest) for each image."""
        d = _distances(features(images, self.size), self.features)
        k = min(self.k, d.shape[1])
        near = np.sort(d, axis=1)[:, :k]
        return near[:, 0], near[:, 0] / np.maximum(near.mean(axis=1), 1e-12)

    def flags(self, images: Any) -> np.ndarray:
        if self.threshold is None:
            raise ConfigError("the index is not calibrated", hint="run calibrate() first")
        return self.score(images)[1] < self.threshold

    @property
    def digest(self) -> str:
        """SHA-256 of the features (identifies the index in records)."""
        return hashlib.sha256(np.ascontiguousarray(self.features).tobytes()).hexdigest()

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        meta = {"format": FORMAT, "size": self.size, "k": self.k, "threshold": self.threshold,
                "calibration": self.calibration}
        buf = io.BytesIO()
        np.savez_compressed(buf, features=self.features, meta=np.array(json.dumps(meta)))
        return write_atomic(path, buf.getvalue(), overwrite=overwrite, mode=0o600)


def build_index(images: Any, *, size: int = 32, k: int = 10) -> MemorizationIndex:
    """Index the training images (PIL images or an (N, H, W, 3) uint8 array)."""
    if size < 4 or k < 1:
        raise ConfigError("size must be >= 4 and k >= 1")
    return MemorizationIndex(features(images, size), size=size, k=k)


def calibrate(
    index: MemorizationIndex, generations: Any, *, target_rate: float = 0.01
) -> MemorizationIndex:
    """A copy of ``index`` whose threshold flags at most ``target_rate`` of non-copies.

    ``generations``: held-out outputs known not to copy the indexed images; needs at least
    ``1 / target_rate - 1`` of them.
    """
    if not 0 < target_rate < 1:
        raise ConfigError("target_rate must lie in (0, 1)")
    _, ratio = index.score(generations)
    n = len(ratio)
    rank = int(np.floor(target_rate * (n + 1)))
    if rank < 1:
        raise InputError(
            f"{n} calibration generations cannot support a false-flag rate of {target_rate}",
            hint=f"give at least {int(np.ceil(1 / target_rate - 1))} generations",
        )
    threshold = float(np.sort(ratio)[rank - 1])
    cal = {"target_rate": target_rate, "n": n, "rank": rank,
           "flagged_share": float(np.mean(ratio < threshold))}
    return replace(index, threshold=threshold, calibration=cal)


def load_index(path: str | os.PathLike[str]) -> MemorizationIndex:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            feats = data["features"]
    except FileNotFoundError:
        raise InputError(f"{path}: no such index file") from None
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a memorization index ({exc})") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: not a memorization index (format {meta.get('format')!r})")
    return MemorizationIndex(feats.astype(np.float32), size=int(meta["size"]), k=int(meta["k"]),
                             threshold=meta["threshold"], calibration=meta["calibration"])


@lru_cache(maxsize=4)
def _cached_index(path: str, mtime_ns: int) -> MemorizationIndex:
    return load_index(path)


def _is_image(output: Any) -> bool:
    return isinstance(output, Image.Image) or (
        isinstance(output, np.ndarray) and output.ndim == 3 and output.shape[-1] in (1, 3, 4)
    )


@dataclass(frozen=True)
class MemorizationGuard:
    """Flag image outputs that are near-copies of the images in a calibrated ``index`` file.

    ``index``: path of a file made by :func:`build_index`, :func:`calibrate` and ``save``
    (e.g. saved next to the model); ``on_flag``: "raise" fails the job, "record" only
    records. Without an index the stage records that it did not run.
    """

    name: ClassVar[str] = "privacy.memorization"
    phase: ClassVar[Phase] = Phase.AUDIT
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset()

    index: str | None = None
    on_flag: str = "raise"

    def __post_init__(self) -> None:
        if self.on_flag not in _ON_FLAG:
            raise ValueError(f"on_flag must be one of {', '.join(_ON_FLAG)}, not {self.on_flag!r}")

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        params: dict[str, Any] = {"on_flag": self.on_flag}
        if self.index is None:
            return StageResult(item, params, applied=False, reason="no memorization index set")
        path = Path(self.index)
        if not path.is_file():
            raise InputError(f"memorization index {path} not found",
                             hint="build one with trustgain.privacy.memorization.build_index")
        index = _cached_index(str(path.resolve()), path.stat().st_mtime_ns)
        if index.threshold is None:
            raise ConfigError(f"memorization index {path} is not calibrated",
                              hint="run trustgain.privacy.memorization.calibrate and save it")
        positions = [i for i, o in enumerate(item.outputs) if _is_image(o)]
        params.update(index_sha256=index.digest[:16], threshold=round(index.threshold, 6),
                      space=f"standardised pixels {index.size}x{index.size}, k={index.k}")
        if not positions:
            return StageResult(item, params, applied=False, reason="no image outputs")
        dist, ratio = index.score([item.outputs[i] for i in positions])
        checked = [
            {"index": i, "distance": round(float(d), 5), "ratio": round(float(r), 5),
             "flagged": bool(r < index.threshold)}
            for i, d, r in zip(positions, dist, ratio, strict=True)
        ]
        flagged = [c["index"] for c in checked if c["flagged"]]
        params.update(outputs=checked, flagged=len(flagged))
        if flagged and self.on_flag == "raise":
            raise AuditFailed(
                self.name,
                f"output(s) {', '.join(map(str, flagged))} are near-copies of training images",
                hint="regenerate with another seed or prompt, or use a DP fine-tuned model",
            )
        return StageResult(item, params)
