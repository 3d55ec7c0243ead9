"""The provenance record: canonical JSON, signed with Ed25519.

A :class:`SignedRecord` is the record (a JSON object) plus the signature over its RFC 8785
bytes. The signer is named by key id inside the record, so the id is covered by the
signature. Prompts are not stored, only a *keyed* digest of the request
(``request_hmac_sha256``: HMAC-SHA256 under a key derived from the signer's keyring). A plain
hash of a request would let anyone holding the record confirm a guessed prompt, including a
redacted e-mail address; the keyed digest lets only the keyring's owner check a request
(:func:`request_matches`). Records written before it carry ``request_sha256`` and still verify.
The seed is stored sealed (``seed_sealed``: AES-256-GCM under another keyring-derived key,
bound to the record id), so the keyring's owner can replay an output from its record
(:func:`record_seed`) while others cannot: a public seed would let anyone regenerate an output
for each guessed prompt and compare. The sealed seed is zero-padded to a fixed width, so the
field's length does not tell a short seed; each seal draws a fresh random 96-bit nonce.

Parsing is strict (:meth:`SignedRecord.from_envelope`): duplicated keys, NaN/Infinity,
fields outside the envelope's three, a signature that is missing or not 64 bytes, a signer
id that is not an Ed25519 key id are all ``malformed_record``, never a guess.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from trustgain.digest import StrictJSONError, canonical_json, loads_strict, short_repr
from trustgain.errors import ConfigError, Reason, VerificationError
from trustgain.keys import KeyRing
from trustgain.types import StageRecord

FORMAT = "trustgain.provenance"
FORMAT_VERSION = 1
REQUIRED = (
    "format",
    "version",
    "record_id",
    "created",
    "trustgain_version",
    "generator",
    "stages",
    "outputs",
    "signer",
)
ENVELOPE_FIELDS = frozenset({"record", "signature", "output_index"})
#: A record is a few kB; a JPEG holds at most 255 segments of 64 kB. Anything larger is refused
#: before it is parsed.
MAX_RECORD_BYTES = 32 * 2**20
_SIGNATURE_BYTES = 64  # Ed25519
_KEY_ID = re.compile(r"ed25519:[0-9a-f]{32}")
_SEED_DIGITS = 20  # every seed up to 2**64 seals to the same length
#: Fields whose type the readers of a verified record (the CLI among them) rely on.
_TYPES: dict[str, type | tuple[type, ...]] = {
    "record_id": str,
    "created": str,
    "trustgain_version": str,
    "generator": dict,
    "stages": list,
    "request_hmac_sha256": str,
    "request_sha256": str,
    "seed_sealed": (str, type(None)),
}


def build_record(
    *,
    record_id: str,
    created: datetime,
    generator: Mapping[str, Any],
    request_hmac_sha256: str,
    seed_sealed: str | None = None,
    stages: Sequence[StageRecord],
    outputs: Sequence[Mapping[str, Any]],
    signer_key_id: str,
    generation_seconds: float | None = None,
) -> dict[str, Any]:
    from trustgain import __version__

    if created.tzinfo is None:
        raise ValueError("created must be timezone-aware")
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "record_id": record_id,
        "created": created.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "trustgain_version": __version__,
        "generator": dict(generator),
        "request_hmac_sha256": request_hmac_sha256,
        "seed_sealed": seed_sealed,
        "stages": [s.to_dict() for s in stages],
        "generation_seconds": None if generation_seconds is None else round(generation_seconds, 6),
        "outputs": [dict(o) for o in outputs],
        "signer": {"algorithm": "Ed25519", "key_id": signer_key_id},
    }


def request_digest(request: Mapping[str, Any], keyring: KeyRing) -> str:
    """HMAC-SHA256 of the request's canonical JSON under the keyring's request key."""
    import hashlib
    import hmac

    key = keyring.derive("provenance", "request").material
    return hmac.new(key, canonical_json(dict(request)), hashlib.sha256).hexdigest()


def seal_seed(seed: int, record_id: str, keyring: KeyRing) -> str:
    """The seed encrypted for the keyring's owner (base64 of nonce + AES-256-GCM ciphertext)."""
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = keyring.derive("provenance", "seed").material
    nonce = os.urandom(12)
    plain = f"{int(seed):0{_SEED_DIGITS}d}".encode()  # record_seed's int() reads it either way
    sealed = AESGCM(key).encrypt(nonce, plain, record_id.encode())
    return base64.b64encode(nonce + sealed).decode("ascii")


