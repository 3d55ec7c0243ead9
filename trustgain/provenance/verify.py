"""Verification: signature by a trusted key, then the file's content against the record.

Fails closed: a record is valid only when it parses, names a trusted key, carries that key's
signature over its canonical bytes, and one of its outputs matches the file, either byte for
byte outside the embedded record, or pixel for pixel after a lossless re-encode. Anything
else raises :class:`VerificationError` with one :class:`Reason`. A file that is not an image
(generated text) has no place for a record: it verifies only through its sidecar, byte for
byte.

Only the caller's trusted keys count: a record names its signer by key id, which picks one of
them; a public key carried in a record is never used. When a file carries a record and has a
sidecar too, the two must be the same signed record. Files over :data:`MAX_FILE_BYTES` and
records over :data:`MAX_RECORD_BYTES` are refused before they are read.

Not protected against: someone who holds a trusted signing key; a record stripped from a
file (that file then has no provenance, which is reported as ``missing_record``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from trustgain.digest import canonical_json, pixels_sha256, sha256_hex
from trustgain.errors import InputError, Reason, VerificationError
from trustgain.fileio import trustgain_home
from trustgain.keys import KeyFileError, PublicKey, public_key_path
from trustgain.provenance import embed
from trustgain.provenance.record import MAX_RECORD_BYTES, SignedRecord

SIDECAR_SUFFIX = ".trustgain.json"
MAX_FILE_BYTES = 2**30  # an image trustgain signed is far smaller; never read gigabytes


@dataclass(frozen=True)
class Verified:
    """A record that verified, and how the file matched it."""

    record: Mapping[str, Any]
    key_id: str
    output_index: int
    binding: str  # "file": exact bytes outside the record; "pixels": lossless re-encode
    source: str  # "embedded" or "sidecar"
    #: the file also holds C2PA Content Credentials (checked by ``trustgain c2pa verify``):
    #: their bytes are why a "pixels" binding is not "file"
    c2pa: bool = False


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def default_trusted_keys() -> list[PublicKey]:
    """The local keyring's public key and every PEM in ``$TRUSTGAIN_HOME/trusted/``."""
    home = trustgain_home()
    candidates = [public_key_path(home / "keyring.json"), *sorted((home / "trusted").glob("*.pem"))]
    keys = []
    for path in candidates:
        if path.is_file():
            try:
                keys.append(PublicKey.load(path))
            except KeyFileError:
                continue  # an unreadable trust entry trusts nothing; verification stays closed
    return keys


def verify_signature(signed: SignedRecord, trusted: Iterable[PublicKey]) -> PublicKey:
    by_id = {k.key_id: k for k in trusted}
    key = by_id.get(signed.key_id)
    if key is None:
        raise VerificationError(
            Reason.UNKNOWN_KEY, f"record is signed by {signed.key_id}, which is not trusted"
        )
    if not key.verify(signed.signature, canonical_json(dict(signed.record))):
        raise VerificationError(
            Reason.BAD_SIGNATURE,
            f"signature does not match the record (checked with trusted key {key.key_id})",
        )
    return key


def verify_bytes(
    data: bytes, *, trusted: Iterable[PublicKey], sidecar_text: str | None = None
) -> Verified:
    """Verify an image's bytes against its embedded record, or the sidecar's when none; any
    other file (text) against the sidecar's record only, byte for byte."""
    try:
        embed.media_type(data)
    except InputError:
        if sidecar_text is None:
            raise
        return _verify_plain(data, sidecar_text, trusted)
    text, source = embed.extract(data), "embedded"
    if text is None:
        text, source = sidecar_text, "sidecar"
    if text is None:
        raise VerificationError(
            Reason.MISSING_RECORD, "no provenance record in the file or beside it"
        )
    signed, index = SignedRecord.from_envelope(text)
    if source == "embedded" and sidecar_text is not None:
        try:
            beside = SignedRecord.from_envelope(sidecar_text)
        except VerificationError as exc:
            raise VerificationError(
                Reason.MALFORMED_RECORD, f"the sidecar is unreadable: {exc}"
            ) from None
        if _form(*beside) != _form(signed, index):  # which one would a reader believe?
            raise VerificationError(
                Reason.MALFORMED_RECORD, "the embedded record and the sidecar disagree"
            )
    key = verify_signature(signed, trusted)
    outputs = signed.record["outputs"]
    candidates = [index] if index is not None else list(range(len(outputs)))
    file_digest = sha256_hex(embed.strip(data))
    for i in candidates:
        if outputs[i].get("file_sha256") == file_digest:
            return Verified(signed.record, key.key_id, i, "file", source)
    pixels = _pixels_digest(data)
    for i in candidates:
        if pixels is not None and outputs[i].get("pixels_sha256") == pixels:
            return Verified(signed.record, key.key_id, i, "pixels", source,
                            embed.carries_c2pa(data))
    raise VerificationError(
        Reason.CONTENT_HASH_MISMATCH, "the file's content does not match the signed record"
    )


