"""``watermark.pixel``: a keyed, tiled spread-spectrum mark in luminance, for any image.

Embedding. A 128x128-pixel tile is built from a 32x32 grid of +-1 chips, upsampled by
Fourier zero-padding (so the tile is periodic and band-limited below 1/8 cycle per pixel, the
band that survives JPEG, blur and downscaling). Half the chips are a keyed synchronisation
pattern (3/8 of them); the rest spread a 125-bit BCH codeword carrying a 32-bit payload and a 16-bit
keyed tag. Chip signs, roles and bit positions come from the key and one of ``NONCES``
per-image nonces, so averaging many marked images does not reveal one fixed pattern. The tile
repeats over the image and is added to R, G and B alike (a pure luminance change).

Detection. The luminance is high-passed and locally normalised. Its autocorrelation shows
the tile lattice, from which scale and rotation are read (resize, screenshots, small
rotations). The image is folded onto one tile in that frame, and every nonce's sync pattern
is cross-correlated with it by FFT, which finds the crop offset. At the best offset the chips
are read; the sync chips give the statistic ``z`` and the codeword bits give the payload.

Null and p-value. Under "not marked with this key", the chip signs are independent of the
image, so for a fixed offset ``z`` is a Rademacher sum with unit variance and
P(z >= t) <= exp(-t^2 / 2) (Hoeffding). A union bound over every offset, nonce and lattice
candidate searched gives ``p_value = min(1, M * exp(-z^2 / 2))``, a conservative p-value
checked empirically by ``python -m trustgain.bench watermark``. The bound is nearly tight
(the statistic is close to Gaussian), so at FPR 1e-3 a few in 10,000 wrong-key tests may pass.

Payload. It is released only when BCH decoding succeeds and the 16-bit keyed tag verifies, so a
released payload is right unless a wrong codeword passes the tag (at most ``2**6 / 2**16`` per
decode with Chase-II's 64 trials). ``detect(..., require_payload=True)`` also makes
``detected`` require that release: "detected" then always comes with the payload, and under the
null the message chips (disjoint from the sync chips, with independent keyed signs) must also
pass the tag, so the decision's false-positive rate is at most ``fpr * PAYLOAD_FALSE_ACCEPT``.

Why hand-written: no maintained package offers a keyed, synchronised image watermark with a
calibrated detector (invisible-watermark's methods are unkeyed and lose synchronisation on
crops, resizes and rotations). ECC is ``bchlib``.

Not protected against: regeneration through a diffusion model or VAE, large rotations
(beyond about 10 degrees), an attacker who collects many images marked with the same nonce
(about 20 x ``NONCES`` images), and anyone holding the key.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import numbers
import secrets
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import fft, ndimage

from trustgain.errors import InputError
from trustgain.watermark.ecc import (
    CODE_BITS,
    PAYLOAD_BITS,
    chase_decode,
    encode_bits,
)
from trustgain.watermark.images import add_luminance, check_embeddable

TILE = 128  # pixels
GRID = 32  # chips per tile side
NONCES = 32  # per-image patterns per key
_CHIPS = GRID * GRID
_SYNC = 3 * _CHIPS // 8  # the rest carry the codeword, about 5 chips a bit
_PERIOD_RANGE = (44.0, 230.0)  # lattice periods searched, pixels (scales ~0.35 to ~1.8)
_ANGLE_RANGE = 20.0  # degrees either way
_CANDIDATES = 6  # lattice hypotheses tried: unchanged geometry + 5 from the autocorrelation
#: Smallest side embed accepts. The tile is 128 px, but a mark on a 128-px image is rarely found
#: (27 photos, FPR 1e-3, no attack: 2 found at 128 px, 11 at 192, 25 at 256, all 27 at 384 and
#: 512; BENCHMARKS.md, watermarking, twelfth pass): better refused than a mark nobody finds.
MIN_SIDE = 2 * TILE
#: Bound on the chance that noise passes BCH + Chase-II + the 16-bit keyed tag (64 / 65536).
PAYLOAD_FALSE_ACCEPT = 2.0**6 / 2.0**16
STRENGTH = 2.35  # RMS luminance change, 8-bit units: PSNR about 40.7 dB before clipping


@dataclass(frozen=True)
class Detection:
    """What the detector found. ``payload`` is set only when the BCH code and keyed tag agree.

    ``present``: the p-value alone is at most ``fpr``. ``detected``: ``present``, and with
    ``require_payload`` also the payload released.
    """

    detected: bool
    p_value: float
    z: float
    payload: bytes | None
    nonce: int | None
    period: float | None
    angle: float | None
    bit_errors: int | None
    #: Hard decisions on the codeword bits before ECC (for bit-accuracy measurements).
    code_bits: np.ndarray | None = None
    present: bool | None = None


def _rng(key: bytes, nonce: int) -> np.random.Generator:
    digest = hmac.new(
        key, b"trustgain/watermark.pixel/v1/" + nonce.to_bytes(4, "big"), hashlib.sha256
    ).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


@dataclass(frozen=True)
class _Layout:
    signs: np.ndarray  # (_CHIPS,) +-1
    sync: np.ndarray  # indices of sync chips
    message: np.ndarray  # indices of message chips
    bit_of: np.ndarray  # codeword bit index carried by each message chip


@lru_cache(maxsize=16 * NONCES)
def _layout(key: bytes, nonce: int) -> _Layout:
    rng = _rng(key, nonce)
    signs = rng.choice(np.array([-1.0, 1.0]), size=_CHIPS)
    order = rng.permutation(_CHIPS)
    message = order[_SYNC:]
    bit_of = np.arange(message.size) % CODE_BITS
    return _Layout(signs, order[:_SYNC], message, rng.permutation(bit_of))


def _upsample(chips: np.ndarray) -> np.ndarray:
    """32x32 chips -> 128x128 periodic band-limited tile with unit RMS."""
    spectrum = np.fft.fftshift(np.fft.fft2(chips))
    pad = (TILE - GRID) // 2
    tile = np.fft.ifft2(np.fft.ifftshift(np.pad(spectrum, pad))).real
    return tile / tile.std()


def _chips(spectrum: np.ndarray, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Chip estimates (32x32) of a tile given its FFT, read at a cyclic offset ``shift``.

    The inverse of :func:`_upsample`'s projection: keep the 32x32 lowest frequencies,
    phase-shifted by the offset, and transform back.
    """
    shifted = np.fft.fftshift(spectrum)
    lo = (TILE - GRID) // 2
    band = np.fft.ifftshift(shifted[lo : lo + GRID, lo : lo + GRID])
    k = np.fft.fftfreq(GRID, d=1.0 / GRID)
    phase = np.exp(2j * np.pi * (k[:, None] * shift[0] + k[None, :] * shift[1]) / TILE)
    return np.fft.ifft2(band * phase).real