def record_seed(record: Mapping[str, Any], keyring: KeyRing) -> int | None:
    """The seed of ``record``, for the keyring that signed it; None for anyone else (or for
    records written before seeds were kept)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    sealed, record_id = record.get("seed_sealed"), record.get("record_id")
    if not isinstance(sealed, str) or not isinstance(record_id, str):
        return None
    try:
        raw = base64.b64decode(sealed, validate=True)
        key = keyring.derive("provenance", "seed").material
        return int(AESGCM(key).decrypt(raw[:12], raw[12:], record_id.encode()))
    except (binascii.Error, InvalidTag, ValueError):
        return None


def request_matches(record: Mapping[str, Any], request: Mapping[str, Any],
                    keyring: KeyRing) -> bool:
    """Whether ``request`` (a ``GenerationRequest.to_dict()``) is the one ``record`` was made
    for. Only the keyring that signed the record can tell; constant-time comparison."""
    import hmac

    stored = record.get("request_hmac_sha256")
    if not isinstance(stored, str) or not stored.isascii():  # compare_digest raises on those
        return False
    return hmac.compare_digest(stored, request_digest(request, keyring))


@dataclass(frozen=True)
class SignedRecord:
    record: Mapping[str, Any]
    signature: bytes

    @classmethod
    def sign(cls, record: Mapping[str, Any], keyring: KeyRing) -> SignedRecord:
        if record.get("signer", {}).get("key_id") != keyring.key_id:
            raise ValueError("record names another signer than this keyring")
        return cls(record=record, signature=keyring.sign(canonical_json(dict(record))))

    @property
    def record_id(self) -> str:
        return str(self.record["record_id"])

    @property
    def key_id(self) -> str:
        return str(self.record["signer"]["key_id"])

    def envelope(self, output_index: int | None = None) -> dict[str, Any]:
        env: dict[str, Any] = {
            "record": dict(self.record),
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }
        if output_index is not None:
            env["output_index"] = output_index
        return env

    def to_json(self, output_index: int | None = None, *, indent: int | None = None) -> str:
        return json.dumps(self.envelope(output_index), indent=indent, ensure_ascii=False)

    @classmethod
    def from_envelope(cls, text: str | bytes) -> tuple[SignedRecord, int | None]:
        """Parse an envelope; anything off is ``malformed_record``."""
        if len(text) > MAX_RECORD_BYTES:
            raise _malformed(f"record is too large ({len(text)} bytes; at most "
                             f"{MAX_RECORD_BYTES})")
        try:
            env = loads_strict(text)
        except StrictJSONError as exc:  # two parsers could read two records from it
            raise _malformed(f"record is not strict JSON ({exc})") from None
        except ValueError as exc:  # also bad UTF-8, and integers past Python's digit limit
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(":")[0]
            raise _malformed(f"record is not JSON ({why})") from None
        except RecursionError:
            raise _malformed("record is nested too deeply to be one trustgain wrote") from None
        if not isinstance(env, dict) or not isinstance(env.get("record"), dict):
            raise _malformed("envelope has no record object")
        unknown = sorted(set(env) - ENVELOPE_FIELDS)
        if unknown:  # unsigned, so nothing may ride along outside the record
            raise _malformed(f"envelope has unknown field {short_repr(unknown[0])}")
        record = env["record"]
        missing = [k for k in REQUIRED if k not in record]
        if not {"request_hmac_sha256", "request_sha256"} & set(record):
            missing.append("request_hmac_sha256")
        if missing:
            raise _malformed(f"record lacks {', '.join(missing)}")
        if (record["format"] != FORMAT or type(record["version"]) is not int
                or record["version"] != FORMAT_VERSION):
            raise _malformed(f"record format {short_repr(record['format'])} "
                             f"v{short_repr(record['version'])} unknown")
        signer = record["signer"]
        if (
            not isinstance(signer, dict)
            or signer.get("algorithm") != "Ed25519"
            or not isinstance(signer.get("key_id"), str)
        ):
            raise _malformed("record has no Ed25519 signer")
        if not _KEY_ID.fullmatch(signer["key_id"]):  # quoted in messages later: no newlines
            raise _malformed("signer key id is not an Ed25519 key id")
        for field, kind in _TYPES.items():
            if field in record and not isinstance(record[field], kind):
                raise _malformed(f"record field {field!r} has the wrong type")
        if not isinstance(record["outputs"], list) or not all(
            isinstance(o, dict) for o in record["outputs"]
        ):
            raise _malformed("record outputs are not a list of objects")
        try:  # what the signature covers must exist: NaN, 1e400 or 2**70 have no RFC 8785 form
            canonical_json(record)
        except (ConfigError, RecursionError):
            raise _malformed("record holds a value with no canonical JSON form") from None
        if "signature" not in env:
            raise _malformed("record has no signature")
        try:
            signature = base64.b64decode(env["signature"], validate=True)
        except (TypeError, ValueError, binascii.Error):
            raise _malformed("signature is not base64") from None
        if len(signature) != _SIGNATURE_BYTES:
            raise _malformed(f"signature is {len(signature)} bytes, not {_SIGNATURE_BYTES}: "
                             "truncated or not Ed25519")
        index = env.get("output_index")
        if index is not None and (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < len(record["outputs"])
        ):
            raise _malformed("output_index does not name an output of the record")
        return cls(record=record, signature=signature), index


def _malformed(message: str) -> VerificationError:
    return VerificationError(Reason.MALFORMED_RECORD, message)
