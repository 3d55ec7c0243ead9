"""Adversarial checks of keys, key files and signed records (fast: no model is run).

Each test pins one property the security review asked for: secrets never in reprs, messages
or CLI output; key files 0600 from the start; verification fails closed, with one reason,
on every crafted record.
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import unicodedata
from datetime import datetime, timezone

import pytest
from PIL import Image

from trustgain.cli.main import main
from trustgain.digest import canonical_json, pixels_sha256, sha256_hex
from trustgain.errors import InputError, KeyFileError, Reason, TrustgainError, VerificationError
from trustgain.keys import KeyRing, PublicKey, is_encrypted, public_key_path
from trustgain.provenance import embed, verify_bytes, verify_file
from trustgain.provenance.record import (
    SignedRecord,
    build_record,
    record_seed,
    request_digest,
    request_matches,
    seal_seed,
)
from trustgain.provenance.verify import sidecar_path


@pytest.fixture(scope="module")
def ring(keyring) -> KeyRing:
    return keyring


@pytest.fixture(scope="module")
def attacker(other_keyring) -> KeyRing:
    return other_keyring


def _png() -> tuple[bytes, Image.Image]:
    image = Image.new("RGB", (4, 4), (200, 30, 40))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), image


def _record(ring: KeyRing, png: bytes, image: Image.Image, **change) -> dict:
    record = build_record(
        record_id="rec-1",
        created=datetime(2024, 1, 1, tzinfo=timezone.utc),
        generator={"model_id": "tiny"},
        request_hmac_sha256=request_digest({"prompt": "a"}, ring),
        seed_sealed=seal_seed(7, "rec-1", ring),
        stages=[],
        outputs=[{"file_sha256": sha256_hex(png), "pixels_sha256": pixels_sha256(image)}],
        signer_key_id=ring.key_id,
    )
    record.update(change)
    return record


def _signed_png(ring: KeyRing, **change) -> tuple[bytes, bytes, str]:
    """(bare png, png with its record embedded, the embedded envelope text)."""
    png, image = _png()
    signed = SignedRecord.sign(_record(ring, png, image, **change), ring)
    text = signed.to_json(0)
    return png, embed.embed(png, text), text


def _reason(data: bytes, keys, sidecar=None) -> VerificationError:
    with pytest.raises(VerificationError) as err:
        verify_bytes(data, trusted=keys, sidecar_text=sidecar)
    assert "\n" not in str(err.value)  # one line
    return err.value


def _run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return code, out.out, out.err


def _secrets(ring: KeyRing) -> list[str]:
    seed = ring._signing.private_bytes_raw()
    out = []
    for raw in (ring._master, seed, ring.derive("provenance", "seed").material):
        out += [raw.hex(), base64.b64encode(raw).decode()]
    return out


# -- 1. secrets stay out of reprs, messages and CLI output --------------------------------


def test_reprs_and_messages_hold_no_secret(ring, tmp_path):
    texts = [
        repr(ring),
        str(ring),
        repr(ring.public_key),
        repr(ring.derive("a", "b")),
        str(ring.derive("a", "b")),
    ]
    path = ring.save(tmp_path / "k.json", passphrase="pass-phrase-123")
    for passphrase in ("wrong-guess-456", None):
        with pytest.raises(KeyFileError) as err:
            KeyRing.load(path, passphrase=passphrase)
        texts.append(str(err.value) + str(err.value.hint))
    doc = json.loads(path.read_text())
    doc["secret"] = doc["secret"][:10]
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(KeyFileError) as err:
        KeyRing.load(tmp_path / "t.json", passphrase="pass-phrase-123")
    texts.append(str(err.value))
    joined = "\n".join(texts)
    assert not [s for s in _secrets(ring) if s in joined]
    assert "pass-phrase-123" not in joined and "wrong-guess-456" not in joined


def test_cli_keys_output_holds_no_secret(capsys, tmp_path, monkeypatch):
    key = tmp_path / "k.json"
    monkeypatch.setenv("TRUSTGAIN_PASSPHRASE", "cli-pass-789")
    outputs = []
    for args in (
        ("create", "--json"),
        ("show", "--json"),
        ("show",),
        ("export-public",),
        ("create",),
    ):
        code, out, err = _run(capsys, "keys", *args, "--keyring", str(key))
        outputs.append(out + err)
    monkeypatch.setenv("TRUSTGAIN_PASSPHRASE", "cli-wrong-000")
    code, out, err = _run(
        capsys, "verify", str(tmp_path / "x.png"), "--records", str(tmp_path), "--keyring", str(key)
    )
    assert code == 1 and "error: wrong passphrase" in err
    outputs.append(out + err)
    ring = KeyRing.load(key, passphrase="cli-pass-789")
    joined = "\n".join(outputs)
    assert not [s for s in _secrets(ring) if s in joined]
    assert "cli-pass-789" not in joined and "cli-wrong-000" not in joined


@pytest.mark.parametrize("public_key", [base64.b64encode(b"short").decode(), "", "AAAA"])
def test_corrupt_public_key_in_key_file_is_one_line(capsys, ring, tmp_path, public_key):
    """A keyring whose public key has the wrong length: KeyFileError, not ValueError."""
    path = ring.save(tmp_path / "k.json")
    doc = json.loads(path.read_text())
    doc["public_key"] = public_key
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="public_key"):
        PublicKey.load(path)
    with pytest.raises(KeyFileError):
        KeyRing.load(path)
    for args in (("keys", "show"), ("keys", "export-public")):
        code, _, err = _run(capsys, *args, "--keyring", str(path))
        assert code == 1 and err.startswith("error: ")
    code, _, err = _run(capsys, "verify", str(tmp_path / "x.png"), "--public-key", str(path))
    assert code == 1 and err.startswith("error: ")


def test_trusted_folder_with_a_corrupt_entry_trusts_nothing_from_it(ring, tmp_path):
    from trustgain.fileio import trustgain_home
    from trustgain.provenance import default_trusted_keys

    trusted = trustgain_home() / "trusted"
    trusted.mkdir(parents=True)
    (trusted / "bad.pem").write_text(
        json.dumps(
            {
                "format": "trustgain.keyring",
                "version": 1,
                "key_id": "x",
                "public_key": "AAAA",
                "encryption": None,
                "secret": "",
            }
        )
    )
    (trusted / "good.pem").write_bytes(ring.public_key.to_pem())
    assert default_trusted_keys() == [ring.public_key]


def test_x25519_pem_is_not_a_signing_key(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    pem = (
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        PublicKey.from_pem(pem)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": True}, "version"),
        ({"version": 1.0}, "version"),
        ({"encryption": "yes"}, "encryption"),
        ({"encryption": False}, "encryption"),
        ({"encryption": []}, "encryption"),
    ],
)
def test_key_file_header_types_are_exact(ring, tmp_path, change, message):
    path = ring.save(tmp_path / "k.json")
    doc = {**json.loads(path.read_text()), **change}
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match=message):
        KeyRing.load(path, passphrase="pw")
    with pytest.raises(KeyFileError, match=message):
        is_encrypted(path)


def test_key_file_with_duplicate_keys_is_refused(ring, tmp_path):
    path = ring.save(tmp_path / "k.json")
    text = path.read_text()
    other = json.loads(KeyRing.generate().save(tmp_path / "o.json").read_text())["secret"]
    path.write_text(text.replace('"secret":', f'"secret": "{other}", "secret":', 1))
    with pytest.raises(KeyFileError, match="duplicate"):
        KeyRing.load(path)
    with pytest.raises(KeyFileError, match="duplicate"):
        PublicKey.load(path)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n": 2**20, "r": 32}, "out of the accepted range"),  # 4 GiB of memory
        ({"p": 16, "n": 2**20}, "out of the accepted range"),  # minutes of work
        ({"n": 32768.5}, "bad scrypt parameters"),
        ({"r": True}, "bad scrypt parameters"),
    ],
)
def test_scrypt_parameters_are_bounded_and_exact(ring, tmp_path, params, message):
    path = ring.save(tmp_path / "k.json", passphrase="pw")
    doc = json.loads(path.read_text())
    doc["encryption"].update(params)
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match=message):
        KeyRing.load(path, passphrase="pw")


def test_passphrases_that_are_not_utf8(ring, tmp_path, capsys, monkeypatch):
    """A non-UTF-8 TRUSTGAIN_PASSPHRASE reaches Python as lone surrogates: its bytes are the
    passphrase, never a UnicodeEncodeError traceback."""
    raw = os.fsdecode(b"\xff\xfe-latin1-\xe9")
    path = ring.save(tmp_path / "k.json", passphrase=raw)
    assert KeyRing.load(path, passphrase=raw).key_id == ring.key_id
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        KeyRing.load(path, passphrase="\ud800")  # not from any bytes: still one line
    monkeypatch.setenv("TRUSTGAIN_PASSPHRASE", raw)
    code, _, _ = _run(capsys, "keys", "create", "--keyring", str(tmp_path / "c.json"))
    assert code == 0 and is_encrypted(tmp_path / "c.json")
    assert KeyRing.load(tmp_path / "c.json", passphrase=raw)


def test_empty_passphrase_never_writes_plaintext_silently(ring, tmp_path):
    with pytest.raises(KeyFileError, match="empty passphrase"):
        ring.save(tmp_path / "k.json", passphrase="")
    assert not (tmp_path / "k.json").exists()


# -- 2. key file modes, overwrites, symlinks ----------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o022])
def test_key_file_is_0600_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = KeyRing.generate().save(tmp_path / "home" / "k.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(public_key_path(path).stat().st_mode) == 0o644
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_key_file_is_never_world_readable_while_written(tmp_path, monkeypatch):
    """The temporary file is 0600 before a byte of the secret is written into it."""
    import trustgain.fileio as fileio

    seen = []
    real_fdopen = os.fdopen

    def spy(fd, *args, **kwargs):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "fdopen", spy)
    old = os.umask(0)
    try:
        KeyRing.generate().save(tmp_path / "k.json")
    finally:
        os.umask(old)
    assert seen[0] == 0o600


def test_symlink_at_the_key_path_is_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "k.json"
    link.symlink_to(victim)
    with pytest.raises(TrustgainError, match="exists"):
        KeyRing.generate().save(link)
    dangling = tmp_path / "d.json"
    dangling.symlink_to(tmp_path / "would-be-created.json")
    with pytest.raises(TrustgainError, match="exists"):
        KeyRing.generate().save(dangling)
    assert not (tmp_path / "would-be-created.json").exists()
    KeyRing.generate().save(link, overwrite=True)  # --force replaces the link, not its target
    assert victim.read_text() == "precious" and not link.is_symlink()
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    victim2 = tmp_path / "victim2.txt"
    victim2.write_text("precious2")
    (tmp_path / "p.pub.pem").symlink_to(victim2)
    KeyRing.generate().save(tmp_path / "p.json", overwrite=True)
    assert victim2.read_text() == "precious2"


def test_cli_refuses_to_replace_a_key_file_without_force(capsys, tmp_path):
    key = tmp_path / "k.json"
    _run(capsys, "keys", "create", "--keyring", str(key))
    before = key.read_bytes()
    code, _, err = _run(capsys, "keys", "create", "--keyring", str(key))
    assert code == 1 and "--force" in err and key.read_bytes() == before


def test_key_file_others_can_write_is_warned(capsys, tmp_path, monkeypatch):
    """Readable by others and unencrypted: warned (as before). Writable by others: warned
    too, encrypted or not: whoever can write it can swap in a keyring they know."""
    from trustgain.keys import permission_problem

    monkeypatch.setenv("TRUSTGAIN_PASSPHRASE", "pw")
    key = tmp_path / "k.json"
    _run(capsys, "keys", "create", "--keyring", str(key))
    assert permission_problem(key) is None
    key.chmod(0o644)  # encrypted and readable: the passphrase protects it
    assert permission_problem(key) is None
    key.chmod(0o620)
    problem = permission_problem(key)
    assert problem is not None and "writable" in problem
    code, _, err = _run(capsys, "keys", "show", "--keyring", str(key))
    assert code == 0 and f"chmod 600 {key}" in err and "writable" in err


# -- 3. verification fails closed ---------------------------------------------------------


def test_untampered_record_verifies(ring):
    _, data, _ = _signed_png(ring)
    assert verify_bytes(data, trusted=[ring.public_key]).key_id == ring.key_id


def test_every_flipped_byte_of_the_envelope_fails_or_is_equivalent(ring):
    """Flip each byte of the embedded text: never an unexpected exception, and a record
    that still verifies is the very same record and signature."""
    png, _, text = _signed_png(ring)
    original = SignedRecord.from_envelope(text)
    raw = text.encode()
    for i in range(len(raw)):
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        try:
            forged = embed.embed(png, bytes(tampered).decode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            continue
        try:
            v = verify_bytes(forged, trusted=[ring.public_key])
        except (VerificationError, InputError):
            continue
        assert SignedRecord.from_envelope(bytes(tampered).decode()) == original, i
        assert v.record == original[0].record


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"record_id": "rec-1"', '"record_id": "evil", "record_id": "rec-1"'),
        ('"record_id": "rec-1"', '"record_id": "rec-1", "record_id": "rec-1"'),
        ('"key_id": "', '"key_id": "ed25519:00", "key_id": "'),
        ('"signature":', '"signature": "AAAA", "signature":'),
        ('"record": {', '"record": {}, "record": {'),
    ],
)
def test_duplicate_json_keys_are_malformed(ring, old, new):
    """json keeps the last value; another parser keeps the first. A record that two parsers
    read differently must not verify (the signature covered only one reading)."""
    png, _, text = _signed_png(ring)
    assert old in text
    err = _reason(embed.embed(png, text.replace(old, new, 1)), [ring.public_key])
    assert err.reason == Reason.MALFORMED_RECORD and "duplicate" in str(err)


def test_unsigned_envelope_fields_are_malformed(ring):
    png, _, text = _signed_png(ring)
    env = json.loads(text)
    for extra in ({"algorithm": "none"}, {"public_key": "AAAA"}, {"note": "hi"}):
        err = _reason(embed.embed(png, json.dumps({**env, **extra})), [ring.public_key])
        assert err.reason == Reason.MALFORMED_RECORD and "unknown field" in str(err)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("where", ["record", "envelope", "output"])
def test_nan_and_infinity_are_malformed(ring, value, where):
    png, _, text = _signed_png(ring)
    env = json.loads(text)
    if where == "record":
        env["record"]["generation_seconds"] = "@@"
    elif where == "envelope":
        env["output_index"] = "@@"
    else:
        env["record"]["outputs"][0]["x"] = "@@"
    forged = json.dumps(env).replace('"@@"', value)
    err = _reason(embed.embed(png, forged), [ring.public_key])
    assert err.reason == Reason.MALFORMED_RECORD


@pytest.mark.parametrize("signature", [None, "", "AAAA", "!!", 64 * "A" + "=="])
def test_missing_or_truncated_signature_is_malformed(ring, signature):
    png, _, text = _signed_png(ring)
    env = json.loads(text)
    if signature is None:
        del env["signature"]
    else:
        env["signature"] = signature
    err = _reason(embed.embed(png, json.dumps(env)), [ring.public_key])
    assert err.reason == Reason.MALFORMED_RECORD and "signature" in str(err)


def test_truncated_valid_signature_is_malformed(ring):
    png, _, text = _signed_png(ring)
    env = json.loads(text)
    env["signature"] = base64.b64encode(base64.b64decode(env["signature"])[:63]).decode()
    err = _reason(embed.embed(png, json.dumps(env)), [ring.public_key])
    assert err.reason == Reason.MALFORMED_RECORD


def test_signature_over_another_canonical_form_is_bad(ring):
    png, image = _png()
    record = _record(ring, png, image)
    for other_form in (
        json.dumps(record).encode(),
        json.dumps(record, sort_keys=True).encode(),
        json.dumps(record, sort_keys=True, separators=(",", ":")).encode()[:-1],
    ):
        assert other_form != canonical_json(record)
        env = {"record": record, "signature": base64.b64encode(ring.sign(other_form)).decode()}
        err = _reason(embed.embed(png, json.dumps(env)), [ring.public_key])
        assert err.reason == Reason.BAD_SIGNATURE


def test_key_order_and_escapes_do_not_matter(ring):
    """The signature covers the RFC 8785 form: reordered keys or escaped characters are the
    same record (any JCS implementation recomputes the same bytes)."""
    png, _, text = _signed_png(ring)
    env = json.loads(text)
    reordered = {
        "signature": env["signature"],
        "record": dict(reversed(list(env["record"].items()))),
        "output_index": 0,
    }
    assert verify_bytes(embed.embed(png, json.dumps(reordered)), trusted=[ring.public_key])
    escaped = text.replace('"record_id"', '"\\u0072ecord_id"')
    assert verify_bytes(embed.embed(png, escaped), trusted=[ring.public_key])


def test_unicode_normalization_is_not_equivalence(ring):
    """NFC and NFD spellings are different records: no normalization before verifying."""
    png, image = _png()
    nfc = unicodedata.normalize("NFC", "caf\u00e9")
    record = _record(ring, png, image, generator={"model_id": nfc})
    text = SignedRecord.sign(record, ring).to_json(0, indent=None)
    assert verify_bytes(embed.embed(png, text), trusted=[ring.public_key])
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    forged = text.replace(nfc, nfd)
    assert forged != text
    assert _reason(embed.embed(png, forged), [ring.public_key]).reason == Reason.BAD_SIGNATURE


def test_a_public_key_carried_by_the_record_is_never_trusted(ring, attacker):
    """The attacker signs with their key and names it in the record: only the user's trusted
    keys count, and every message says which key was checked."""
    png, image = _png()
    record = _record(attacker, png, image)
    record["signer"] = {
        "algorithm": "Ed25519",
        "key_id": attacker.key_id,
        "public_key": base64.b64encode(attacker.public_key.raw()).decode(),
    }
    text = SignedRecord.sign(record, attacker).to_json(0)
    err = _reason(embed.embed(png, text), [ring.public_key])
    assert err.reason == Reason.UNKNOWN_KEY and attacker.key_id in str(err)
    record["signer"] = {
        "algorithm": "Ed25519",
        "key_id": ring.key_id,
        "public_key": base64.b64encode(attacker.public_key.raw()).decode(),
    }
    env = {
        "record": record,
        "signature": base64.b64encode(attacker.sign(canonical_json(record))).decode(),
    }
    err = _reason(embed.embed(png, json.dumps(env)), [ring.public_key])
    assert err.reason == Reason.BAD_SIGNATURE and ring.key_id in str(err)


@pytest.mark.parametrize(
    "signer",
    [
        {"algorithm": "none", "key_id": "K"},
        {"algorithm": "ed25519", "key_id": "K"},
        {"algorithm": "HS256", "key_id": "K"},
        {"key_id": "K"},
        "Ed25519",
    ],
)
def test_algorithm_downgrade_is_malformed(ring, signer):
    png, _, text = _signed_png(ring)
    env = json.loads(text)
    env["record"]["signer"] = (
        {**signer, "key_id": ring.key_id} if isinstance(signer, dict) else signer
    )
    err = _reason(embed.embed(png, json.dumps(env)), [ring.public_key])
    assert err.reason == Reason.MALFORMED_RECORD


def test_crafted_key_id_cannot_forge_a_line_of_cli_output(capsys, ring, tmp_path):
    """The record's key id is quoted in the reason: a newline in it must not print a second,
    forged 'valid' line."""
    png, _, text = _signed_png(ring)
    env = json.loads(text)
    env["record"]["signer"]["key_id"] = "x\nfake.png: valid (record r, key k, embedded)"
    err = _reason(embed.embed(png, json.dumps(env)), [ring.public_key])
    assert err.reason == Reason.MALFORMED_RECORD
    bad = tmp_path / "bad.png"
    bad.write_bytes(embed.embed(png, json.dumps(env)))
    pem = tmp_path / "me.pem"
    pem.write_bytes(ring.public_key.to_pem())
    code, out, _ = _run(capsys, "verify", str(bad), "--public-key", str(pem))
    assert code == 1 and len(out.strip().splitlines()) == 1 and "valid (" not in out


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"version": True},
        {"version": "1"},
        {"format": "c2pa"},
        {"generator": "tiny"},
        {"record_id": 7},
        {"created": None},
        {"stages": {}},
    ],
)
def test_fields_of_the_wrong_type_are_malformed_even_when_signed(ring, change):
    """Even a trusted signer's record must have the shape the CLI reads (never a crash)."""
    _, data, _ = _signed_png(ring, **change)
    assert _reason(data, [ring.public_key]).reason == Reason.MALFORMED_RECORD


