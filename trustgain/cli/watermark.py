"""``trustgain watermark``: embed and detect the keyed pixel mark in files and folders."""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path
from typing import Any

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
from trustgain.errors import InputError, TrustgainError
from trustgain.fileio import write_atomic
from trustgain.watermark import pixel
from trustgain.watermark.images import display_metadata, open_image
from trustgain.watermark.pixel_check import embed_checked
from trustgain.watermark.pixel_stage import KEY_PURPOSE, PixelMark, psnr

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
_SAVE = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95}),
    ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"lossless": True}),
    ".tif": ("TIFF", {"compression": "tiff_deflate"}),
    ".tiff": ("TIFF", {"compression": "tiff_deflate"}),
    ".bmp": ("BMP", {}),
}


def _key(keyring_path: str | None) -> tuple[bytes, str]:
    derived = load_keyring(keyring_path).derive(PixelMark.name, KEY_PURPOSE)
    return derived.material, derived.key_id


@click.group()
def watermark() -> None:
    """Keyed invisible watermark for any image (the watermark.pixel stage's mark)."""


@watermark.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="Output folder (mirrors the inputs), or a file name for one input.",
)
@click.option("--payload", default=None, help="8 hex digits to carry [default: random, printed].")
@click.option(
    "--strength",
    type=click.FloatRange(0.5, 8.0),
    default=pixel.STRENGTH,
    show_default=True,
    help="RMS luminance change in 8-bit units.",
)
@click.option(
    "--max-strength",
    type=click.FloatRange(0.5, 8.0),
    default=None,
    help="Each output is read back; where the mark is not found the strength is raised "
    "(x1.25, x1.5, x2) up to this [default: twice --strength, at most 8; equal to --strength: "
    "check only].",
)
@click.option("--force", is_flag=True, help="Overwrite existing outputs (inputs never).")
@keyring_option
@json_option
@progress_option
def embed(
    inputs: tuple[str, ...],
    output: str,
    payload: str | None,
    strength: float,
    max_strength: float | None,
    force: bool,
    keyring_path: str | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Mark images; outputs keep the input's format (JPEG at quality 95).

    Each output is decoded again and checked for the mark and its payload before it is
    written; where it is not found (small or very busy images) the strength is raised for that
    image only, and the strength used is reported. An image whose mark cannot be found even
    at --max-strength is refused, not written.

    Outputs keep the input's colour profile and EXIF orientation, and drop the rest of its
    metadata (GPS position, camera serial number, ...).

    Existing outputs are skipped, so an interrupted run resumes where it stopped. Unreadable
    or unsupported files are reported with a reason and the rest go on; exit code 1 if any
    file failed.

    \b
    Examples:
      trustgain watermark embed photo.jpg -o photo-marked.jpg
      trustgain watermark embed photos/ -o marked/ --payload 0badc0de --json
    """
    files = collect_images(inputs, IMAGE_SUFFIXES)
    out = Path(output)
    single = len(files) == 1 and out.suffix.lower() in IMAGE_SUFFIXES
    if not single and out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file: with a folder or several inputs, -o names a folder")
    try:
        data = bytes.fromhex(payload) if payload else secrets.token_bytes(4)
    except ValueError:
        raise click.BadParameter("must be 8 hex digits", param_hint="--payload") from None
    if len(data) != 4:
        raise click.BadParameter("must be 8 hex digits (32 bits)", param_hint="--payload")
    if max_strength is not None and max_strength < strength:
        raise click.BadParameter(f"{max_strength:g} is below --strength {strength:g}",
                                 param_hint="--max-strength")
    key, key_id = _key(keyring_path)
    results, failed = [], 0
    for src, rel in progress(files, desc="embed", disable=no_progress or len(files) < 2):
        dst = out if single else out / rel
        result = _embed_one(src, dst, key, data, (strength, max_strength), force)
        failed += result["status"] == "error"
        results.append(result)
    summary = {
        "key_id": key_id,
        "payload": data.hex(),
        "files": results,
        "marked": sum(r["status"] == "marked" for r in results),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "failed": failed,
    }
    human = "\n".join(
        f"{r['file']}: {r['status']}"
        + (f" ({r['reason']})" if r.get("reason") else f" -> {r['output']}")
        + (f" (strength raised to {r['strength']:g} so the mark is found)"
           if r.get("strength", strength) > strength else "")
        for r in results
    )
    emit(
        summary,
        as_json,
        human + f"\npayload {data.hex()}: {summary['marked']} marked, "
        f"{summary['skipped']} skipped, {failed} failed",
    )
    if failed:
        raise SystemExit(1)


def _embed_one(
    src: Path,
    dst: Path,
    key: bytes,
    payload: bytes,
    strengths: tuple[float, float | None],
    force: bool,
) -> dict[str, Any]:
    base: dict[str, Any] = {"file": str(src), "output": str(dst)}
    if dst.suffix.lower() not in _SAVE:
        return {**base, "status": "error", "reason": f"cannot write {dst.suffix} files"}
    if dst.exists() and os.path.samefile(dst, src):
        return {**base, "status": "error", "reason": "output would overwrite the input"}
    if dst.exists() and not force:
        return {**base, "status": "skipped", "reason": "output exists"}
    try:
        image = open_image(src)
        fmt, options = _SAVE[dst.suffix.lower()]
        if fmt == "JPEG" and image.mode not in ("RGB", "L"):
            raise TrustgainError(f"{image.mode} image cannot be saved as JPEG; use .png")

        def encode(marked: Any) -> bytes:
            buf = io.BytesIO()
            try:
                marked.save(buf, format=fmt, **options, **display_metadata(image, fmt))
            except (OSError, ValueError) as exc:  # Pillow: this mode cannot go in this format
                raise TrustgainError(f"cannot save a {marked.mode} image as {fmt}: "
                                     f"{exc}") from None
            return buf.getvalue()

        strength, top = strengths
        mark = embed_checked(image, key, payload, strength=strength, max_strength=top,
                             encode=encode)
        try:
            write_atomic(dst, mark.data, overwrite=force)
        except OSError as exc:  # a read-only folder, a file where a folder goes, a full disk
            raise TrustgainError(f"cannot write {dst}: {exc.strerror or exc}") from None
    except TrustgainError as exc:
        return {**base, "status": "error", "reason": _reason(exc, src)}
    return {**base, "status": "marked", "nonce": mark.nonce, "strength": mark.strength,
            "check_p_value": mark.p_value, "psnr_db": psnr(image, mark.image)}


def _human_line(r: dict) -> str:
    """One file's detection for people: the decision, the p-value, and the payload, or why
    there is none (the mark is weaker than its payload needs: see ``--require-payload``)."""
    if r["status"] == "error":
        return f"{r['file']}: error ({r['reason']})"
    line = f"{r['file']}: {'DETECTED' if r['detected'] else 'not detected'} p={r['p_value']:.3g}"
    if r["payload"] and r["detected"]:
        return line + f" payload {r['payload']}"
    if r["present"] and not r["payload"]:
        return line + " (mark present; payload not recovered)"
    return line


def _reason(exc: Exception, src: Path) -> str:
    """The error without the file name the line already starts with."""
    return str(exc).removeprefix(f"{src}: ")


@watermark.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--fpr",
    type=click.FloatRange(1e-12, 0.5),
    default=1e-3,
    show_default=True,
    help="False-positive rate: detected when the p-value is at most this.",
)
@click.option(
    "--require-payload",
    is_flag=True,
    help="Count a file as detected only when its payload verifies (BCH + keyed tag).",
)
@keyring_option
@json_option
@progress_option
def detect(
    inputs: tuple[str, ...],
    fpr: float,
    require_payload: bool,
    keyring_path: str | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Look for your key's mark; prints p-value and payload per file.

    The p-value is a conservative bound from an analytic null (see trustgain.watermark.pixel).
    Exit code 1 if any file could not be read.

    \b
    Examples:
      trustgain watermark detect suspect.jpg
      trustgain watermark detect downloads/ --json --fpr 1e-6
      trustgain watermark detect repost.jpg --require-payload
    """
    files = collect_images(inputs, IMAGE_SUFFIXES)
    key, key_id = _key(keyring_path)
    results, failed = [], 0
    for src, _ in progress(files, desc="detect", disable=no_progress or len(files) < 2):
        try:
            d = pixel.detect(open_image(src), key, fpr=fpr, require_payload=require_payload)
        except TrustgainError as exc:
            failed += 1
            results.append({"file": str(src), "status": "error", "reason": _reason(exc, src)})
            continue
        results.append(
            {
                "file": str(src),
                "status": "ok",
                "detected": d.detected,
                "present": d.present,
                "p_value": d.p_value,
                "z": round(d.z, 3),
                "payload": d.payload.hex() if d.payload else None,
                "period": d.period and round(d.period, 2),
                "angle": d.angle and round(d.angle, 2),
            }
        )
    human = "\n".join(_human_line(r) for r in results)
    emit({"key_id": key_id, "fpr": fpr, "files": results}, as_json, human)
    if failed:
        note(f"{failed} file(s) could not be read")
        raise SystemExit(1)
