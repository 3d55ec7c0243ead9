"""The per-image work of ``trustgain protect`` and ``trustgain recover`` as batch jobs.

Each job is a small picklable object (settings, surrogate folders and the 32-byte residual key)
turning one input file's bytes into output bytes, so :func:`trustgain.protection.batch.run_batch`
can run it in this process or as Ray tasks.

Which images are protected: 8-bit RGB and 8-bit grayscale, of any container Pillow reads (JPEG
inputs are protected as their decoded pixels; outputs are always PNG, since protection and
exact recovery need lossless pixels). Refused, each with its reason: images with an alpha
channel (the residual would not cover alpha, so recovery could not promise the whole file),
16-bit and float images (budgets are 8-bit pixel units), CMYK, palette and other modes (convert
them yourself, so the conversion is your choice), and truncated or unreadable files.
Protected and recovered PNGs carry the input's colour profile and EXIF orientation (pixels stay
in stored order), nothing else of its metadata.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from trustgain.errors import ConfigError, InputError, TrustgainError
from trustgain.protection.batch import Produced, Refused

#: Key derivation: ``keyring.derive(KEY_STAGE, KEY_PURPOSE)`` seals and opens residuals.
KEY_STAGE = "protect.rae"
KEY_PURPOSE = "residual"
STORES = ("png", "sidecar", "both")
_MODES = {"RGB", "L"}
_REFUSED = {
    "RGBA": "has an alpha channel, which the residual does not cover; flatten it to RGB first",
    "LA": "has an alpha channel, which the residual does not cover; flatten it to L first",
    "PA": "palette image with alpha: convert it to RGB first",
    "P": "palette image: convert it to RGB first (protection would change its palette)",
    "CMYK": "CMYK image: convert it to RGB first",
    "1": "1-bit image: a bilevel image cannot carry an invisible perturbation",
    "I;16": "16-bit image: budgets are 8-bit pixel units; convert it to 8 bits first",
    "I;16B": "16-bit image: budgets are 8-bit pixel units; convert it to 8 bits first",
    "I;16L": "16-bit image: budgets are 8-bit pixel units; convert it to 8 bits first",
    "I": "32-bit integer image: convert it to 8 bits first",
    "F": "32-bit float image: convert it to 8 bits first",
}


def decode(data: bytes, image_id: str) -> np.ndarray:
    """An input's pixels as uint8 HxW (grayscale) or HxWx3 (RGB), or a one-line InputError."""
    return decode_image(data)[0]


def decode_image(data: bytes) -> tuple[np.ndarray, dict[str, bytes]]:
    """:func:`decode`'s pixels and the metadata the output carries (ICC profile, orientation)."""
    from PIL import Image, UnidentifiedImageError

    from trustgain.watermark.images import MAX_PIXELS, display_metadata, remember_orientation

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise InputError(f"{image.width}x{image.height} is larger than {MAX_PIXELS} px")
            remember_orientation(image)
            image.load()
    except UnidentifiedImageError:
        raise InputError("not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError("image is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"corrupt or truncated image ({exc})") from None
    if image.mode not in _MODES:
        raise InputError(_REFUSED.get(image.mode, f"{image.mode} image: convert it to RGB first"))
    # a writable copy (torch.from_numpy needs one)
    return np.array(image, dtype=np.uint8), display_metadata(image)


def png_bytes(pixels: np.ndarray, metadata: dict[str, bytes] | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True, **(metadata or {}))
    return buf.getvalue()


def png_metadata(data: bytes) -> dict[str, bytes]:
    """The carried metadata of a PNG (read from its header chunks; {} if unreadable)."""
    from PIL import Image, UnidentifiedImageError

    from trustgain.watermark.images import display_metadata

    try:
        return display_metadata(Image.open(io.BytesIO(data)))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return {}


def surrogate_digest(folder: str | Path) -> str:
    """SHA-256 over a model folder's files (names and bytes), to pin it in the manifest."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def residual_image_id(rel: str, limit: int = 160) -> str:
    """The id bound into the residual: the relative path, shortened with a digest if long."""
    if len(rel.encode()) <= limit:
        return rel
    tail = rel.encode()[-(limit - 18):].decode("utf-8", "ignore")
    return hashlib.sha256(rel.encode()).hexdigest()[:16] + ".." + tail


@lru_cache(maxsize=4)
def load_surrogates(folders: tuple[str, ...]) -> list[Any]:
    """The surrogate ensemble, once per process: the folders' models, or the embedded judge."""
    from trustgain.protection import surrogates

    if not folders:
        return [surrogates.JudgeSurrogate().eval()]
    models = []
    for folder in folders:
        models.extend(surrogates.load(folder))
    return models