def test_embedded_record_and_sidecar_must_agree(ring, attacker, tmp_path):
    _, data, text = _signed_png(ring)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    keys = [ring.public_key]
    sidecar_path(path).write_text(json.dumps(json.loads(text), indent=2))  # same, reformatted
    assert verify_file(path, trusted=keys).source == "embedded"
    _, _, other = _signed_png(ring, record_id="rec-2")
    for sidecar in (other, "not json", "\0", _signed_png(attacker)[2]):
        sidecar_path(path).write_text(sidecar)
        with pytest.raises(VerificationError) as err:
            verify_file(path, trusted=keys)
        assert err.value.reason == Reason.MALFORMED_RECORD and "sidecar" in str(err.value)
    explicit = tmp_path / "explicit.json"
    explicit.write_text(other)
    sidecar_path(path).unlink()
    with pytest.raises(VerificationError, match="sidecar"):
        verify_file(path, trusted=keys, sidecar=explicit)


def test_cli_verify_reports_tampering_in_one_line(capsys, ring, tmp_path):
    png, data, text = _signed_png(ring)
    pem = tmp_path / "me.pem"
    pem.write_bytes(ring.public_key.to_pem())
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(data)
    bad.write_bytes(
        embed.embed(
            png, text.replace('"record_id": "rec-1"', '"record_id": "x", "record_id": "rec-1"')
        )
    )
    code, out, _ = _run(capsys, "verify", str(good), "--public-key", str(pem), "--json")
    assert code == 0 and json.loads(out)["key_id"] == ring.key_id
    code, out, _ = _run(capsys, "verify", str(bad), "--public-key", str(pem), "--json")
    result = json.loads(out)
    assert code == 1 and result["valid"] is False and result["reason"] == "malformed_record"
    code, out, _ = _run(capsys, "verify", str(bad), "--public-key", str(pem))
    assert code == 1 and len(out.strip().splitlines()) == 1 and "INVALID" in out


