"""``privacy.memorization``: flag an output that is a near-copy of a training image.

Space: each image is resized to ``size`` x ``size``, scaled to [0, 1], reduced to one channel
(``channels="max"``, the default: the maximum over R, G and B, the "ink map" the digits judge
reads, so a copy drawn in another ink colour still reads as a copy; ``"rgb"`` keeps all three)
and standardised (zero mean, unit variance per image, so a global brightness or contrast change
does not hide a copy); the distance is the root-mean-square difference.

Score: a generation's distance to its nearest training image, divided by its mean distance to
its ``k`` nearest images of a *public reference set* (``reference``: images of the same kind
that the model may legitimately produce, e.g. renderings of the base model's own training
data). A copy is far closer to one training image than to anything public; a typical output is
about as close to the public images as to the training ones. Without a reference the
denominator is the mean distance to the ``k`` nearest *training* images, as in Carlini et al.
2023 ("Extracting Training Data from Diffusion Models", section 5.1). That ratio misses copies
of training images that have near-duplicates among the training images (the denominator
shrinks with the numerator); and with few training images their ``k`` nearest are mostly
unrelated ones, so a loose copy scores about like a typical output, while a dense public
reference sits close to typical outputs and so separates the two. In the privacy audit
(issue 6, ``trustgain.bench.privacy_audit``) the Carlini ratio on RGB pixels flagged 182/194
of an overfit model's near-copies, on the ink map 186/194 (170/194 with another draw of
calibration generations); the reference ratio flagged 190/194 (375-378/383 on generations
with other seeds) at 0/184 false flags on the DP model's outputs (1-2/550 with other seeds).
HOG features and the digits judge's own features did worse (at most 0.91).
Pixels rather than learned copy-detection features (SSCD, DINO) because those need model-hub
weights that trustgain does not ship, and the embedded models work at 32x32 where pixels are
what a copy repeats.

The threshold on the ratio is calibrated on held-out generations (outputs of a model that
never saw the indexed images, or prompts away from them): :func:`calibrate` picks the
``k``-th smallest calibration score with ``k = floor(rate * (n + 1))``, so a fresh non-copy is
flagged with probability at most ``rate`` (split-conformal rank argument, Vovk et al.
2005). The index file keeps the features, the reference features (float16), the threshold and
how it was calibrated; files of format 1 (RGB, no reference) are refused: rebuild them.

The index holds downscaled training images: keep it as private as the training data. The
stage records per output only the distance, the ratio and the flag, never which training
image matched or its content. It does not catch copies that are shifted, cropped or
mirrored far enough to move pixels, nor style or concept copying; with ``channels="max"`` it
does not see colour, so an image whose content lies in hue alone should use ``"rgb"``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from trustgain import settings
from trustgain.errors import AuditFailed, ConfigError, InputError
from trustgain.fileio import write_atomic
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult

FORMAT = "trustgain.memorization-index/2"
_ON_FLAG = ("raise", "record")
_CHANNELS = ("max", "rgb")


def features(images: Any, size: int = 32, channels: str = "max") -> np.ndarray:
    """Standardised pixels of PIL images or uint8/float arrays: (N, size*size) float32 for
    ``channels="max"`` (maximum over R, G, B), (N, size*size*3) for ``"rgb"``."""
    if channels not in _CHANNELS:
        raise ConfigError(f"channels must be one of {', '.join(_CHANNELS)}, not {channels!r}")
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray)
                                                and images.ndim in (2, 3)):
        images = [images]
    rows = []
    for im in images:
        if isinstance(im, np.ndarray):
            if im.ndim == 2:
                im = im[..., None]
            if im.ndim != 3 or im.shape[-1] not in (1, 3, 4) or im.dtype.kind not in "biuf":
                raise InputError(f"cannot index an array of shape {im.shape} and dtype "
                                 f"{im.dtype}; give (H, W, 1|3|4) images")
            if im.dtype.kind == "f" and not np.isfinite(im).all():
                raise InputError("an image holds NaN or infinite values")
            arr = im if im.dtype == np.uint8 else (np.clip(im, 0, 1) * 255).round()
            arr = arr.astype(np.uint8)
            im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        if not isinstance(im, Image.Image):
            raise InputError(f"cannot index a {type(im).__name__}; give images")
        px = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
        px = (px.max(axis=-1) if channels == "max" else px).reshape(-1) / 255.0
        rows.append((px - px.mean()) / max(float(px.std()), 1e-3))
    if not rows:
        raise InputError("no images given")
    return np.stack(rows).astype(np.float32)


def _distances(query: np.ndarray, base: np.ndarray) -> np.ndarray:
    """RMS distance between every query and base row (N_q, N_b)."""
    base = base.astype(np.float32, copy=False)
    sq = (query**2).sum(1)[:, None] + (base**2).sum(1)[None] - 2.0 * query @ base.T
    return np.sqrt(np.maximum(sq, 0.0) / query.shape[1])


def _k_nearest_mean(d: np.ndarray, k: int) -> np.ndarray:
    k = min(k, d.shape[1])
    return np.partition(d, k - 1, axis=1)[:, :k].mean(axis=1)


@dataclass(frozen=True)
class MemorizationIndex:
    """Features of the training images (and of a public reference set), the neighbour count
    and the calibrated threshold."""

    features: np.ndarray
    size: int = 32
    k: int = 10
    threshold: float | None = None
    calibration: dict[str, Any] | None = None
    reference: np.ndarray | None = None  # features of public images (float16), or None
    channels: str = "max"

    def score(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """(nearest training distance, ratio) for each image; the ratio divides the nearest
        distance by the mean distance to the ``k`` nearest reference images (or, without a
        reference, the ``k`` nearest training images)."""
        q = features(images, self.size, self.channels)
        d = _distances(q, self.features)
        near = d.min(axis=1)
        base = d if self.reference is None else _distances(q, self.reference)
        return near, near / np.maximum(_k_nearest_mean(base, self.k), 1e-12)

    def flags(self, images: Any) -> np.ndarray:
        if self.threshold is None:
            raise ConfigError("the index is not calibrated", hint="run calibrate() first")
        return self.score(images)[1] < self.threshold

    @property
    def space(self) -> str:
        ref = "training images" if self.reference is None else (
            f"{len(self.reference)} reference images")
        return (f"standardised pixels {self.size}x{self.size} ({self.channels}), k={self.k}, "
                f"ratio against {ref}")

    @property
    def digest(self) -> str:
        """SHA-256 of the features and reference (identifies the index in records)."""
        h = hashlib.sha256(np.ascontiguousarray(self.features).tobytes())
        if self.reference is not None:
            h.update(np.ascontiguousarray(self.reference).tobytes())
        h.update(self.channels.encode())
        return h.hexdigest()

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        meta = {"format": FORMAT, "size": self.size, "k": self.k, "channels": self.channels,
                "threshold": self.threshold, "calibration": self.calibration}
        arrays = {"features": self.features, "meta": np.array(json.dumps(meta))}
        if self.reference is not None:
            arrays["reference"] = self.reference
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return write_atomic(path, buf.getvalue(), overwrite=overwrite, mode=0o600)


def build_index(images: Any, *, reference: Any = None, size: int = 32, k: int = 10,
                channels: str = "max") -> MemorizationIndex:
    """Index the training images (PIL images or an (N, H, W, 3) uint8 array).

    ``reference``: public images of the same kind (not the training images; e.g. renderings
    of the base model's training data), at least ``k`` of them; strongly recommended, see
    the module docstring. Their features are kept as float16.
    """
    if size < 4 or k < 1:
        raise ConfigError("size must be >= 4 and k >= 1")
    ref = None
    if reference is not None:
        ref = features(reference, size, channels).astype(np.float16)
        if len(ref) < k:
            raise InputError(f"{len(ref)} reference images are fewer than k={k}")
    return MemorizationIndex(features(images, size, channels), size=size, k=k, reference=ref,
                             channels=channels)


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
            meta = json.loads(str(data["meta"][()]))
            feats = data["features"]
            ref = data["reference"] if "reference" in data.files else None
    except FileNotFoundError:
        raise InputError(f"{path}: no such index file") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a memorization index ({exc})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt == "trustgain.memorization-index/1":
        raise InputError(f"{path}: a memorization index of format 1 (RGB pixels, no reference "
                         "set), which this version no longer reads",
                         hint="rebuild it with `trustgain audit memorization-index "
                         "--reference ...` (build_index(..., reference=...) and calibrate "
                         "in Python)")
    if fmt != FORMAT:
        raise InputError(f"{path}: not a memorization index (format {fmt!r})")
    problem = _index_problem(meta, feats, ref)
    if problem:  # a damaged index would pass copies as non-copies: refuse it
        raise InputError(f"{path}: damaged memorization index ({problem})",
                         hint="rebuild it with build_index and calibrate")
    return MemorizationIndex(feats.astype(np.float32), size=meta["size"], k=meta["k"],
                             threshold=None if meta["threshold"] is None
                             else float(meta["threshold"]),
                             calibration=meta["calibration"],
                             reference=None if ref is None else ref.astype(np.float16),
                             channels=meta["channels"])


def _index_problem(meta: dict[str, Any], feats: np.ndarray, ref: np.ndarray | None) -> str | None:
    """What is wrong with a loaded index's metadata and arrays, or None."""
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    size, k, threshold = meta.get("size"), meta.get("k"), meta.get("threshold")
    if not (whole(size) and size >= 4 and whole(k) and k >= 1):
        return f"size {size!r} and k {k!r} must be whole numbers, size >= 4, k >= 1"
    if meta.get("channels") not in _CHANNELS:
        return f"channels {meta.get('channels')!r} is not one of {', '.join(_CHANNELS)}"
    if threshold is not None and not (
            isinstance(threshold, int | float) and not isinstance(threshold, bool)
            and np.isfinite(threshold) and threshold >= 0):
        return f"threshold {threshold!r} is not a finite number >= 0"
    if not isinstance(meta.get("calibration"), dict | None):
        return "calibration is not an object"
    width = size * size * (1 if meta["channels"] == "max" else 3)
    for name, arr in (("features", feats), ("reference", ref)):
        if arr is None:
            continue
        if arr.dtype.kind != "f" or arr.ndim != 2 or arr.shape[1] != width or len(arr) == 0:
            return (f"{name} must be a non-empty (N, {width}) float array, not "
                    f"{arr.shape} {arr.dtype}")
        if not np.isfinite(arr).all():
            return f"{name} holds NaN or infinite values"
    if ref is not None and len(ref) < k:
        return f"{len(ref)} reference images are fewer than k={k}"
    return None


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
    version: ClassVar[str] = "2"  # 2: ink map, public reference set
    requires: ClassVar[frozenset[str]] = frozenset({"images"})

    index: str | None = None
    on_flag: str = "raise"

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", settings.text("index", self.index, optional=True,
                                                        path=True))
        if self.on_flag not in _ON_FLAG:
            raise ValueError(f"on_flag must be one of {', '.join(_ON_FLAG)}, not {self.on_flag!r}")

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        params: dict[str, Any] = {"on_flag": self.on_flag}
        if self.index is None:
            return StageResult(item, params, applied=False, reason="no memorization index set")
        path = Path(self.index)
        if not path.is_file():
            raise InputError(f"memorization index {path} not found",
                             hint="build one with `trustgain audit memorization-index` "
                             "(trustgain.privacy.memorization.build_index in Python)")
        index = _cached_index(str(path.resolve()), path.stat().st_mtime_ns)
        if index.threshold is None:
            raise ConfigError(f"memorization index {path} is not calibrated",
                              hint="run trustgain.privacy.memorization.calibrate and save it")
        positions = [i for i, o in enumerate(item.outputs) if _is_image(o)]
        params.update(index_sha256=index.digest[:16], threshold=round(index.threshold, 6),
                      space=index.space)
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