def verify_file(
    path: str | os.PathLike[str],
    *,
    trusted: Iterable[PublicKey] | None = None,
    sidecar: str | os.PathLike[str] | None = None,
) -> Verified:
    """Verify ``path``; ``trusted`` defaults to :func:`default_trusted_keys`."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise InputError(f"{path} is not a regular file")
    side = Path(sidecar) if sidecar is not None else sidecar_path(path)
    try:
        with path.open("rb") as fh:
            try:
                embed.media_type(fh.read(8))
            except InputError:  # not an image, and no sidecar: say so before reading gigabytes
                if not side.is_file():
                    raise InputError("not a PNG or JPEG file, and no sidecar record beside "
                                     f"it ({side.name})") from None
            if os.fstat(fh.fileno()).st_size > MAX_FILE_BYTES:
                raise InputError(f"{path} is too large to verify (over {MAX_FILE_BYTES} bytes)")
            fh.seek(0)
            data = fh.read(MAX_FILE_BYTES + 1)  # and if it grew since
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"{path} is too large to verify (over {MAX_FILE_BYTES} bytes)")
    sidecar_text = None
    if sidecar is not None and not side.is_file():
        raise InputError(f"sidecar {side}: no such file")
    if side.is_file():
        try:
            with side.open("rb") as fh:
                too_large = os.fstat(fh.fileno()).st_size > MAX_RECORD_BYTES
                raw = b"" if too_large else fh.read(MAX_RECORD_BYTES + 1)
        except OSError:
            raw, too_large = b"\0", False  # unreadable sidecar: parsed as malformed, never ignored
        if too_large or len(raw) > MAX_RECORD_BYTES:
            raise VerificationError(
                Reason.MALFORMED_RECORD,
                f"sidecar {side} is too large (over {MAX_RECORD_BYTES} bytes)",
            )
        try:
            sidecar_text = raw.decode("utf-8")
        except UnicodeDecodeError:
            sidecar_text = "\0"
    keys = list(trusted) if trusted is not None else default_trusted_keys()
    return verify_bytes(data, trusted=keys, sidecar_text=sidecar_text)


def _verify_plain(data: bytes, sidecar_text: str, trusted: Iterable[PublicKey]) -> Verified:
    """A file with no embedded record: the sidecar's signed record and the exact bytes."""
    signed, index = SignedRecord.from_envelope(sidecar_text)
    key = verify_signature(signed, trusted)
    outputs = signed.record["outputs"]
    digest = sha256_hex(data)
    for i in [index] if index is not None else range(len(outputs)):
        if outputs[i].get("file_sha256") == digest:
            return Verified(signed.record, key.key_id, i, "file", "sidecar")
    raise VerificationError(
        Reason.CONTENT_HASH_MISMATCH, "the file's content does not match the signed record"
    )


def _form(signed: SignedRecord, index: int | None) -> tuple[bytes, bytes, int | None]:
    """What a record says, compared as signed bytes (Python's ``1 == True`` is not JSON's)."""
    return canonical_json(dict(signed.record)), signed.signature, index


def _pixels_digest(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return pixels_sha256(image)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
