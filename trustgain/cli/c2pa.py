"""``trustgain c2pa``: C2PA Content Credentials for signed outputs (certificates, sign, verify)."""

from __future__ import annotations

import os
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
from trustgain.errors import InputError, TrustgainError, VerificationError
from trustgain.fileio import write_atomic
from trustgain.keys import PublicKey
from trustgain.provenance import credentials as cr
from trustgain.provenance import default_trusted_keys

SUFFIXES = {".png", ".jpg", ".jpeg"}
MAX_PEM_BYTES = 1 << 20


def read_pem(path: str, what: str) -> bytes:
    """A PEM file's bytes (bounded); a one-line error when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_PEM_BYTES:
        raise InputError(f"{what} {path} is over {MAX_PEM_BYTES} bytes: not a PEM file")
    return data


@click.group()
def c2pa() -> None:
    """C2PA Content Credentials: the industry provenance format, beside trustgain's record."""


@c2pa.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Write the signer's certificate chain (PEM) here; with --csr, the request.")
@click.option("--anchor", "anchor_out", type=click.Path(dir_okay=False), default=None,
              help="Write the local CA certificate (the trust anchor verifiers use) here "
              "[default: OUTPUT with -ca.pem].")
@click.option("--csr", is_flag=True,
              help="Write a certificate signing request for a real CA instead of issuing one.")
@click.option("--name", "common_name", default="trustgain signer", show_default=True,
              help="The certificate's common name (what C2PA readers show as the signer).")
@click.option("--org", "organization", default=None, help="Organisation name.")
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True)
@click.option("--force", is_flag=True, help="Replace existing output files.")
@keyring_option
def cert(output: str, anchor_out: str | None, csr: bool, common_name: str,
         organization: str | None, days: int, force: bool, keyring_path: str | None) -> None:
    """Make a certificate for the keyring's signing key.

    By default a one-shot local CA issues it (its key is discarded at once): C2PA readers
    then call the credentials valid, and trusted when given the CA certificate (--anchor).
    For credentials the public trusts, send the request made with --csr to a CA on the C2PA
    trust list and sign with the chain it returns.

    \b
    Examples:
      trustgain c2pa cert -o signer.pem              # and signer-ca.pem
      trustgain c2pa cert --csr -o signer.csr --name "Example AI Studio" --org "Example Ltd"
    """
    ring = load_keyring(keyring_path)
    if csr:
        write_atomic(output, cr.certificate_request(ring, common_name=common_name,
                                                    organization=organization), overwrite=force)
        note(f"wrote {output}: send it to a certificate authority")
        return
    anchor = Path(anchor_out) if anchor_out else Path(output).with_name(
        Path(output).stem + "-ca.pem")
    if not force:
        for path in (Path(output), anchor):
            if path.exists():
                raise InputError(f"{path} exists (pass --force to replace it)")
    certs = cr.issue_certificate(ring, common_name=common_name,
                                 organization=organization or "trustgain local CA", days=days)
    write_atomic(anchor, certs.anchor, overwrite=force)
    write_atomic(output, certs.chain, overwrite=force)
    note(f"wrote {output} (sign with it) and {anchor} (verifiers trust it: --trust-anchors)")


@c2pa.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Output folder (mirrors the inputs), or a file name for one input.")
@click.option("--cert", "cert_path", required=True, type=click.Path(dir_okay=False),
              help="The signer's certificate chain (PEM), from `trustgain c2pa cert` or a CA.")
@click.option("--training", type=click.Choice(cr.TRAINING_CHOICES), default=None,
              help="Add a cawg.training-mining assertion: may the file be used for AI "
              "training, inference and data mining.")
@click.option("--thumbnail", is_flag=True, help="Embed the preview thumbnail readers show.")
@click.option("--replace", is_flag=True,
              help="Sign files that already carry Content Credentials (theirs are replaced).")
@click.option("--force", is_flag=True, help="Replace existing outputs.")
@keyring_option
@json_option
@progress_option
def sign(inputs: tuple[str, ...], output: str, cert_path: str, training: str | None,
         thumbnail: bool, replace: bool, force: bool, keyring_path: str | None,
         as_json: bool, no_progress: bool) -> None:
    """Add Content Credentials to images (with a trustgain record, or --training terms).

    The record is verified first (with your keyring's key); the credentials say the image was
    made by a generative model (IPTC trainedAlgorithmicMedia), name the model, say when it was
    watermarked, and carry the signed record. Files without a record (photos, `trustgain
    protect` outputs) can only be given --training terms. The claim is signed with the
    keyring's key.

    Existing outputs are skipped, so an interrupted run resumes; a file that fails is reported
    with a reason and the rest go on; exit code 1 if any failed. Inputs are never changed.

    \b
    Examples:
      trustgain c2pa sign seven.png -o seven-cr.png --cert signer.pem
      trustgain c2pa sign out/ -o published/ --cert signer.pem --training notAllowed --json
      trustgain c2pa sign protected/ -o shared/ --cert signer.pem --training notAllowed
    """
    ring = load_keyring(keyring_path)
    chain = read_pem(cert_path, "certificate chain")
    cr.check_chain(chain, ring)  # a wrong certificate stops the run before any file
    files = collect_images(inputs, SUFFIXES)
    out = Path(output)
    single = len(files) == 1 and out.suffix.lower() in SUFFIXES
    if not single and out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file: with a folder or several inputs, -o names a folder")
    results = []
    for src, rel in progress(files, desc="c2pa sign", disable=no_progress or len(files) < 2):
        dst = out if single else out / rel
        results.append(_sign_one(src, dst, ring, chain, (training, thumbnail, replace), force))
    failed = sum(r["status"] == "error" for r in results)
    summary = {"key_id": ring.key_id, "files": results, "failed": failed,
               "signed": sum(r["status"] == "signed" for r in results),
               "skipped": sum(r["status"] == "skipped" for r in results)}
    human = "\n".join(f"{r['file']}: {r['status']}" + (f" ({r['reason']})" if r.get("reason")
                                                          else f" -> {r['output']}")
                      for r in results)
    emit(summary, as_json, human + f"\n{summary['signed']} signed, {summary['skipped']} "
         f"skipped, {failed} failed")
    if failed:
        raise SystemExit(1)


