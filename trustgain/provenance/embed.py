"""Embedding a record in PNG (iTXt chunk) and JPEG (APP11 segments) files.

Hand-written because the job is byte-exact surgery: insert, find and remove one chunk or
segment while leaving every other byte as it was, so the file's digest without the record is
stable. Pillow re-encodes on save and cannot do that; the PNG and JPEG container rules needed
are a few lines each.
"""

from __future__ import annotations

import struct
import zlib

from trustgain.errors import InputError, Reason, VerificationError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEYWORD = b"trustgain"
_ITXT_PREFIX = KEYWORD + b"\0\0\0\0\0"  # keyword, no compression, method 0, no lang, no tkw
_APP11 = 0xEB
_JPEG_TAG = b"trustgain\0"
_JPEG_MAX = 65533 - len(_JPEG_TAG) - 2


def media_type(data: bytes) -> str:
    if data.startswith(PNG_SIGNATURE):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    raise InputError("not a PNG or JPEG file")


def embed(data: bytes, text: str) -> bytes:
    """Return ``data`` with ``text`` embedded (replacing any record already there)."""
    data = strip(data)
    payload = text.encode("utf-8")
    if media_type(data) == "image/png":
        chunks = _png_chunks(data)
        end = chunks[-1][0]  # IEND offset
        return data[:end] + _png_chunk(b"iTXt", _ITXT_PREFIX + payload) + data[end:]
    parts = [payload[i : i + _JPEG_MAX] for i in range(0, len(payload), _JPEG_MAX)] or [b""]
    if len(parts) > 255:
        raise InputError("record is too large to embed in a JPEG")
    segments = b"".join(
        _jpeg_segment(_APP11, _JPEG_TAG + bytes([i + 1, len(parts)]) + part)
        for i, part in enumerate(parts)
    )
    at = _jpeg_insert_at(data)
    return data[:at] + segments + data[at:]


def extract(data: bytes) -> str | None:
    """The embedded record text, or None when the file carries none."""
    if media_type(data) == "image/png":
        records = [(body, crc_ok) for _, ctype, body, crc_ok in _png_chunks(data)
                   if ctype == b"iTXt" and body.startswith(KEYWORD + b"\0")]
        if not records:
            return None
        if len(records) > 1:  # strip() drops them all, so a second one could carry anything
            raise VerificationError(Reason.MALFORMED_RECORD,
                                    f"file carries {len(records)} record chunks, not one")
        body, crc_ok = records[0]
        if not crc_ok:
            raise VerificationError(Reason.MALFORMED_RECORD, "record chunk fails its CRC")
        if not body.startswith(_ITXT_PREFIX):
            raise VerificationError(Reason.MALFORMED_RECORD, "record chunk header unknown")
        return _decode(body[len(_ITXT_PREFIX) :])
    parts: dict[int, bytes] = {}
    total = None
    for _, marker, body in _jpeg_segments(data):
        if marker == _APP11 and body.startswith(_JPEG_TAG):
            if len(body) < len(_JPEG_TAG) + 2:  # strip() drops it: it must not hide anything
                raise VerificationError(Reason.MALFORMED_RECORD, "record segment is truncated")
            seq, count = body[len(_JPEG_TAG)], body[len(_JPEG_TAG) + 1]
            total = count if total is None else total
            if count != total or not 1 <= seq <= count or seq in parts:
                raise VerificationError(Reason.MALFORMED_RECORD, "record segments are inconsistent")
            parts[seq] = body[len(_JPEG_TAG) + 2 :]
    if total is None:
        return None
    if len(parts) != total:
        raise VerificationError(Reason.MALFORMED_RECORD, "record segments are missing")
    return _decode(b"".join(parts[i] for i in range(1, total + 1)))


def strip(data: bytes) -> bytes:
    """``data`` without any embedded record: the bytes the record's file digest covers."""
    if media_type(data) == "image/png":
        out = [data[:8]]
        for offset, ctype, body, _ in _png_chunks(data):
            if not (ctype == b"iTXt" and body.startswith(KEYWORD + b"\0")):
                out.append(data[offset : offset + 12 + len(body)])
                end = offset + 12 + len(body)
        out.append(data[end:])  # bytes after IEND: covered too, so none can be slipped in
        return b"".join(out)
    out, last = [], 0
    for offset, marker, body in _jpeg_segments(data):
        if marker == _APP11 and body.startswith(_JPEG_TAG):
            out.append(data[last:offset])
            last = offset + 4 + len(body)
    out.append(data[last:])
    return b"".join(out)


def carries_c2pa(data: bytes) -> bool:
    """Whether the file holds a C2PA manifest store (PNG ``caBX`` chunk, JPEG APP11 JUMBF)."""
    if media_type(data) == "image/png":
        return any(ctype == b"caBX" for _, ctype, _, _ in _png_chunks(data))
    return any(marker == _APP11 and body.startswith(b"JP")
               for _, marker, body in _jpeg_segments(data))


def _decode(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise VerificationError(Reason.MALFORMED_RECORD, "record is not UTF-8") from None


# -- PNG ------------------------------------------------------------------------------------


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png_chunks(data: bytes) -> list[tuple[int, bytes, bytes, bool]]:
    """(offset, type, body, crc_ok) for every chunk up to IEND."""
    chunks, pos = [], 8
    while True:
        if pos + 12 > len(data):
            raise InputError("PNG file is truncated")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise InputError("PNG file is truncated")
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        chunks.append((pos, ctype, body, crc == zlib.crc32(ctype + body)))
        if ctype == b"IEND":
            return chunks
        pos = end


# -- JPEG -----------------------------------------------------------------------------------


def _jpeg_segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _jpeg_segments(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, marker, body) of every marker segment before the first scan (SOS)."""
    segments, pos = [], 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise InputError("JPEG file is corrupt: expected a marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image
            return segments
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2 or pos + 2 + length > len(data):
            raise InputError("JPEG file is truncated")
        segments.append((pos, marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    raise InputError("JPEG file is truncated: no image data")


def _jpeg_insert_at(data: bytes) -> int:
    """After SOI and any leading APP0/APP1 (JFIF/Exif must come first)."""
    at = 2
    for offset, marker, body in _jpeg_segments(data):
        if marker in (0xE0, 0xE1) and offset == at:
            at = offset + 4 + len(body)
        else:
            break
    return at
