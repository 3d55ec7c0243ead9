"""``watermark.latent``: a keyed Gaussian-Shading mark in the initial latents of a diffusion model.

Embedding (Yang et al., "Gaussian Shading", CVPR 2024, with trustgain's keys): the payload bits
(by default the first 64 bits of the provenance record id, so a file whose metadata is gone
still leads back to its signed record) are replicated over the latent elements through a keyed
random bit map, XOR-encrypted with a ChaCha20 keystream (key: the stage's HKDF key; a per-image
96-bit nonce), and every element is drawn from the half of N(0, 1) its encrypted bit selects:
``z = ndtri((e + u) / 2)`` with ``u`` uniform on (0, 1). Encrypted bits are uniform and independent
of ``u``, so the latents are exactly i.i.d. N(0, 1): the mark costs no image quality.

Reading (:func:`read_latent_mark`, on latents recovered by DDIM inversion; see
:mod:`trustgain.watermark.latent_invert`): signs, XOR the keystream, then

- the payload is the vote of each bit's copies, weighted by ``|z|`` (or the weights below);
- with the expected payload known (from the provenance record) the statistic is the matches
  of decrypted signs with their expected bits, each weighted by the rank level of its ``|z|``
  (small ``|z|`` flip most often under attack) or, where the model ships a fitted
  :mod:`~trustgain.watermark.latent_reliability`, by the log-likelihood ratio of its sign
  given its element's measured reliability and ``|z|``; without the mark (clean image or
  wrong key) each decrypted sign is a fair coin independent of everything else, because the
  keystream is independent of the image, so the p-value is exact: the weighted sum of
  Binomial(c_l, 1/2), and with ``levels=1`` exactly ``binom.sf(matches - 1, n, 1/2)``;
- with the payload unknown (metadata stripped) the statistic is the (weighted) matches against
  the majority payload, ``sum_j max(A_j, W_j - A_j)``, whose exact null is a convolution of
  per-bit laws. :mod:`trustgain.watermark.latent_stats` states both precisely.

The nonce: detection needs it. It is in the record (sidecar) when there is one. For stripped
files the nonce of counter ``c`` is ``HMAC-SHA256(key, "trustgain/latent-nonce" || c)[:12]``,
``c`` drawn uniformly from ``[0, nonce_space)`` (distinct within a run); the detector tries every
counter and corrects the best p-value for the tries (Sidak, exact here: under the null the
tries are independent, since their keystreams are). Trade-off: a larger space puts fewer images
under one keystream (per-image keystreams are what defeats averaging many marked images, and
what keeps one leaked keystream from marking other images' records) but raises the threshold:
256 counters cost about 1.4 standard deviations at FPR 1e-6, and each counter one XOR and count
(no extra inversion). ``nonce_space=0`` draws a fresh random 96-bit nonce per image, detectable
only with its record. The random record id helps too: two images under one keystream share only
the bits where their payloads agree, so even a small space leaks little to an averaging attack.
Detection after a centre crop (zoom) can search un-zoom scales
(:func:`trustgain.watermark.latent_invert.detect_latent`).

Hand-written because no maintained package implements Gaussian Shading for diffusers on CPU:
MarkDiffusion's port hard-codes ``.cuda()`` and the authors' code is a research script.
Not protected against: anyone who holds the generating model can invert a marked image and
imprint its sign pattern onto other latents (a copy attack; the copy keeps the original nonce
and payload, so it forges a mark of an existing record, not a new one), or regenerate the image.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy.special import ndtri

from trustgain import settings
from trustgain.keys import DerivedKey
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult
from trustgain.watermark.latent_reliability import Reliability
from trustgain.watermark.latent_stats import fold_sf, matches_sf, rank_weights, sidak

STAGE = "watermark.latent"
KEY_PURPOSE = "mark"  # covered by the stage contract test's key-material check
NONCE_BYTES = 12
LEVELS = 4  # |z|-rank weight levels of the detection statistics (1: unweighted)
SAMPLER = (
    "ndtri((payload_bit ^ chacha20(key, nonce)_bit + u53) / 2); "
    "u53 from chacha20(key, HMAC(key, magnitude || nonce || record_id || index)[:12])"
)


def latent_key(keyring: object) -> DerivedKey:
    """The detection key: what ``RunContext.key`` gives this stage (``KeyRing.derive``)."""
    return keyring.derive(STAGE, KEY_PURPOSE)  # type: ignore[attr-defined]


def _chacha20(material: bytes, nonce: bytes, nbytes: int) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    # cryptography's ChaCha20 takes counter (4 bytes, little-endian) || 96-bit nonce
    cipher = Cipher(algorithms.ChaCha20(material[:32], b"\0\0\0\0" + nonce), mode=None)
    return cipher.encryptor().update(bytes(nbytes))


def counter_nonce(key: DerivedKey, counter: int) -> bytes:
    """The nonce of counter ``counter``: ``HMAC-SHA256(key, "trustgain/latent-nonce" || c)``."""
    msg = b"trustgain/latent-nonce\0" + counter.to_bytes(8, "big")
    return hmac.new(key.material, msg, hashlib.sha256).digest()[:NONCE_BYTES]


@lru_cache(maxsize=32)
def _bit_map_cached(material: bytes, n: int, k: int) -> np.ndarray:
    sub = hmac.new(material, b"trustgain/latent-map", hashlib.sha256).digest()
    values = np.frombuffer(_chacha20(sub, bytes(NONCE_BYTES), 8 * n), dtype="<u8")
    order = np.argsort(values, kind="stable")
    bit_of = np.empty(n, dtype=np.int64)
    bit_of[order] = np.arange(n) % k
    bit_of.setflags(write=False)
    return bit_of


def _check_key(key: object) -> None:
    if not isinstance(key, DerivedKey):
        raise TypeError(f"the latent mark key must be a DerivedKey, not {type(key).__name__} "
                        "(use trustgain.watermark.latent.latent_key(keyring))")


def bit_map(key: DerivedKey, n: int, k: int) -> np.ndarray:
    """Which payload bit each of the ``n`` latent elements of an image carries (keyed, balanced)."""
    _check_key(key)
    if not 1 <= k <= n:
        raise ValueError(f"cannot spread {k} payload bits over {n} latent elements")
    return _bit_map_cached(key.material, n, k)


def keystream(key: DerivedKey, nonce: bytes, n: int) -> np.ndarray:
    """The ``n`` keystream bits of one image (what encrypts its signs)."""
    return _stream_bits(key.material, nonce, n)


def magnitude_uniforms(key: DerivedKey, nonce: bytes, salt: bytes, n: int) -> np.ndarray:
    """``n`` uniforms on (0, 1) (53-bit) that set the magnitudes ``|z|`` of one image.

    Their stream depends on the salt (the record id) as well as the nonce, so two images that
    share a nonce counter still get independent magnitudes; detection never needs them.
    """
    msg = b"trustgain/latent-magnitude\0" + nonce + salt
    sub_nonce = hmac.new(key.material, msg, hashlib.sha256).digest()[:NONCE_BYTES]
    words = np.frombuffer(_chacha20(key.material, sub_nonce, 8 * n), dtype="<u8")
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _stream_bits(material: bytes, nonce: bytes, n: int) -> np.ndarray:
    raw = _chacha20(material, nonce, (n + 7) // 8)
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:n]


@lru_cache(maxsize=8)
def _counter_streams(material: bytes, nonce_space: int, n: int) -> np.ndarray:
    key = DerivedKey(material, purpose="cache")
    out = np.stack([_stream_bits(material, counter_nonce(key, c), n) for c in range(nonce_space)])
    out.setflags(write=False)
    return out


def payload_from_record_id(record_id: str, bits: int) -> np.ndarray:
    """The first ``bits`` bits of a hex record id (MSB first)."""
    nbits = 4 * len(record_id)
    if not 1 <= bits <= nbits:
        raise ValueError(f"payload of {bits} bits does not fit a {nbits}-bit record id")
    value = int(record_id, 16) >> (nbits - bits)
    return np.array([(value >> (bits - 1 - i)) & 1 for i in range(bits)], dtype=np.uint8)


def bits_to_hex(bits: np.ndarray) -> str:
    """Payload bits as hex (MSB first, zero-padded on the left to whole nibbles)."""
    value = int("".join(str(int(b)) for b in bits) or "0", 2)
    return f"{value:0{(len(bits) + 3) // 4}x}"


def hex_to_bits(text: str, bits: int) -> np.ndarray:
    """Inverse of :func:`bits_to_hex` for a ``bits``-bit payload (a longer value is refused,
    never cut: :func:`payload_from_record_id` keeps a record id's *first* bits)."""
    try:
        value = int(text, 16)
    except (TypeError, ValueError):
        raise ValueError(f"payload {text!r} is not a hex string") from None
    if value < 0 or value >> bits:
        raise ValueError(f"payload {text!r} does not fit {bits} bits (for a record id, pass "
                         f"its first {(bits + 3) // 4} hex digits)")
    return np.array([(value >> (bits - 1 - i)) & 1 for i in range(bits)], dtype=np.uint8)


def marked_latents(
    key: DerivedKey,
    nonces: list[bytes],
    payload: np.ndarray,
    shape: tuple[int, ...],
    *,
    salt: bytes,
) -> torch.Tensor:
    """Initial latents of shape ``shape`` (batch first), image ``i`` marked under ``nonces[i]``;
    ``salt`` (the record id) and the image index select the magnitudes."""
    batch, n = shape[0], int(np.prod(shape[1:]))
    if len(nonces) != batch:
        raise ValueError(f"{len(nonces)} nonces for a batch of {batch}")
    _check_key(key)
    if not isinstance(salt, bytes):
        raise TypeError(f"salt must be bytes, not {type(salt).__name__}")
    if any(not isinstance(nc, bytes) or len(nc) != NONCE_BYTES for nc in nonces):
        raise ValueError(f"every nonce must be {NONCE_BYTES} bytes")
    payload = np.asarray(payload)
    integral = payload.dtype == bool or np.issubdtype(payload.dtype, np.integer)
    if payload.ndim != 1 or not integral or not np.isin(payload, (0, 1)).all():
        raise ValueError("payload must be a 1-D array of 0/1 bits "
                         "(see payload_from_record_id)")
    payload = payload.astype(np.uint8)
    bit_of = bit_map(key, n, len(payload))
    out = np.empty((batch, n), dtype=np.float64)
    for i, nonce in enumerate(nonces):
        u = magnitude_uniforms(key, nonce, salt + i.to_bytes(4, "big"), n)
        encrypted = payload[bit_of] ^ keystream(key, nonce, n)
        out[i] = ndtri((encrypted + u) / 2.0)
    return torch.from_numpy(out.reshape(shape)).to(torch.float32)


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentReading:
    """The outcome for one image: decision, exact p-value, decoded payload.

    ``statistic`` is ``"matches"`` (expected payload known) or ``"fold"`` (payload unknown);
    ``matches`` is its (weighted) value out of the total weight ``n`` (with ``levels=1``: plain
    counts of the ``n`` elements read; ``levels=0``: per-element reliability weights).
    ``nonce_index`` is the winning candidate; ``p_value`` is already corrected for the
    ``tries`` nonce candidates.
    """

    detected: bool
    p_value: float
    payload: str
    matches: int
    n: int
    statistic: str
    nonce_index: int
    tries: int
    levels: int = 1
    bit_accuracy: float | None = None  # decoded payload vs the expected one, when known
    scale: float = 1.0  # the un-zoom that won, when the detector searched crops
    prompted: bool = False  # it won inverted under a prompt (given or guessed), not the empty one


def read_latent_mark(
    latents: torch.Tensor,
    key: DerivedKey,
    *,
    payload_bits: int = 64,
    nonces: Sequence[bytes | Sequence[bytes]] | None = None,
    nonce_space: int = 256,
    expected_payload: str | None = None,
    fpr: float = 1e-6,
    levels: int = LEVELS,
    mask: np.ndarray | None = None,
    reliability: Reliability | None = None,
) -> list[LatentReading]:
    """Read the mark from (inverted) latents, one :class:`LatentReading` per batch entry.

    ``nonces``: the nonce of each image (from its record), or ``None`` to try the
    ``nonce_space`` counter nonces. An image's entry may also be a list of nonces, each tried
    (a record of several outputs, the image being one of them, which one unknown): the best is
    kept, its p-value Sidak-corrected for their number, as the counter nonces are (keystreams
    of distinct nonces are independent, so are the reads under the null); ``nonce_index`` then
    says which one matched. ``expected_payload`` (hex, from the record) selects the
    matches statistic, otherwise the fold statistic; ``levels`` is the number of |z|-rank
    weight levels (1: the unweighted binomial and fold tests); see
    :mod:`trustgain.watermark.latent_stats`. ``mask`` (boolean, one per latent element of an
    image) restricts statistics and vote to the elements known to be aligned (e.g. after undoing
    a crop); it must not depend on the signs, so the null stays exact. ``reliability`` (see
    :mod:`trustgain.watermark.latent_reliability`) replaces the |z|-rank levels by per-element
    log-likelihood-ratio weights fitted for the model and detector, a stronger test whose null
    is exact for the same reason.
    """
    _check_key(key)
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
    if isinstance(latents, np.ndarray):
        latents = torch.from_numpy(latents)
    if not isinstance(latents, torch.Tensor) or latents.ndim < 2:
        raise ValueError("latents must be a tensor of shape (batch, ...)")
    z = latents.detach().to("cpu", torch.float64).reshape(latents.shape[0], -1).numpy()
    if not np.isfinite(z).all():
        raise ValueError("latents hold NaN or infinite values (a failed inversion?): "
                         "no mark can be read from them")
    batch, n = z.shape
    if nonces is not None and len(nonces) != batch:
        raise ValueError(f"{len(nonces)} nonces for a batch of {batch}")
    if nonces is None and nonce_space < 1:
        raise ValueError("without recorded nonces, nonce_space must be at least 1")
    own = None if nonces is None else [[x] if isinstance(x, (bytes, bytearray)) else list(x)
                              for x in nonces]
    if own is not None and not all(own):
        raise ValueError("an image's list of recorded nonces is empty")
    valid = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool).ravel()
    if valid.shape != (n,):
        raise ValueError(f"mask has {valid.size} entries for {n} latent elements")
    signs = (z > 0).astype(np.uint8)
    bit_of = bit_map(key, n, payload_bits)
    by_bit = np.argsort(bit_of, kind="stable")  # elements grouped by payload bit
    starts = np.searchsorted(bit_of[by_bit], np.arange(payload_bits))
    expected = None if expected_payload is None else hex_to_bits(expected_payload, payload_bits)
    streams = None if nonces is not None else _counter_streams(key.material, nonce_space, n)
    out = []
    for i in range(batch):
        w = (rank_weights(np.abs(z[i]), valid, levels) if reliability is None
             else reliability.weights(z[i], valid))
        ks = (streams if own is None
              else np.stack([_stream_bits(key.material, x, n) for x in own[i]]))
        decrypted = signs[i][None] ^ ks  # (tries, n)
        if expected is not None:
            scores = ((decrypted == expected[bit_of][None]) * w[None]).sum(axis=1)
            sf = matches_sf(w)
        else:
            ones = np.add.reduceat((decrypted * w[None])[:, by_bit], starts, axis=1)
            totals = np.add.reduceat(w[by_bit], starts)  # (payload_bits,)
            scores = np.maximum(ones, totals[None] - ones).sum(axis=1)
            sf = fold_sf(w, bit_of, payload_bits)
        pvals = sf[np.minimum(scores, len(sf) - 1)]
        best = int(np.argmin(pvals))
        p = sidak(float(pvals[best]), len(pvals))
        strength = np.abs(z[i]) * valid if reliability is None else w
        votes = np.bincount(bit_of, weights=strength * (2.0 * decrypted[best] - 1),
                            minlength=payload_bits)
        decoded = (votes > 0).astype(np.uint8)
        out.append(LatentReading(
            detected=p <= fpr, p_value=p, payload=bits_to_hex(decoded), matches=int(scores[best]),
            n=int(w.sum()), statistic="fold" if expected is None else "matches",
            nonce_index=best, tries=len(pvals), levels=levels if reliability is None else 0,
            bit_accuracy=None if expected is None else float((decoded == expected).mean()),
        ))
    return out