@lru_cache(maxsize=16)
def _sync_spectra(key: bytes) -> np.ndarray:
    """Conjugate real FFTs of every nonce's sync tile, stacked: (NONCES, TILE, TILE//2+1)."""
    tiles = []
    for nonce in range(NONCES):
        layout = _layout(key, nonce)
        chips = np.zeros(_CHIPS)
        chips[layout.sync] = layout.signs[layout.sync]
        tiles.append(_upsample(chips.reshape(GRID, GRID)))
    return np.conj(fft.rfft2(np.stack(tiles), workers=-1))


def check_key(key: bytes) -> bytes:
    """``key`` as bytes, or a one-line TypeError/ValueError: the mark's key is raw key bytes."""
    if not isinstance(key, bytes | bytearray):
        raise TypeError(
            f"the watermark key must be bytes, not {type(key).__name__} "
            "(use keyring.derive('watermark.pixel', 'pixel').material)"
        )
    if len(key) < 16:
        raise ValueError(f"the watermark key must be at least 16 bytes, got {len(key)}")
    return bytes(key)


def check_image(image: object) -> None:
    """A one-line TypeError unless ``image`` is a PIL image (arrays carry no mode to keep)."""
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"image must be a PIL.Image.Image, not {type(image).__name__} "
            "(use PIL.Image.fromarray(array) for a uint8 HxW or HxWx3 array)"
        )


