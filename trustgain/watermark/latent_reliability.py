"""Per-element reliability of the latent mark's detector, and the weights it gives.

Not every initial-latent element survives generation, decoding, an attack, encoding and DDIM
inversion equally well: on trustgain-mini-sd (4x8x8 latents, detector encoder, 25 steps, the
benchmark's attack mixture) the correlation between an element of ``z_T`` and its inverted
estimate ranges from about 0 to 0.71 (median 0.22), and it depends on the element's channel and
position, not on the image. :func:`fit` measures it from pairs (true, inverted) of the model's
own samples; :meth:`Reliability.weights` turns one inverted latent into integer weights

    ``w_i = round(resolution * log(q_i / (1 - q_i)))``, clipped to ``[0, cap]``,
    ``q_i = Phi(rho_i / sqrt(1 - rho_i**2) * |z_i| / s_i)``,

the log-likelihood ratio of element ``i``'s sign being right under a Gaussian channel of
correlation ``rho_i`` (``s_i``: the inverted element's spread). Elements that carry nothing
(``rho_i <= 0``) get weight 0. The weights depend only on the image (and the fixed fit), never on
the key, so the weighted statistics of :mod:`trustgain.watermark.latent_stats` keep their exact
null: integer weights, convolved.

Measured on 1,000 held-out samples (BENCHMARKS.md, "Latent mark: per-element reliability"),
these weights lift the record-mode TPR at 1e-6 from 0.44 (4 |z|-rank levels) to about 0.68
without attack; 16 rank levels give 0.50 and an equal-for-all ``rho`` 0.37, so the gain is the
per-element calibration, which 10 calibration images (an earlier attempt) could not estimate.

Written here: this is the project's detector, and no library ships per-coordinate likelihood
weights for a keyed sign test.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import norm

from trustgain.errors import InputError
from trustgain.fileio import write_atomic

FORMAT = "trustgain/latent-reliability/v1"
RESOLUTION = 4  # weight units per nat of log-likelihood ratio
CAP = 60  # largest weight: keeps the exact null's convolutions short
MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class Reliability:
    """Per-element channel correlation ``rho`` and spread ``scale`` of the inverted latents
    (flattened, one per element); ``meta`` says how they were measured (model, encoder, steps,
    guidance, attacks, samples) and is informative only."""

    rho: np.ndarray
    scale: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        rho = np.asarray(self.rho, dtype=np.float64).ravel()
        scale = np.asarray(self.scale, dtype=np.float64).ravel()
        if rho.shape != scale.shape or rho.size == 0:
            raise ValueError("rho and scale must be non-empty and of one length")
        if not (np.isfinite(rho).all() and np.isfinite(scale).all()):
            raise ValueError("rho and scale must be finite")
        if (np.abs(rho) > 1).any() or (scale <= 0).any():
            raise ValueError("rho must lie in [-1, 1] and scale be positive")
        object.__setattr__(self, "rho", rho)
        object.__setattr__(self, "scale", scale)

    @property
    def size(self) -> int:
        return int(self.rho.size)

    def weights(self, z: np.ndarray, valid: np.ndarray | None = None, *,
                resolution: int = RESOLUTION, cap: int = CAP) -> np.ndarray:
        """Integer weights (0..``cap``) for one inverted latent ``z`` (flattened); elements
        outside ``valid`` get 0."""
        z = np.asarray(z, dtype=np.float64).ravel()
        if z.size != self.size:
            raise ValueError(f"the reliability was fitted for {self.size} latent elements, "
                             f"the latents have {z.size}")
        r = np.clip(self.rho, 0.0, 0.999)
        t = r / np.sqrt(1.0 - r * r) * np.abs(z) / self.scale
        # log(q / (1 - q)) with q = Phi(t), computed in logs so large t stays finite
        llr = norm.logcdf(t) - norm.logsf(t)
        w = np.clip(np.round(resolution * llr), 0, cap).astype(np.int64)
        if valid is not None:
            w[~np.asarray(valid, dtype=bool).ravel()] = 0
        return w

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write as JSON, atomically; an existing file is refused (:class:`OutputExistsError`)
        unless ``overwrite``."""
        doc = {"format": FORMAT, "rho": [round(float(v), 6) for v in self.rho],
               "scale": [round(float(v), 6) for v in self.scale], "meta": self.meta}
        return write_atomic(path, (json.dumps(doc) + "\n").encode(),
                            overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Reliability:
        """Read a file written by :meth:`save`; one-line errors for anything else."""
        path = Path(path)
        try:
            if path.stat().st_size > MAX_BYTES:
                raise InputError(f"{path} is larger than {MAX_BYTES >> 20} MiB: "
                                 "not a reliability file")
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: no such reliability file") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{path} is not a JSON reliability file") from None
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InputError(f"{path} is not a {FORMAT} file")
        try:
            return cls(np.array(doc["rho"], dtype=np.float64),
                       np.array(doc["scale"], dtype=np.float64), dict(doc.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: bad reliability values ({exc})") from None


#: Fewest (true, inverted) rows :func:`fit` accepts.
MIN_PAIRS = 50


def fit(true: np.ndarray, inverted: np.ndarray, meta: dict | None = None) -> Reliability:
    """Fit from initial latents ``true`` and their inverted estimates ``inverted`` (rows
    aligned; several attacked copies of one sample may appear as several rows)."""
    a = np.asarray(true, dtype=np.float64).reshape(len(true), -1)
    b = np.asarray(inverted, dtype=np.float64).reshape(len(inverted), -1)
    if a.shape != b.shape:
        raise ValueError(f"{a.shape} true latents for {b.shape} inverted ones")
    if len(a) < MIN_PAIRS:
        raise ValueError(f"{len(a)} pairs are too few to fit a reliability "
                         f"(at least {MIN_PAIRS})")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("latents hold NaN or infinite values")
    ac, bc = a - a.mean(0), b - b.mean(0)
    sa, sb = np.sqrt((ac * ac).mean(0)), np.sqrt((bc * bc).mean(0))
    sb = np.maximum(sb, 1e-6)
    rho = (ac * bc).mean(0) / (np.maximum(sa, 1e-12) * sb)
    return Reliability(np.clip(rho, -1.0, 1.0), sb, dict(meta or {}, pairs=len(a)))