def test_huge_files_and_records_are_refused_before_reading(ring, tmp_path, monkeypatch):
    from trustgain.provenance import verify as verify_module

    big = tmp_path / "big.png"
    with big.open("wb") as fh:
        fh.write(embed.PNG_SIGNATURE)
        fh.truncate(verify_module.MAX_FILE_BYTES + 1)  # sparse
    with pytest.raises(InputError, match="too large"):
        verify_file(big, trusted=[ring.public_key])
    _, data, _ = _signed_png(ring)
    path = tmp_path / "a.png"
    path.write_bytes(embed.strip(data))
    with sidecar_path(path).open("wb") as fh:
        fh.truncate(verify_module.MAX_RECORD_BYTES + 1)
    with pytest.raises(VerificationError, match="too large"):
        verify_file(path, trusted=[ring.public_key])
    with pytest.raises(VerificationError, match="too large"):
        SignedRecord.from_envelope(" " * (verify_module.MAX_RECORD_BYTES + 1))


# -- 4 and 5. keyed digest, sealed seed ---------------------------------------------------


def test_request_matches_is_constant_time_and_never_raises(ring, monkeypatch):
    import hmac

    png, image = _png()
    record = _record(ring, png, image)
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert request_matches(record, {"prompt": "a"}, ring)
    assert calls
    for stored in ("é" * 64, "\ud800", 7, None, b"x"):
        assert (
            request_matches({**record, "request_hmac_sha256": stored}, {"prompt": "a"}, ring)
            is False
        )