def check_strength(strength: float, name: str = "strength") -> None:
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) \
            or not 0 < strength <= 64:
        raise ValueError(f"{name} must be in (0, 64] (8-bit units), got {strength!r}")


def check_fpr(fpr: float) -> None:
    if isinstance(fpr, bool) or not isinstance(fpr, numbers.Real) or not 0 < fpr < 1:
        raise ValueError(f"fpr must be a number in (0, 1), got {fpr!r}")


def pattern(key: bytes, nonce: int, payload: bytes) -> np.ndarray:
    """The 128x128 luminance tile for ``key``, ``nonce`` and ``payload`` (unit RMS)."""
    layout = _layout(key, nonce)
    bits = encode_bits(key, payload)
    chips = np.empty(_CHIPS)
    chips[layout.sync] = layout.signs[layout.sync]
    chips[layout.message] = layout.signs[layout.message] * (2.0 * bits[layout.bit_of] - 1.0)
    return _upsample(chips.reshape(GRID, GRID))


def embed(
    image: Image.Image,
    key: bytes,
    payload: bytes,
    *,
    strength: float = STRENGTH,
    nonce: int | None = None,
) -> tuple[Image.Image, int]:
    """Mark ``image`` with ``payload``; returns the marked image (same mode) and the nonce.

    Modes: see :mod:`trustgain.watermark.images` (RGB, L, with alpha, 16-bit grayscale).

    ``strength`` is the RMS luminance change in 8-bit units (2.35 gives about 40.7 dB PSNR).
    """
    check_image(image)
    key = check_key(key)
    if not isinstance(payload, bytes | bytearray) or len(payload) != PAYLOAD_BITS // 8:
        raise ValueError(f"payload must be {PAYLOAD_BITS // 8} bytes, got {payload!r}")
    payload = bytes(payload)
    check_strength(strength)
    if nonce is not None and (isinstance(nonce, bool) or not isinstance(nonce, numbers.Integral)
                              or not 0 <= nonce < NONCES):
        raise ValueError(f"nonce must be an integer in [0, {NONCES}) (the detector searches "
                         f"only those), got {nonce!r}")
    check_embeddable(image, MIN_SIDE)
    nonce = secrets.randbelow(NONCES) if nonce is None else int(nonce)
    tile = pattern(key, nonce, payload) * strength
    h, w = image.height, image.width
    delta = np.tile(tile, (math.ceil(h / TILE), math.ceil(w / TILE)))[:h, :w]
    return add_luminance(image, delta), nonce


def luminance(image: Image.Image) -> np.ndarray:
    """Float luminance (ITU-R 601) of any image Pillow decodes, on the 0..255 scale.

    Non-finite values (NaN or inf in a float image) are refused with an InputError."""
    check_image(image)
    if min(image.size) < 16:
        raise InputError(f"image is {image.width}x{image.height}: too small to hold a mark")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image).astype(np.float64)  # 16-bit in either byte order, unclipped
        if image.mode == "F" and not np.isfinite(array).all():
            raise InputError("float image has NaN or infinite pixels: nothing to detect in")
        return array * (255.0 / 65535.0) if image.mode != "F" else array * 255.0
    try:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    except (ValueError, OSError) as exc:
        raise InputError(f"{image.mode} image: cannot read its luminance ({exc})") from None
    return rgb @ np.array([0.299, 0.587, 0.114])


def _whiten(y: np.ndarray) -> np.ndarray:
    high = y - ndimage.gaussian_filter(y, 4.0, mode="reflect", truncate=3.0)
    energy = ndimage.uniform_filter(high * high, 17, mode="reflect")
    local = np.sqrt(np.maximum(energy, 0.0)) + 1.0  # box sums can dip below 0 by rounding
    white = high / local
    return white - white.mean()


