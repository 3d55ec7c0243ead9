"""Soft binding: a re-encoded file whose record is gone still leads back to its record.

The ``watermark.pixel`` stage carries the first 32 bits of the record id in the image. When a
file fails its hard binding (no record, or content changed by re-encoding), the key holder
detects the mark and looks the id up among stored records (sidecars or a record archive).
A soft binding says "this picture carries the mark of record R, and R is validly signed"; it
does not say the pixels are unchanged, which is why verification still fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from trustgain.errors import TrustgainError
from trustgain.keys import PublicKey
from trustgain.provenance.record import MAX_RECORD_BYTES, SignedRecord
from trustgain.provenance.verify import SIDECAR_SUFFIX, verify_signature
from trustgain.watermark import pixel


@dataclass(frozen=True)
class SoftBinding:
    payload: str  # hex, the record id prefix carried by the mark
    p_value: float
    record_id: str | None  # the matching, validly signed record, if one was found
    key_id: str | None


def find_records(
    prefix: str, folders: Iterable[str | os.PathLike[str]], trusted: Iterable[PublicKey]
) -> list[SignedRecord]:
    """Validly signed records under ``folders`` whose id starts with ``prefix``."""
    keys = list(trusted)
    found = []
    for folder in folders:
        for path in sorted(Path(folder).rglob(f"*{SIDECAR_SUFFIX}")):
            try:
                if path.stat().st_size > MAX_RECORD_BYTES:
                    continue  # never read gigabytes for a lookup
                signed, _ = SignedRecord.from_envelope(path.read_text(encoding="utf-8"))
                if signed.record_id.startswith(prefix):
                    verify_signature(signed, keys)
                    found.append(signed)
            except (OSError, UnicodeDecodeError, TrustgainError):
                continue  # unreadable, foreign or badly signed records bind nothing
    return found


def soft_bind(
    image: Image.Image,
    mark_key: bytes,
    *,
    folders: Iterable[str | os.PathLike[str]],
    trusted: Iterable[PublicKey],
    fpr: float = 1e-6,
) -> SoftBinding | None:
    """Detect the pixel mark and find its record; None when no mark is detected at ``fpr``."""
    detection = pixel.detect(image, mark_key, fpr=fpr)
    if not detection.detected or detection.payload is None:
        return None
    prefix = detection.payload.hex()
    records = find_records(prefix, folders, trusted)
    match = records[0] if len(records) == 1 else None  # ambiguous prefixes bind nothing
    return SoftBinding(
        prefix,
        detection.p_value,
        match.record_id if match else None,
        match.key_id if match else None,
    )
