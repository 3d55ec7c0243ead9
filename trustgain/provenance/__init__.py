"""Signed provenance records: build, sign, embed in PNG/JPEG, verify."""

from trustgain.provenance.record import SignedRecord, build_record
from trustgain.provenance.verify import (
    Verified,
    default_trusted_keys,
    sidecar_path,
    verify_bytes,
    verify_file,
    verify_signature,
)

__all__ = [
    "SignedRecord",
    "Verified",
    "build_record",
    "default_trusted_keys",
    "sidecar_path",
    "verify_bytes",
    "verify_file",
    "verify_signature",
]