def _sign_one(src: Path, dst: Path, ring: Any, chain: bytes,
              options: tuple[str | None, bool, bool], force: bool) -> dict[str, Any]:
    base: dict[str, Any] = {"file": str(src), "output": str(dst)}
    if dst.suffix.lower() != src.suffix.lower():
        return {**base, "status": "error", "reason": "the output must keep the input's format"}
    if dst.exists() and os.path.samefile(dst, src):
        return {**base, "status": "error", "reason": "output would overwrite the input"}
    if dst.exists() and not force:
        return {**base, "status": "skipped", "reason": "output exists"}
    try:
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read it: {exc.strerror}") from None
        training, thumbnail, replace = options
        signed = cr.sign_credentials(data, ring, chain, training=training, thumbnail=thumbnail,
                                     replace=replace)
        write_atomic(dst, signed, overwrite=force)
    except TrustgainError as exc:
        return {**base, "status": "error", "reason": str(exc)}
    return {**base, "status": "signed", "bytes_added": len(signed) - len(data)}


@c2pa.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--trust-anchors", "anchors_path", type=click.Path(dir_okay=False), default=None,
              help="CA certificates (PEM) to trust; then a signer outside them fails.")
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(dir_okay=False),
              help="Trust this trustgain key for the record inside (PEM or keyring file); "
              "repeatable [default: as `trustgain verify`].")
@json_option
@progress_option
def verify(files: tuple[str, ...], anchors_path: str | None, public_keys: tuple[str, ...],
           as_json: bool, no_progress: bool) -> None:
    """Check Content Credentials and the trustgain record they carry.

    A file passes when the C2PA reference implementation (c2pa-rs) finds the manifest valid
    (trusted, with --trust-anchors), and the trustgain record inside, where there is one, is
    signed by a trusted key and matches the pixels (credentials made with --training on a
    file without a record carry none; the output says so). Exit code 1 if any file fails,
    with a reason per file.

    \b
    Examples:
      trustgain c2pa verify seven-cr.png --trust-anchors signer-ca.pem
      trustgain c2pa verify published/ --json
    """
    anchors = read_pem(anchors_path, "trust anchors") if anchors_path else None
    trusted = [PublicKey.load(k) for k in public_keys] if public_keys else default_trusted_keys()
    entries: list[tuple[Path, TrustgainError | None]] = []
    for f in files:
        try:
            entries += [(p, None) for p, _ in collect_images([f], SUFFIXES)]
        except InputError as exc:
            entries.append((Path(f), exc))
    results, ok = [], True
    for path, error in progress(entries, desc="c2pa verify",
                                disable=no_progress or len(entries) < 2):
        result: dict[str, Any] = {"file": str(path)}
        try:
            if error is not None:
                raise error
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise InputError(f"cannot read it: {exc.strerror}") from None
            check = cr.verify_credentials(data, trusted=trusted, trust_anchors=anchors,
                                          require_record=False)
        except VerificationError as exc:
            ok = False
            results.append({**result, "valid": False, "reason": exc.reason.value,
                            "message": str(exc)})
            continue
        except TrustgainError as exc:
            ok = False
            results.append({**result, "valid": False, "reason": "unreadable",
                            "message": str(exc)})
            continue
        found = check.credentials
        results.append({**result, "valid": True, "state": found.state,
                        "trusted_signer": check.trusted_signer, "signer": found.signer,
                        "actions": list(found.actions),
                        "ai_generated": found.digital_source_type == cr.AI_SOURCE,
                        "training": dict(found.training) or None,
                        "record_id": v.record["record_id"] if (v := check.verified) else None,
                        "key_id": v.key_id if v else None,
                        "model_id": v.record["generator"].get("model_id") if v else None})
    human = "\n".join(
        f"{r['file']}: valid C2PA ({'trusted' if r['trusted_signer'] else 'signer not checked'}"
        f" against a trust list; signer {r['signer']}), "
        + (f"AI-generated by {r['model_id']}, record {r['record_id']}" if r["record_id"]
           else f"no trustgain record; AI training {(r['training'] or {}).get('cawg.ai_training')}")
        if r["valid"] else f"{r['file']}: INVALID {r['message']}"
        for r in results)
    emit(results[0] if len(results) == 1 else results, as_json, human)
    if not ok:
        raise SystemExit(1)