# -- the stage -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentMark:
    """Mark the initial latents with the record id prefix (see the module docstring).

    ``payload_bits``: leading bits of the record id carried (1 to 128).
    ``nonce_space``: number of keyed counter nonces (recoverable without the record), or 0 for a
    fresh random 96-bit nonce per image (detection then needs the record).
    """

    name: ClassVar[str] = STAGE
    phase: ClassVar[Phase] = Phase.GENERATE
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"latents"})

    payload_bits: int = 64
    nonce_space: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload_bits",
                           settings.integer("payload_bits", self.payload_bits, 1, 128))
        object.__setattr__(self, "nonce_space",
                           settings.integer("nonce_space", self.nonce_space, 0, 2**32))

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        if ctx.generator is None:
            raise ValueError("needs a generator to know the latent shape")
        if item.latents is not None:
            raise ValueError("the initial latents are already set by an earlier stage")
        key = ctx.key(KEY_PURPOSE)
        shape = tuple(ctx.generator.latent_shape(item.request))
        batch, n = shape[0], int(np.prod(shape[1:]))
        if self.payload_bits > n:
            raise ValueError(f"{self.payload_bits} payload bits do not fit {n} latent elements")
        counters: list[int | None]
        if self.nonce_space:
            rand = random.SystemRandom()
            if batch <= self.nonce_space:  # distinct keystreams within a run where possible
                counters = list(rand.sample(range(self.nonce_space), batch))
            else:
                counters = [rand.randrange(self.nonce_space) for _ in range(batch)]
            nonces = [counter_nonce(key, c) for c in counters]
        else:
            counters = [None] * batch
            nonces = [os.urandom(NONCE_BYTES) for _ in range(batch)]
        payload = payload_from_record_id(ctx.run_id, self.payload_bits)
        latents = marked_latents(key, nonces, payload, shape, salt=ctx.run_id.encode())
        params = {
            "key_id": key.key_id,
            "nonces": [x.hex() for x in nonces],
            "nonce_counters": counters,
            "nonce_space": self.nonce_space,
            "payload": bits_to_hex(payload),
            "payload_bits": self.payload_bits,
            "payload_source": "record_id prefix",
            "replication": round(n / self.payload_bits, 4),
            "shape": list(shape),
            "sampler": SAMPLER,
            # detection inverts over the same number of steps (None: the pipeline's default)
            "num_inference_steps": item.request.num_inference_steps,
            # a verifier who knows the prompt inverts under it with the same guidance
            "guidance_scale": item.request.guidance_scale,
        }
        return StageResult(item.replace(latents=latents), params)
