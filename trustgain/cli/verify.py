"""``trustgain verify``: check signed provenance records of files."""

from __future__ import annotations

from pathlib import Path

import click

from trustgain.cli.common import (
    collect_images,
    emit,
    json_option,
    keyring_option,
    load_keyring,
    note,
    progress,
    progress_option,
)
from trustgain.errors import InputError, Reason, TrustgainError, VerificationError
from trustgain.keys import PublicKey
from trustgain.provenance import default_trusted_keys, verify_file
from trustgain.provenance.soft import soft_bind
from trustgain.provenance.verify import sidecar_path
from trustgain.watermark.images import open_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
#: Generated text (verified through its sidecar record).
TEXT_SUFFIXES = {".txt", ".md"}
_SOFT_REASONS = (Reason.MISSING_RECORD, Reason.CONTENT_HASH_MISMATCH)


def _soft(path: Path, mark_key: bytes, dirs: tuple[str, ...], trusted: list[PublicKey]) -> dict:
    try:
        found = soft_bind(open_image(path), mark_key, folders=dirs, trusted=trusted)
    except TrustgainError as exc:
        return {"watermark": None, "error": str(exc)}
    if found is None:
        return {"watermark": None}
    return {
        "watermark": {"payload": found.payload, "p_value": found.p_value},
        "record_id": found.record_id,
        "key_id": found.key_id,
    }


def _soft_text(result: dict) -> str:
    soft = result.get("soft_binding")
    if not soft or not soft.get("watermark"):
        return "" if not soft else "; no watermark of yours"
    mark = soft["watermark"]
    if soft.get("record_id"):
        return (
            f"; watermark {mark['payload']} links it to signed record {soft['record_id']} "
            "(pixels changed since)"
        )
    return f"; watermark {mark['payload']} found, no matching record in --records"


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Trust this key (PEM, or a keyring file); repeatable. Default: your own "
    "keyring's public key and $TRUSTGAIN_HOME/trusted/*.pem.",
)
@click.option(
    "--sidecar",
    type=click.Path(dir_okay=False),
    default=None,
    help="Record file to use when the image carries none [default: FILE.trustgain.json].",
)
@click.option(
    "--records",
    "record_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Where a file fails, look for your watermark and find its record here "
    "(folders of *.trustgain.json); needs your keyring. Repeatable.",
)
@keyring_option
@json_option
@progress_option
def verify(
    files: tuple[str, ...],
    public_keys: tuple[str, ...],
    sidecar: str | None,
    record_dirs: tuple[str, ...],
    keyring_path: str | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Verify the signed provenance record of FILES (images, signed texts or folders).

    Exit code 0 when every file verifies; 1 otherwise, with a reason per file:
    bad_signature, content_hash_mismatch, unknown_key, missing_record, malformed_record.

    \b
    Examples:
      trustgain verify seven.png
      trustgain verify out/ --public-key alice.pem --json
      trustgain verify reposted.jpg --records out/   # soft binding through the watermark
    """
    entries: list[tuple[Path, TrustgainError | None]] = []
    for f in files:  # a missing path or an empty folder is one failed entry, not the end
        try:
            found = [p for p, _ in collect_images([f], IMAGE_SUFFIXES | TEXT_SUFFIXES)]
        except InputError as exc:
            entries.append((Path(f), exc))
            continue
        if Path(f).is_dir():  # texts in a folder count when a record sits beside them
            found = [p for p in found if p.suffix.lower() not in TEXT_SUFFIXES
                     or sidecar_path(p).is_file()]
            if not found:
                entries.append((Path(f), InputError(f"{f} holds no images or signed texts")))
        entries += [(p, None) for p in found]
    paths = [p for p, _ in entries]
    if sidecar and len(paths) != 1:
        raise click.UsageError("--sidecar needs exactly one file")
    trusted = [PublicKey.load(k) for k in public_keys] if public_keys else default_trusted_keys()
    if not trusted:
        note("no trusted keys: pass --public-key, or create a keyring (`trustgain keys create`)")
    mark_key = None
    if record_dirs:
        mark_key = load_keyring(keyring_path).derive("watermark.pixel", "pixel").material
    results, ok = [], True
    for path, error in progress(entries, desc="verify", disable=no_progress or len(paths) < 2):
        try:
            if error is not None:
                raise error
            v = verify_file(path, trusted=trusted, sidecar=sidecar)
        except VerificationError as exc:
            ok = False
            result = {"file": str(path), "valid": False, "reason": exc.reason.value}
            result["message"] = str(exc)
            if mark_key is not None and exc.reason in _SOFT_REASONS:
                result["soft_binding"] = _soft(path, mark_key, record_dirs, trusted)
            results.append(result)
            continue
        except TrustgainError as exc:  # unreadable or not an image: a reason, then go on
            ok = False
            results.append(
                {"file": str(path), "valid": False, "reason": "unreadable",
                 "message": str(exc).removeprefix(f"{path}: ")}
            )
            continue
        results.append(
            {
                "file": str(path),
                "valid": True,
                "record_id": v.record["record_id"],
                "key_id": v.key_id,
                "output_index": v.output_index,
                "binding": v.binding,
                "c2pa": v.c2pa,
                "source": v.source,
                "created": v.record["created"],
                "model_id": v.record["generator"].get("model_id"),
            }
        )
    human = "\n".join(
        f"{r['file']}: valid (record {r['record_id']}, key {r['key_id']}, {r['source']})"
        + ("" if r["binding"] == "file" else
           "; pixels match, and the file adds C2PA Content Credentials (check them with "
           "`trustgain c2pa verify`)" if r["c2pa"] else
           "; pixels match, file bytes differ: re-encoded or metadata changed")
        if r["valid"]
        else f"{r['file']}: INVALID {r['message']}" + _soft_text(r)
        for r in results
    )
    emit(results[0] if len(results) == 1 else results, as_json, human)
    if not ok:
        raise SystemExit(1)
