"""C2PA Content Credentials: certificates, signing, verification that fails closed, CLI."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

from trustgain import KeyRing, Reason, VerificationError, wrap
from trustgain.artifact import encode_outputs
from trustgain.cli.main import main
from trustgain.errors import ConfigError, InputError, KeyFileError
from trustgain.provenance import credentials as cr
from trustgain.provenance import embed, verify_bytes
from trustgain.provenance.record import SignedRecord, build_record
from trustgain.types import StageRecord

#: a float that c2pa-rs does not write back digit for digit through CBOR
AWKWARD = 1.0559422910438783e-25


def _signed_file(ring: KeyRing, fmt: str = "png", payload: str | None = "0badc0de") -> bytes:
    image = Image.new("RGB", (24, 16), (200, 30, 60))
    image.putpixel((3, 3), (1, 2, 3))
    files, entries = encode_outputs([image], fmt, 95)
    stages = [] if payload is None else [StageRecord(
        "watermark.pixel", "1", "PROTECT", {"payload": payload, "p_value": AWKWARD}, True, None,
        "a" * 64, "b" * 64, 0.01)]
    record = build_record(record_id=uuid.uuid4().hex, created=dt.datetime.now(dt.timezone.utc),
                          generator={"kind": "diffusers", "model_id": "tiny-sd"},
                          request_hmac_sha256="0" * 64, stages=stages, outputs=entries,
                          signer_key_id=ring.key_id)
    return embed.embed(files[0], SignedRecord.sign(record, ring).to_json(0))


@pytest.fixture(scope="module")
def certs(keyring):
    return cr.issue_certificate(keyring)


@pytest.fixture(scope="module", params=["png", "jpeg"])
def signed(request, keyring, certs):
    return cr.sign_credentials(_signed_file(keyring, request.param), keyring, certs.chain,
                               training="notAllowed")


def _reason(data: bytes, keys, anchors=None) -> Reason:
    with pytest.raises(VerificationError) as err:
        cr.verify_credentials(data, trusted=keys, trust_anchors=anchors)
    return err.value.reason


def test_certificate_names_the_keyring_key(keyring, certs):
    leaf, ca = x509.load_pem_x509_certificates(certs.chain)
    assert leaf.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw) == keyring.public_key.raw()
    assert leaf.issuer == ca.subject and x509.load_pem_x509_certificate(certs.anchor) == ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cr.check_chain(certs.chain, keyring)[0] == leaf
    with pytest.raises(ConfigError, match="days"):
        cr.issue_certificate(keyring, days=0)


def test_certificate_request_is_signed_by_the_keyring_key(keyring):
    csr = x509.load_pem_x509_csr(cr.certificate_request(keyring, common_name="Studio",
                                                        organization="Example"))
    assert csr.is_signature_valid
    assert csr.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw) == keyring.public_key.raw()
    assert csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == "Studio"


def test_round_trip_valid_then_trusted(signed, keyring, certs):
    check = cr.verify_credentials(signed, trusted=[keyring.public_key])
    assert check.credentials.state == "Valid" and not check.trusted_signer
    check = cr.verify_credentials(signed, trusted=[keyring.public_key],
                                  trust_anchors=certs.anchor)
    found = check.credentials
    assert found.state == "Trusted" and check.trusted_signer
    assert found.actions == ("c2pa.created", "c2pa.watermarked")
    assert found.digital_source_type == cr.AI_SOURCE
    assert set(found.training) == set(cr.TRAINING_USES)
    assert set(found.training.values()) == {"notAllowed"}
    assert check.verified.record["stages"][0]["params"]["p_value"] == AWKWARD
    # the trustgain record still verifies by itself: same pixels, C2PA bytes added
    plain = verify_bytes(signed, trusted=[keyring.public_key])
    assert plain.binding == "pixels" and plain.c2pa


def test_signing_again_needs_replace(signed, keyring, certs):
    with pytest.raises(InputError, match="already carries Content Credentials"):
        cr.sign_credentials(signed, keyring, certs.chain)
    again = cr.sign_credentials(signed, keyring, certs.chain, training="allowed", replace=True)
    found = cr.verify_credentials(again, trusted=[keyring.public_key]).credentials
    assert set(found.training.values()) == {"allowed"}


def test_other_trust_anchor_is_untrusted(signed, keyring, other_keyring):
    other = cr.issue_certificate(other_keyring)
    assert _reason(signed, [keyring.public_key], other.anchor) == Reason.UNTRUSTED_SIGNER


def test_record_key_must_be_trusted(signed, other_keyring):
    assert _reason(signed, [other_keyring.public_key]) == Reason.UNKNOWN_KEY


@pytest.mark.parametrize("where", ["pixels", "record", "manifest"])
def test_tampering_fails_closed(signed, keyring, where):
    data = bytearray(signed)
    if where == "pixels":
        stripped = embed.strip(signed)
        at = signed.index(stripped[-60:-40])  # image data near the end, outside metadata
    elif where == "record":  # the trustgain record embedded in the file
        at = signed.index(b"request_hmac_sha256")
    else:  # the assertion that says the file was watermarked
        at = signed.index(b"c2pa.watermarked")
    data[at] ^= 0x01
    assert _reason(bytes(data), [keyring.public_key]) in (
        Reason.INVALID_CREDENTIALS, Reason.MISSING_RECORD, Reason.CONTENT_HASH_MISMATCH)


def test_no_credentials_or_no_record(keyring, certs):
    plain = _signed_file(keyring)
    assert _reason(plain, [keyring.public_key]) == Reason.MISSING_RECORD
    assert cr.read_credentials(plain) is None
    bare = embed.strip(plain)
    with pytest.raises(VerificationError, match="no trustgain record"):
        cr.sign_credentials(bare, keyring, certs.chain)
    terms = cr.sign_credentials(bare, keyring, certs.chain, training="notAllowed")
    assert _reason(terms, [keyring.public_key]) == Reason.MISSING_RECORD  # required by default
    check = cr.verify_credentials(terms, trusted=[keyring.public_key], require_record=False)
    assert check.verified is None and check.credentials.actions == ("c2pa.opened",)
    assert check.credentials.training["cawg.ai_training"] == "notAllowed"
    tampered = bytearray(terms)
    tampered[terms.index(embed.strip(terms)[-60:-40])] ^= 1
    assert _reason(bytes(tampered), [keyring.public_key]) == Reason.INVALID_CREDENTIALS
    with pytest.raises(InputError, match="PNG or JPEG"):
        cr.sign_credentials(b"GIF89a....", keyring, certs.chain)


def test_a_badly_signed_record_is_never_credentialed(keyring, other_keyring, certs):
    foreign = _signed_file(other_keyring)
    with pytest.raises(VerificationError) as err:
        cr.sign_credentials(foreign, keyring, certs.chain)
    assert err.value.reason == Reason.UNKNOWN_KEY


def test_wrong_or_bad_certificates(keyring, other_keyring, certs):
    other = cr.issue_certificate(other_keyring)
    with pytest.raises(KeyFileError, match="certificate is for key"):
        cr.sign_credentials(_signed_file(keyring), keyring, other.chain)
    with pytest.raises(InputError, match="not PEM"):
        cr.check_chain(b"not a certificate", keyring)
    with pytest.raises(InputError, match="not PEM"):
        cr.read_credentials(_signed_file(keyring), trust_anchors=b"junk")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "old")])
    old = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    expired = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(serialization.load_pem_public_key(keyring.public_key.to_pem()))
               .serial_number(1).not_valid_before(old).not_valid_after(old + dt.timedelta(1))
               .sign(ca_key, hashes.SHA256()))
    with pytest.raises(KeyFileError, match="not now"):
        cr.check_chain(expired.public_bytes(serialization.Encoding.PEM), keyring)
    with pytest.raises(ConfigError, match="training"):
        cr.ContentCredentials(keyring, certs.chain, training="maybe")


def test_no_secret_in_the_file(signed, keyring):
    import base64

    secret = keyring._master  # the master secret must appear in no form
    for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
        assert form not in signed


def test_artifact_save_adds_credentials(sd_pipe, keyring, certs, tmp_path):
    pipe = wrap(sd_pipe, [], keyring=keyring)
    art = pipe("a", seed=1, num_inference_steps=2, height=16, width=16)
    path = art.save(tmp_path / "a.png", credentials=cr.ContentCredentials(keyring, certs.chain))
    check = cr.verify_credentials(path.read_bytes(), trusted=[keyring.public_key],
                                  trust_anchors=certs.anchor)
    assert check.verified.record["record_id"] == art.record.record_id
    assert check.credentials.actions == ("c2pa.created",)  # no watermark stage ran
    sidecar = json.loads((tmp_path / "a.png.trustgain.json").read_text())
    assert sidecar["record"]["record_id"] == art.record.record_id


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_cert_sign_verify(keyring, tmp_path, monkeypatch, capsys):
    ring_path = tmp_path / "ring.json"
    keyring.save(ring_path)
    monkeypatch.setenv("TRUSTGAIN_NO_PROGRESS", "1")
    base = ("--keyring", str(ring_path))
    pem, anchor = str(tmp_path / "s.pem"), str(tmp_path / "s-ca.pem")
    assert _run(capsys, "c2pa", "cert", "-o", pem, *base)[0] == 0
    code, _, err = _run(capsys, "c2pa", "cert", "-o", pem, *base)
    assert code == 1 and "exists" in err
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(_signed_file(keyring))
    (src / "b.jpg").write_bytes(_signed_file(keyring, "jpeg"))
    (src / "c.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    sign = ("c2pa", "sign", str(src), "-o", str(tmp_path / "out"), "--cert", pem, "--json",
            *base)
    code, out, _ = _run(capsys, *sign)
    assert code == 1  # c.png failed, the others were signed
    summary = json.loads(out)
    assert (summary["signed"], summary["failed"]) == (2, 1)
    assert "truncated" in next(f["reason"] for f in summary["files"] if f["status"] == "error")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # inputs untouched
    code, out, _ = _run(capsys, *sign)  # rerun: resumes, nothing signed twice
    assert json.loads(out)["skipped"] == 2
    code, out, _ = _run(capsys, "c2pa", "verify", str(tmp_path / "out"), "--trust-anchors",
                        anchor, "--public-key", str(ring_path), "--json")
    assert code == 0, out
    assert [r["trusted_signer"] and r["ai_generated"] for r in json.loads(out)] == [True, True]
    code, out, _ = _run(capsys, "c2pa", "verify", str(src / "a.png"), "--public-key",
                        str(ring_path))
    assert code == 1 and "no Content Credentials" in out
    code, out, _ = _run(capsys, "c2pa", "sign", str(src / "a.png"), "-o", str(src / "a.png"),
                        "--cert", pem, *base)
    assert code == 1 and "overwrite the input" in out
    assert (src / "a.png").read_bytes() == before["a.png"]
    code, _, err = _run(capsys, "c2pa", "sign", str(src / "a.png"), "-o", str(tmp_path / "x"),
                        "--cert", str(tmp_path / "nope.pem"), *base)
    assert code == 1 and "cannot read certificate chain" in err
    assert _run(capsys, "c2pa", "cert", "--csr", "-o", str(tmp_path / "r.csr"), *base)[0] == 0
    assert x509.load_pem_x509_csr((tmp_path / "r.csr").read_bytes()).is_signature_valid
    code, out, _ = _run(capsys, "verify", str(tmp_path / "out" / "a.png"), "--public-key",
                        str(ring_path))
    assert code == 0 and "C2PA Content Credentials" in out


def test_read_credentials_reports_unreadable_store(signed, keyring):
    data = bytearray(signed)
    at = signed.index(b"c2pa.signature")
    data[at:at + 4] = b"XXXX"
    with pytest.raises(VerificationError) as err:
        cr.verify_credentials(bytes(data), trusted=[keyring.public_key])
    assert err.value.reason in (Reason.INVALID_CREDENTIALS, Reason.MISSING_RECORD)