@dataclass(frozen=True)
class ProtectJob:
    """Protect one image: PNG out, residual in a PNG chunk, a ``.rae`` sidecar or both."""

    config: Any  # trustgain.protection.api.ProtectConfig
    key: bytes = field(repr=False)
    key_id: str
    store: str = "png"
    surrogates: tuple[str, ...] = ()  # folders saved by trustgain.protection.surrogates.save
    surrogate_digests: tuple[str, ...] = ()
    batch_size: int = 1  # images per forward pass (serial runs); not a setting: same outputs
    classes: tuple[str, ...] = ()  # class-wise poisons: IN_DIR's class subfolders, in order
    name: str = "protect"
    output_suffix: str = ".png"
    companions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.store not in STORES:
            raise InputError(f"residual storage must be one of {', '.join(STORES)}, "
                             f"not {self.store!r}")

    @property
    def extra_suffixes(self) -> tuple[str, ...]:
        from trustgain.protection.residual import SIDECAR_SUFFIX

        return (SIDECAR_SUFFIX,) if self.store in ("sidecar", "both") else ()

    def settings(self) -> dict[str, Any]:
        out = {"config": self.config.to_dict(), "key_id": self.key_id, "residual": self.store,
               "surrogates": [{"path": p, "sha256": d}
                              for p, d in zip(self.surrogates, self.surrogate_digests,
                                              strict=False)] or "embedded digits judge"}
        if self.classes:
            out["classes"] = list(self.classes)
        ddpm = self.config.extra.get("ddpm")
        if isinstance(ddpm, str):
            out["ddpm_sha256"] = surrogate_digest(ddpm)
        return out

    def __call__(self, data: bytes, image_id: str, companions: dict[str, bytes]
                 ) -> Produced | Refused:
        return self.call_many([(data, image_id, companions)])[0]

    def call_many(self, inputs: list[tuple[bytes, str, dict[str, bytes]]]
                  ) -> list[Produced | Refused]:
        """Protect several inputs with one :func:`~trustgain.protection.api.protect_batch`;
        each unreadable or unsupported input is refused on its own."""
        from trustgain.protection.api import as_tensor, protect_batch

        results: list[Produced | Refused | None] = [None] * len(inputs)
        good: list[tuple[int, np.ndarray, str]] = []
        metadata: dict[int, dict[str, bytes]] = {}
        labels: dict[int, int] = {}
        for i, (data, image_id, _) in enumerate(inputs):
            top = image_id.split("/", 1)[0] if "/" in image_id else None
            if self.classes and top not in self.classes:
                results[i] = Refused("not inside a class folder of the input folder "
                                     f"(classes: {', '.join(self.classes)})")
                continue
            try:
                pixels, metadata[i] = decode_image(data)
                as_tensor(pixels)  # its shape and size, before the batch runs
            except TrustgainError as exc:
                results[i] = Refused(str(exc))
                continue
            if self.classes:
                labels[i] = self.classes.index(top)
            good.append((i, pixels, residual_image_id(image_id)))

        def run(batch: list[tuple[int, np.ndarray, str]]) -> None:
            done = protect_batch([g[1] for g in batch], key=self.key, config=self.config,
                                 surrogates=load_surrogates(self.surrogates),
                                 image_ids=[g[2] for g in batch],
                                 labels=[labels[g[0]] for g in batch] if labels else None,
                                 batch_size=max(1, self.batch_size))
            for (i, pixels, _), (protected, sealed) in zip(batch, done, strict=True):
                results[i] = self._produced(pixels, protected, sealed, metadata[i])

        try:
            if good:
                run(good)
        except ConfigError:
            raise  # the settings are wrong for every image: stop the batch
        except TrustgainError:  # one image's fault (e.g. ddpm on a shape it cannot take)
            for one in good:  # redo them one by one, so only that image is refused
                try:
                    run([one])
                except ConfigError:
                    raise
                except TrustgainError as exc:
                    results[one[0]] = Refused(str(exc))
        return [r for r in results if r is not None]

    def _produced(self, pixels: np.ndarray, protected: np.ndarray, sealed: bytes,
                  metadata: dict[str, bytes]) -> Produced:
        from trustgain.protection.residual import to_png

        chunk = sealed if self.store in ("png", "both") else None
        extras = ((self.extra_suffixes[0], sealed),) if self.extra_suffixes else ()
        diff = np.abs(pixels.astype(np.int16) - protected.astype(np.int16))
        mse = float(np.mean(diff.astype(np.float64) ** 2))
        psnr = round(10 * np.log10(255.0**2 / mse), 2) if mse else None
        return Produced(to_png(protected, chunk, metadata), extras,
                        {"shape": list(pixels.shape), "linf": int(diff.max(initial=0)),
                         "psnr_db": psnr, "residual_bytes": len(sealed)})


@dataclass(frozen=True)
class RecoverJob:
    """Recover one original from a protected PNG and its residual (chunk, else sidecar)."""

    key: bytes = field(repr=False)
    key_id: str
    lenient: bool = False
    name: str = "recover"
    output_suffix: str = ".png"
    extra_suffixes: tuple[str, ...] = ()
    companions: tuple[str, ...] = (".rae",)

    def settings(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "lenient": self.lenient}

    def __call__(self, data: bytes, image_id: str, companions: dict[str, bytes]
                 ) -> Produced | Refused:
        from trustgain.protection.api import recover
        from trustgain.protection.residual import RecoveryWarning, from_png

        try:
            pixels, sealed = from_png(data)
            where = "png"
            if sealed is None:
                sealed, where = companions.get(".rae"), "sidecar"
            if sealed is None:
                return Refused(f"carries no residual and has no sidecar {image_id}.rae")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RecoveryWarning)
                original = recover(pixels, sealed, key=self.key, lenient=self.lenient)
        except TrustgainError as exc:
            return Refused(str(exc))
        warned = [str(w.message) for w in caught if issubclass(w.category, RecoveryWarning)]
        return Produced(png_bytes(original, png_metadata(data)), (),
                        {"residual": where, "exact": not warned}, warned[0] if warned else None)


__all__ = ["KEY_PURPOSE", "KEY_STAGE", "ProtectJob", "RecoverJob", "decode"]