def _lattice_candidates(white: np.ndarray) -> list[tuple[float, float]]:
    """(period in pixels, angle in degrees) of the likeliest tile lattices.

    The first is always the unchanged lattice. Autocorrelation peaks are scored as z-scores
    (sum of products over the square root of the overlap), and a candidate vector ``v`` by
    the mean score at ``v``, its 90-degree turn ``w``, ``v + w`` and ``v - w``: a lattice
    shows at all four, a repeating structure in the picture seldom does. Halves and thirds
    of each peak are tried too, so a harmonic of the period does not win over the period.
    """
    step = 2 if min(white.shape) >= 384 else 1  # the mark's band survives 2x decimation
    if step == 2:
        white = white[: white.shape[0] // 2 * 2, : white.shape[1] // 2 * 2]
        white = white.reshape(white.shape[0] // 2, 2, white.shape[1] // 2, 2).mean(axis=(1, 3))
    h, w = white.shape
    ph, pw = 2 * h, 2 * w  # zero-pad: linear, not circular, autocorrelation
    power = np.abs(fft.rfft2(white, s=(ph, pw), workers=-1)) ** 2
    # Spectral whitening: the tiled mark is a grid of sharp spectral lines, picture content is
    # broad; dividing by the locally averaged spectrum keeps the lines and flattens the rest.
    power /= ndimage.uniform_filter(power, 9, mode="wrap") + 1e-9
    acf = fft.irfft2(power, s=(ph, pw), workers=-1)
    lag_y = np.minimum(np.arange(ph), ph - np.arange(ph))
    lag_x = np.minimum(np.arange(pw), pw - np.arange(pw))
    overlap = np.outer(np.maximum(h - lag_y, 0), np.maximum(w - lag_x, 0)).astype(np.float64)
    score = acf / np.sqrt(np.maximum(overlap, 0.05 * h * w))
    lo, hi = _PERIOD_RANGE[0] / step, _PERIOD_RANGE[1] / step
    r = int(min(hi, 0.75 * min(h, w)))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    radius = np.hypot(dx, dy)
    angle = np.degrees(np.arctan2(dy, dx))
    window = (radius >= lo) & (radius <= r) & (np.abs(angle) <= _ANGLE_RANGE)
    values = np.where(window, score[dy % ph, dx % pw], -np.inf)
    local_max = ndimage.maximum_filter(values, size=9, mode="constant", cval=-np.inf)
    peaks = np.argwhere((values == local_max) & np.isfinite(values))
    peaks = peaks[np.argsort(values[peaks[:, 0], peaks[:, 1]])[::-1][:40]]
    limit = 0.85 * min(h, w)

    def peak3(y: int, x: int) -> float:
        return float(score[np.ix_((y + np.arange(-1, 2)) % ph, (x + np.arange(-1, 2)) % pw)].max())

    def lattice_score(vx: float, vy: float) -> float:
        points = [(vx, vy), (-vy, vx), (vx - vy, vy + vx), (vx + vy, vy - vx)]
        got = [peak3(round(y), round(x)) for x, y in points if abs(x) < limit and abs(y) < limit]
        return float(np.mean(got)) if len(got) >= 2 else -np.inf

    scored: dict[tuple[int, int], float] = {}
    for iy, ix in peaks:
        vy, vx = float(dy[iy, ix]), float(dx[iy, ix])
        for div in (1, 2, 3):
            cx, cy = vx / div, vy / div
            if math.hypot(cx, cy) >= lo:
                scored[(round(cx), round(cy))] = lattice_score(cx, cy)
    scored.pop((round(TILE / step), 0), None)
    best = sorted(scored.items(), key=lambda kv: kv[1], reverse=True)[: _CANDIDATES - 1]
    candidates = [(float(TILE), 0.0)]  # no geometric change: the commonest case
    for (x0, y0), _ in best:
        fy, fx = _refine(acf, y0, x0, ph, pw)
        candidates.append(
            (step * math.hypot(x0 + fx, y0 + fy), math.degrees(math.atan2(y0 + fy, x0 + fx)))
        )
    return candidates


def _refine(acf: np.ndarray, y: int, x: int, ph: int, pw: int) -> tuple[float, float]:
    """Sub-pixel peak offset by a parabola through the neighbours on each axis."""

    def parabola(a: float, b: float, c: float) -> float:
        denom = a - 2 * b + c
        return 0.0 if denom >= 0 else float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5))

    c = acf[y % ph, x % pw]
    fx = parabola(acf[y % ph, (x - 1) % pw], c, acf[y % ph, (x + 1) % pw])
    fy = parabola(acf[(y - 1) % ph, x % pw], c, acf[(y + 1) % ph, x % pw])
    return fy, fx


