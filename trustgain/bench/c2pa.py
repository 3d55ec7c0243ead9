"""Benchmark area ``c2pa``: Content Credentials beside trustgain's own record.

Peers in the same run, on the same 512x512 photos (scikit-image's bundled photos, plus
``--data``), each saved as PNG and as JPEG (quality 95) with a signed trustgain record
embedded, as ``trustgain generate`` writes them:

- **trustgain record**: build, sign (Ed25519) and embed the record (``iTXt`` / APP11);
  verify with :func:`trustgain.provenance.verify_bytes`;
- **C2PA** (c2pa-rs through c2pa-python): the Content Credentials that
  :func:`trustgain.provenance.credentials.sign_credentials` adds to that file; the reader's
  own validation alone (``read_credentials``), and ``verify_credentials`` (the reader, then
  the trustgain record inside it against the pixels), which ``trustgain c2pa verify`` runs.

Measured: bytes added, sign and verify time per file (median of repeats, 1-2 threads), and
single-bit tampering: random bits of the credentialed file are flipped one at a time and each
checker says whether it notices. Flips are reported by where they land (image data, the
trustgain record, the C2PA manifest store). A flip a checker misses inside the manifest store
is also classed by the byte's value: C2PA leaves the COSE signature's ``pad`` (zeros, in the
unprotected header, reserved for the signature) unsigned by design.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from trustgain.bench import Row
from trustgain.bench.watermark import load_images, wilson
from trustgain.errors import TrustgainError

FORMATS = ("png", "jpeg")


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _encode(image, fmt: str) -> tuple[bytes, list[dict]]:
    from trustgain.artifact import encode_outputs

    files, entries = encode_outputs([image], fmt, 95)
    return files[0], entries


def _seal(bare: bytes, entries: list[dict], ring) -> bytes:
    """The encoded file with a new signed record embedded (what sealing an output costs)."""
    from trustgain.provenance import embed
    from trustgain.provenance.record import SignedRecord, build_record

    record = build_record(record_id=uuid.uuid4().hex, created=dt.datetime.now(dt.timezone.utc),
                          generator={"kind": "diffusers", "model_id": "bench"},
                          request_hmac_sha256="0" * 64, stages=[], outputs=entries,
                          signer_key_id=ring.key_id)
    return embed.embed(bare, SignedRecord.sign(record, ring).to_json(0))


def regions(data: bytes) -> list[tuple[int, int, str]]:
    """(start, end, region) over the file: image data, trustgain record, C2PA store, other
    (the chunks and segments as :mod:`trustgain.provenance.embed` reads them)."""
    from trustgain.provenance import embed

    if data.startswith(embed.PNG_SIGNATURE):
        out = []
        for pos, kind, body, _ in embed._png_chunks(data):
            name = {b"IDAT": "image data", b"caBX": "C2PA store"}.get(kind, "other")
            if kind == b"iTXt" and body.startswith(embed.KEYWORD + b"\0"):
                name = "trustgain record"
            out.append((pos, pos + 12 + len(body), name))
        return out
    out, end = [], 2
    for pos, marker, body in embed._jpeg_segments(data):
        name = "image data" if marker in (0xDB, 0xC4, 0xC0, 0xC2) else "other"
        if marker == 0xEB:
            name = ("trustgain record" if body.startswith(embed._JPEG_TAG)
                    else "C2PA store" if body.startswith(b"JP") else "other")
        end = pos + 4 + len(body)
        out.append((pos, end, name))
    out.append((end, len(data), "image data"))  # the scans
    return out


def run(quick: bool = False, device: str = "cpu", data: Path | None = None) -> list[Row]:
    from trustgain.keys import KeyRing
    from trustgain.provenance import credentials as cr
    from trustgain.provenance import verify_bytes

    images = load_images(data, 3 if quick else None)
    flips_per_file = 150 if quick else 600
    repeat = 3 if quick else 7
    ring = KeyRing.generate()
    certs = cr.issue_certificate(ring)
    keys = [ring.public_key]
    rng = np.random.default_rng(0)
    rows = [Row("setup", len(images), "images",
                note=f"512x512, PNG and JPEG q95; {flips_per_file} one-bit flips per file; "
                     f"c2pa-python {_version()}")]

    def credentials_ok(blob: bytes) -> bool:
        try:
            found = cr.read_credentials(blob)
        except TrustgainError:
            return False
        return found is not None and found.state in ("Valid", "Trusted")

    def record_ok(blob: bytes) -> bool:
        try:
            verify_bytes(blob, trusted=keys)
        except TrustgainError:
            return False
        return True

    def both_ok(blob: bytes) -> bool:
        try:
            cr.verify_credentials(blob, trusted=keys, trust_anchors=certs.anchor)
        except TrustgainError:
            return False
        return True

    checkers = {"trustgain record": record_ok, "C2PA reader": credentials_ok,
                "both (c2pa verify)": both_ok}
    for fmt in FORMATS:
        cost: dict[str, list[float]] = defaultdict(list)
        # region -> checker -> Counter(missed, n); zero-byte misses in the store
        seen: dict[str, Counter] = defaultdict(Counter)
        missed: dict[tuple[str, str], int] = Counter()
        missed_zero: Counter = Counter()
        for _, image in images:
            bare, entries = _encode(image, fmt)
            recorded = _seal(bare, entries, ring)
            signed = cr.sign_credentials(recorded, ring, certs.chain)
            cost["record bytes"].append(len(recorded) - len(bare))
            cost["c2pa bytes"].append(len(signed) - len(recorded))
            for name, fn in (("record sign", partial(_seal, bare, entries, ring)),
                             ("c2pa sign", partial(cr.sign_credentials, recorded, ring,
                                                   certs.chain)),
                             ("record verify", partial(record_ok, recorded)),
                             ("record verify, credentialed", partial(record_ok, signed)),
                             ("c2pa read", partial(credentials_ok, signed)),
                             ("both verify", partial(both_ok, signed))):
                cost[name].append(_median_ms(fn, repeat))
            if not all(check(signed) for check in checkers.values()):
                raise RuntimeError("an untouched credentialed file failed a check")
            spans = regions(signed)
            for bit in rng.choice(len(signed) * 8, size=flips_per_file, replace=False):
                at = int(bit) // 8
                blob = bytearray(signed)
                blob[at] ^= 1 << (int(bit) % 8)
                where = next((r for s, e, r in spans if s <= at < e), "other")
                seen[where]["n"] += 1
                for name, check in checkers.items():
                    if check(bytes(blob)):
                        missed[(where, name)] += 1
                        if where == "C2PA store" and signed[at] == 0:
                            missed_zero[name] += 1
        med = {k: statistics.median(v) for k, v in cost.items()}
        rows += [
            Row(f"{fmt}: bytes added, trustgain record", med["record bytes"], "bytes",
                note="median per file"),
            Row(f"{fmt}: bytes added, C2PA credentials", med["c2pa bytes"], "bytes",
                note=f"x{med['c2pa bytes'] / med['record bytes']:.1f} the record; cert chain "
                     "and the reserved signature space included"),
            Row(f"{fmt}: sign, trustgain record (build, sign, embed)", med["record sign"], "ms",
                note="on the encoded file, as the pipeline seals"),
            Row(f"{fmt}: sign, C2PA credentials (record checked first)", med["c2pa sign"], "ms",
                note=f"x{med['c2pa sign'] / med['record sign']:.2f} the record's"),
            Row(f"{fmt}: verify, trustgain record", med["record verify"], "ms",
                note="its own file (file digest)"),
            Row(f"{fmt}: verify, trustgain record on the credentialed file",
                med["record verify, credentialed"], "ms",
                note="file bytes differ by the C2PA store: falls back to decoding the pixels"),
            Row(f"{fmt}: verify, C2PA reader alone", med["c2pa read"], "ms",
                note=f"x{med['c2pa read'] / med['record verify']:.2f} the record's"),
            Row(f"{fmt}: verify, both (trustgain c2pa verify)", med["both verify"], "ms",
                note=f"x{med['both verify'] / med['record verify']:.2f} the record's"),
        ]
        for where in sorted(seen):
            n = seen[where]["n"]
            for name in checkers:
                k = n - missed[(where, name)]
                lo, hi = wilson(k, n)
                extra = ""
                if where == "C2PA store" and missed[(where, name)]:
                    extra = (f"; of the {missed[(where, name)]} missed, {missed_zero[name]} "
                             "flipped a zero byte (the unsigned COSE pad)")
                target, ok = "", None
                if name == "both (c2pa verify)" and where != "C2PA store":
                    target, ok = "1.0", k == n
                rows.append(Row(f"{fmt}: flips detected in {where}, {name}", k / n, "share",
                                target, ok,
                                note=f"{k}/{n}, Wilson 95% [{lo:.3f}, {hi:.3f}]{extra}"))
    return rows


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("c2pa-python")
    except PackageNotFoundError:
        return "not installed"
