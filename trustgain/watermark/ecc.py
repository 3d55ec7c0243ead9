"""Error correction for the pixel mark's payload: BCH (``bchlib``) with Chase-II soft decoding.

The codeword is the 32-bit payload, a 16-bit tag (HMAC of the payload under the mark's key,
so only the key holder can produce or confirm a payload), and BCH parity: 125 bits, up to 12
errors corrected by the hard decoder, more with Chase-II on the soft values.
"""

from __future__ import annotations

import hashlib
import hmac
import math

import bchlib
import numpy as np

PAYLOAD_BITS = 32
_TAG_BITS = 16
_BCH = bchlib.BCH(12, m=7)  # n = 127, 77 parity bits, corrects 12 bit errors
_DATA_BITS = PAYLOAD_BITS + _TAG_BITS
CODE_BITS = _DATA_BITS + _BCH.ecc_bits  # 125
_CHASE_FLIPS = 6  # Chase-II: 64 trial decodings


def _tag(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, b"trustgain/watermark.pixel/tag\0" + payload, hashlib.sha256).digest()[:2]


def encode_bits(key: bytes, payload: bytes) -> np.ndarray:
    """Payload (4 bytes) -> 125 codeword bits: payload, keyed tag, BCH parity."""
    data = bytearray(payload + _tag(key, payload))
    ecc = _BCH.encode(data)
    bits = np.unpackbits(np.frombuffer(bytes(data) + bytes(ecc), dtype=np.uint8))
    return bits[:CODE_BITS].astype(np.int8)


def decode_bits(key: bytes, bits: np.ndarray) -> tuple[bytes | None, int | None]:
    """125 hard bits -> (payload, corrected errors), or (None, None) if BCH or tag fail."""
    padded = np.zeros(8 * (math.ceil(_DATA_BITS / 8) + _BCH.ecc_bytes), dtype=np.uint8)
    padded[:CODE_BITS] = bits
    raw = np.packbits(padded).tobytes()
    data, ecc = bytearray(raw[: _DATA_BITS // 8]), bytearray(raw[_DATA_BITS // 8 :])
    errors = _BCH.decode(data, ecc)
    if errors < 0:
        return None, None
    _BCH.correct(data, ecc)
    payload, tag = bytes(data[: PAYLOAD_BITS // 8]), bytes(data[PAYLOAD_BITS // 8 :])
    if not hmac.compare_digest(tag, _tag(key, payload)):
        return None, None
    return payload, errors


def chase_decode(
    key: bytes, soft: np.ndarray, *, flips: int = _CHASE_FLIPS
) -> tuple[bytes | None, int | None]:
    """Chase-II soft decoding around the hard-decision BCH decoder.

    Tries every pattern of flips among the ``flips`` least reliable bits, decodes each with
    BCH, keeps those whose keyed tag verifies, and returns the one whose codeword agrees best
    with the soft values. The 16-bit tag bounds a wrong payload's chance by 2**flips / 2**16.
    """
    hard = (soft > 0).astype(np.uint8)
    weakest = np.argsort(np.abs(soft))[:flips]
    best: tuple[float, bytes, int] | None = None
    for mask in range(1 << flips):
        trial = hard.copy()
        for j in range(flips):
            if mask >> j & 1:
                trial[weakest[j]] ^= 1
        payload, _ = decode_bits(key, trial)
        if payload is None:
            continue
        score = float(np.dot(2.0 * encode_bits(key, payload) - 1.0, soft))
        if best is None or score > best[0]:
            best = (score, payload, int(np.sum(encode_bits(key, payload) != hard)))
    return (best[1], best[2]) if best else (None, None)