def _fold(white: np.ndarray, period: float, angle: float, grid: np.ndarray) -> np.ndarray:
    """Average the image onto one tile in the frame of the lattice (period, angle)."""
    yy, xx = grid
    scale = TILE / period
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u = (cos * xx + sin * yy) * scale
    v = (-sin * xx + cos * yy) * scale
    index = (np.rint(v).astype(np.int64) % TILE) * TILE + np.rint(u).astype(np.int64) % TILE
    return _fold_at(white, index, scale)


def _identity_index(height: int, width: int) -> np.ndarray:
    """:func:`_fold`'s tile index of every pixel for the unchanged lattice (period TILE, angle
    0), computed in integers: the same values, without the float grid and rounding."""
    return (np.arange(height) % TILE)[:, None] * TILE + (np.arange(width) % TILE)[None, :]


def _fold_at(white: np.ndarray, index: np.ndarray, scale: float) -> np.ndarray:
    """Average ``white`` onto one tile given each pixel's tile index (see :func:`_fold`)."""
    sums = np.bincount(index.ravel(), weights=white.ravel(), minlength=TILE * TILE)
    counts = np.bincount(index.ravel(), minlength=TILE * TILE).astype(np.float64)
    # Normalised convolution fills the tile pixels no image pixel landed on (upscaled images).
    sigma = 0.5 * max(1.0, scale)
    sums = ndimage.gaussian_filter(sums.reshape(TILE, TILE), sigma, mode="wrap")
    counts = ndimage.gaussian_filter(counts.reshape(TILE, TILE), sigma, mode="wrap")
    tile = sums / np.maximum(counts, 1e-6)
    return tile - tile.mean()


def searched() -> int:
    """How many (offset, nonce, lattice) hypotheses one detection tests: the union bound."""
    return TILE * TILE * NONCES * _CANDIDATES


def p_value(z: float) -> float:
    return min(1.0, searched() * math.exp(-0.5 * z * z)) if z > 0 else 1.0


def threshold(fpr: float) -> float:
    """The z above which ``p_value(z) <= fpr``."""
    return math.sqrt(2.0 * math.log(searched() / fpr))


@dataclass(frozen=True)
class _Fold:
    period: float
    angle: float
    spectrum: np.ndarray  # FFT of the folded tile
    real_spectrum: np.ndarray  # its real FFT


def _analyse(image: Image.Image) -> list[_Fold]:
    """The key-independent part of detection: whitening, lattice candidates, folds."""
    white = _whiten(luminance(image))
    grid = np.mgrid[0 : white.shape[0], 0 : white.shape[1]].astype(np.float64)
    folds = []
    for period, angle in _lattice_candidates(white):
        folds.append(_make_fold(_fold(white, period, angle, grid), period, angle))
    return folds


def _make_fold(folded: np.ndarray, period: float, angle: float) -> _Fold:
    return _Fold(period, angle, np.fft.fft2(folded), fft.rfft2(folded))


def _identity_fold(white: np.ndarray) -> _Fold:
    """The fold of the unchanged lattice, equal to :func:`_analyse`'s first."""
    return _make_fold(_fold_at(white, _identity_index(*white.shape), 1.0), float(TILE), 0.0)


def _score(key: bytes, folds: list[_Fold]) -> tuple[float, int, _Fold, np.ndarray] | None:
    """Best (z, nonce, fold, chips) of ``key`` over every fold, nonce and offset."""
    best = None
    for fold in folds:
        for nonce, shift in _hypotheses(key, fold):
            chips = _chips(fold.spectrum, shift).ravel()
            z = _sync_z(key, nonce, chips)
            if best is None or z > best[0]:
                best = (z, nonce, fold, chips)
    return best