def test_sealed_seed_needs_the_key_and_the_record_id(ring, attacker):
    png, image = _png()
    record = _record(ring, png, image)
    assert record_seed(record, ring) == 7
    assert record_seed(record, attacker) is None
    assert record_seed({**record, "record_id": "rec-2"}, ring) is None  # bound to the id
    # no plain seed anywhere: neither a field nor the (padded) plaintext inside the sealed bytes
    assert "seed" not in record
    assert b"7".rjust(20, b"0") not in base64.b64decode(record["seed_sealed"])
    for bad in ("AAAA", "", "!!!", base64.b64encode(b"\0" * 40).decode(), 5):
        assert record_seed({**record, "seed_sealed": bad}, ring) is None


def test_sealed_seed_nonce_is_fresh_and_length_hides_the_seed(ring):
    sealed = [seal_seed(s, "rec-1", ring) for s in (7, 7, 42, 123456, 2**53 - 1)]
    assert len(set(sealed)) == len(sealed)  # same seed and id: different nonce, ciphertext
    nonces = {base64.b64decode(s)[:12] for s in sealed}
    assert len(nonces) == len(sealed)
    assert len({len(s) for s in sealed}) == 1  # a short seed is not told by a short field
    for seed in (0, 7, 2**53 - 1):
        assert (
            record_seed({"record_id": "r", "seed_sealed": seal_seed(seed, "r", ring)}, ring) == seed
        )