def _hypotheses(key: bytes, fold: _Fold) -> list[tuple[int, tuple[int, int]]]:
    """The (nonce, offset) pairs :func:`_score` reads on ``fold``: each nonce's sync pattern is
    cross-correlated with the fold, and the two nonces with the highest peaks are kept, each at
    its peak's offset."""
    corr = fft.irfft2(fold.real_spectrum[None] * _sync_spectra(key), s=(TILE, TILE), workers=-1)
    flat = corr.reshape(NONCES, -1)
    at = flat.argmax(axis=1)
    peaks = [(flat[n, at[n]], n, divmod(int(at[n]), TILE)) for n in range(NONCES)]
    return [(nonce, shift) for _, nonce, shift in sorted(peaks, reverse=True)[:2]]


def _sync_z(key: bytes, nonce: int, chips: np.ndarray) -> float:
    """The statistic: the sync chips' correlation with their signs, over their norm."""
    layout = _layout(key, nonce)
    x = chips[layout.sync]
    return float(np.dot(layout.signs[layout.sync], x) / (np.linalg.norm(x) + 1e-12))


def max_z(image: Image.Image, keys: list[bytes]) -> list[float]:
    """Detection statistic of each key on one image (analysed once): for null checks."""
    folds = _analyse(image)
    return [best[0] if (best := _score(k, folds)) else 0.0 for k in keys]


def detect(
    image: Image.Image, key: bytes, *, fpr: float = 1e-3, require_payload: bool = False
) -> Detection:
    """Look for this key's mark; ``detected`` when the p-value is at most ``fpr`` (and, with
    ``require_payload``, the payload verifies: see the module docstring)."""
    key = check_key(key)
    check_fpr(fpr)
    best = _score(key, _analyse(image))
    if best is None:
        return Detection(False, 1.0, 0.0, None, None, None, None, None, present=False)
    z, nonce, fold, chips = best
    return _read(key, z, nonce, chips, (fold.period, fold.angle), fpr, require_payload)


def detect_aligned(
    image: Image.Image, key: bytes, nonce: int, *, fpr: float = 1e-3,
    require_payload: bool = False,
) -> Detection:
    """:func:`detect` read at one hypothesis: unchanged geometry, offset 0, ``nonce``.

    For an image whose geometry is known to be the one it was marked in (the embedder reading
    back its own output, e.g. :mod:`trustgain.watermark.pixel_check`): one fold instead of
    :func:`detect`'s lattice search over six, and no read at other offsets or nonces.

    The fold is :func:`detect`'s first (the unchanged lattice), bit for bit, and the offset and
    nonce search on it is run too (one correlation, a few ms), to confirm that this hypothesis
    is one :func:`detect` reads. Then :func:`detect`'s statistic is at least this one's, so its
    p-value (the same union bound over every hypothesis) is at most this one's; where
    :func:`detect` picks this hypothesis, as it does on an unchanged marked image, the two
    return the same ``z``, p-value and payload (``tests/watermark/test_pixel_aligned.py``).
    Where the search would not read it (weak marks only) the answer is :func:`detect`'s own.
    Not a detector for images of unknown origin: use :func:`detect`.
    """
    key = check_key(key)
    check_fpr(fpr)
    white = _whiten(luminance(image))
    fold = _identity_fold(white)
    if (nonce, (0, 0)) not in _hypotheses(key, fold):
        return detect(image, key, fpr=fpr, require_payload=require_payload)
    chips = _chips(fold.spectrum).ravel()
    z = _sync_z(key, nonce, chips)
    return _read(key, z, nonce, chips, (fold.period, fold.angle), fpr, require_payload)


def _read(
    key: bytes, z: float, nonce: int, chips: np.ndarray, lattice: tuple[float, float],
    fpr: float, require_payload: bool,
) -> Detection:
    """The decision and payload at one hypothesis: its statistic ``z``, nonce, chips and
    lattice (period, angle)."""
    p = p_value(z)
    layout = _layout(key, nonce)
    soft = np.zeros(CODE_BITS)
    np.add.at(soft, layout.bit_of, layout.signs[layout.message] * chips[layout.message])
    payload, errors = chase_decode(key, soft)
    hard = (soft > 0).astype(np.uint8)
    present = p <= fpr
    detected = present and (payload is not None or not require_payload)
    period, angle = lattice
    return Detection(
        detected, p, z, payload, nonce, period, angle, errors, hard, present=present
    )