def test_sealed_seed_from_before_padding_still_opens(ring):
    """Records sealed before the fixed-width encoding (plain decimal) still open."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = ring.derive("provenance", "seed").material
    nonce = os.urandom(12)
    old = base64.b64encode(nonce + AESGCM(key).encrypt(nonce, b"42", b"r")).decode()
    assert record_seed({"record_id": "r", "seed_sealed": old}, ring) == 42


def test_records_name_a_local_model_folder_without_this_machines_path(tmp_path, sd_pipe):
    from trustgain.generators import DiffusersGenerator

    folder = tmp_path / "home" / "alice" / "my-sd"
    folder.mkdir(parents=True)
    sd_pipe.register_to_config(_name_or_path=str(folder))
    try:
        assert DiffusersGenerator(sd_pipe).model_id == "my-sd"
        assert DiffusersGenerator(sd_pipe, model_id="team/sd").model_id == "team/sd"
    finally:
        sd_pipe.register_to_config(_name_or_path="")


def test_generate_records_an_absolute_model_folder_by_its_name(tmp_path, sd_pipe, capsys):
    from trustgain.cli.main import main

    folder = tmp_path / "home" / "alice" / "my-sd"
    sd_pipe.save_pretrained(folder)
    assert main(["keys", "create"]) == 0
    out = tmp_path / "x.png"
    assert main(["generate", "a seven", "--model", str(folder), "-o", str(out), "--steps", "2",
                 "--height", "16", "--width", "16"]) == 0
    record = json.loads((tmp_path / "x.png.trustgain.json").read_text())
    text = json.dumps(record)
    assert "alice" not in text and record["record"]["generator"]["model_id"] == "my-sd"
