"""C2PA Content Credentials for signed outputs: the industry's provenance format, beside ours.

A trustgain record is checked by trustgain; a C2PA manifest (Content Credentials) is checked by
any C2PA reader: Adobe's Content Authenticity tools, camera and platform pipelines, the c2pa
SDKs. :func:`sign_credentials` adds one to a PNG or JPEG that carries a trustgain record:

- ``c2pa.actions.v2``: ``c2pa.created`` with IPTC digital source type
  ``trainedAlgorithmicMedia`` (the C2PA way of saying "made by a generative model") and the
  generator's model id as software agent; ``c2pa.watermarked`` when ``watermark.pixel`` ran,
  with a ``c2pa.soft-binding`` assertion holding the mark's payload (the record id prefix a key
  holder reads back after the metadata is stripped);
- ``org.trustgain.record``: the signed trustgain record itself (public by design: keyed request
  digest, sealed seed, no secret) as its exact envelope text, so one file carries both and a
  C2PA reader shows it;
- optionally ``cawg.training-mining`` (Creator Assertions Working Group): whether generative
  training, training, inference and data mining on the file are allowed.

The claim is signed with the keyring's Ed25519 key through a callback (the key never leaves
the process) and an X.509 certificate chain for that key. A public C2PA reader trusts the chain
only when it ends at a CA on its trust list: :func:`certificate_request` makes the CSR to send
to one; :func:`issue_certificate` makes a local one-shot CA for tests and private deployments
(verify with ``trust_anchors`` = its certificate).

The C2PA container work (JUMBF boxes in a PNG ``caBX`` chunk or JPEG APP11 segments, the hard
binding hash, COSE signatures, validation) is done by the C2PA reference implementation,
``c2pa-python`` (c2pa-rs). Only the mapping from our record to assertions is written here.

Verification (:func:`verify_credentials`) fails closed: a manifest that c2pa-rs finds invalid,
a signer outside ``trust_anchors`` when they are given, a missing or badly signed trustgain
record, or pixels that do not match it, each raise :class:`VerificationError`.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustgain.errors import ConfigError, InputError, KeyFileError, Reason, VerificationError
from trustgain.keys import KeyRing, PublicKey
from trustgain.provenance import embed
from trustgain.provenance.record import SignedRecord
from trustgain.provenance.verify import Verified, verify_bytes

RECORD_LABEL = "org.trustgain.record"
SOFT_BINDING_ALG = "org.trustgain.watermark.pixel.1"
AI_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
#: ``cawg.training-mining`` entries, each "allowed", "notAllowed" or "constrained".
TRAINING_USES = ("cawg.ai_generative_training", "cawg.ai_inference", "cawg.ai_training",
                 "cawg.data_mining")
TRAINING_CHOICES = ("allowed", "notAllowed", "constrained")


def _c2pa() -> Any:
    try:
        import c2pa
    except ImportError:
        raise ConfigError("Content Credentials need the C2PA SDK",
                          hint='pip install "trustgain[c2pa]" (c2pa-python)') from None
    return c2pa


# -- certificates ----------------------------------------------------------------------------


def _name(common_name: str, organization: str | None) -> x509.Name:
    if not common_name.strip() or (organization is not None and not organization.strip()):
        raise ConfigError("certificate names must not be empty")
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def certificate_request(keyring: KeyRing, *, common_name: str = "trustgain signer",
                        organization: str | None = None) -> bytes:
    """A PEM certificate signing request for the keyring's signing key, for a real CA."""
    return keyring.certificate_request(_name(common_name, organization)).public_bytes(
        serialization.Encoding.PEM)


@dataclass(frozen=True)
class Certificates:
    """``chain``: PEM, the signer's certificate then its CA's (what signing needs);
    ``anchor``: PEM, the CA certificate a verifier trusts (``trust_anchors``)."""

    chain: bytes
    anchor: bytes


def issue_certificate(keyring: KeyRing, *, common_name: str = "trustgain signer",
                      organization: str | None = "trustgain local CA", days: int = 365
                      ) -> Certificates:
    """A certificate for the keyring's signing key from a one-shot local CA.

    The CA's key is made here, signs the two certificates and is dropped, so nobody can issue
    another certificate under this CA. C2PA readers accept the chain as valid; they trust it
    only when given ``anchor``. For public trust, send :func:`certificate_request` to a CA on
    the C2PA trust list instead.
    """
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise ConfigError(f"days must be an integer from 1 to 3650, not {days!r}")
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{common_name} CA", organization)
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, encipher_only=False, decipher_only=False)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True,
                                       crl_sign=True, **usage), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    public = serialization.load_pem_public_key(keyring.public_key.to_pem())
    leaf = (x509.CertificateBuilder().subject_name(_name(common_name, organization))
            .issuer_name(ca_name).public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, **usage), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return Certificates(leaf.public_bytes(pem) + ca.public_bytes(pem), ca.public_bytes(pem))


def check_chain(chain: bytes, keyring: KeyRing) -> list[x509.Certificate]:
    """Parse a PEM chain and check that its first certificate is for ``keyring``'s key, in
    date and allowed to sign; a one-line error says what is wrong."""
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise InputError("the certificate chain is not PEM certificates") from None
    leaf = certs[0]
    key = leaf.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("the certificate is not for an Ed25519 key (trustgain signs with "
                           "the keyring's Ed25519 key)")
    if PublicKey(key) != keyring.public_key:
        raise KeyFileError(f"the certificate is for key {PublicKey(key).key_id}, the keyring's "
                           f"is {keyring.key_id}")
    now = dt.datetime.now(dt.timezone.utc)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise KeyFileError(f"the certificate is valid from {leaf.not_valid_before_utc:%Y-%m-%d} "
                           f"to {leaf.not_valid_after_utc:%Y-%m-%d}, not now")
    try:
        if not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            raise KeyFileError("the certificate's key usage does not allow signatures")
    except x509.ExtensionNotFound:
        pass
    return certs


# -- signing ---------------------------------------------------------------------------------


def manifest_for(signed: SignedRecord, output_index: int | None = None, *,
                 training: str | None = None) -> dict[str, Any]:
    """The C2PA manifest definition (JSON) that describes a trustgain record."""
    from trustgain import __version__

    record = signed.record
    agent = {"name": str(record["generator"].get("model_id") or "unknown model")}
    actions: list[dict[str, Any]] = [{"action": "c2pa.created", "digitalSourceType": AI_SOURCE,
                                      "softwareAgent": agent}]
    assertions: list[dict[str, Any]] = []
    mark = next((s for s in record["stages"] if isinstance(s, Mapping)
                 and s.get("name") == "watermark.pixel" and s.get("applied")), None)
    payload = (mark or {}).get("params", {}).get("payload")
    if isinstance(payload, str):
        actions.append({"action": "c2pa.watermarked",
                        "softwareAgent": {"name": "trustgain watermark.pixel"}})
        try:
            value = base64.b64encode(bytes.fromhex(payload)).decode("ascii")
        except ValueError:
            raise VerificationError(Reason.MALFORMED_RECORD,
                                    "the watermark payload in the record is not hex") from None
        assertions.append({"label": "c2pa.soft-binding", "data": {
            "alg": SOFT_BINDING_ALG, "blocks": [{"scope": {}, "value": value}]}})
    assertions.insert(0, {"label": "c2pa.actions.v2", "data": {"actions": actions}})
    # as text: a JSON object would pass through CBOR, and c2pa-rs does not write every float
    # back digit for digit (1.0559422910438783e-25 came back ...785e-25), which breaks the
    # signature over the record
    assertions.append({"label": RECORD_LABEL, "data": {
        "format": "trustgain.provenance", "envelope": signed.to_json(output_index)}})
    if training is not None:
        assertions.append(training_assertion(training))
    return {"claim_generator_info": [{"name": "trustgain", "version": __version__}],
            "assertions": assertions}


def training_assertion(training: str) -> dict[str, Any]:
    """The ``cawg.training-mining`` assertion giving every AI use the same ``training`` term."""
    if training not in TRAINING_CHOICES:
        raise ConfigError(f"training must be one of {', '.join(TRAINING_CHOICES)}, "
                          f"not {training!r}")
    return {"label": "cawg.training-mining",
            "data": {"entries": {use: {"use": training} for use in TRAINING_USES}}}


def terms_manifest(training: str) -> dict[str, Any]:
    """The manifest for an image with no trustgain record (a photo, a ``trustgain protect``
    output): the file itself as parent ingredient, opened, and the training-mining terms."""
    from trustgain import __version__

    terms = training_assertion(training)
    return {"claim_generator_info": [{"name": "trustgain", "version": __version__}],
            "assertions": [
                {"label": "c2pa.actions.v2", "data": {"actions": [
                    {"action": "c2pa.opened", "parameters": {"ingredientIds": ["parent"]}}]}},
                terms]}


def sign_credentials(data: bytes, keyring: KeyRing, chain: bytes, *,
                     trusted: Iterable[PublicKey] | None = None,
                     training: str | None = None, thumbnail: bool = False,
                     replace: bool = False, title: str = "image") -> bytes:
    """``data`` (a PNG or JPEG) with C2PA Content Credentials added.

    A file with a trustgain record gets :func:`manifest_for`; the record is verified first
    (``trusted``: default the keyring's own key), so credentials are never put on a file whose
    record does not check out. A file without one (a photo, a protected image) can only be
    given its AI-use terms (``training``, :func:`terms_manifest`; ``title`` names it as the
    ingredient). ``thumbnail``: also embed the reader's preview thumbnail (off: it can be
    larger than a small image). ``replace``: a file that already carries credentials is
    refused unless set, since new ones replace the old manifest store and its history.
    """
    c2pa = _c2pa()
    mime = embed.media_type(data)
    check_chain(chain, keyring)
    if embed.carries_c2pa(data) and not replace:
        raise InputError("the file already carries Content Credentials; signing again "
                         "replaces them and their history", hint="pass replace=True (CLI: "
                         "--replace) to do so")
    text = embed.extract(data)
    if text is None and training is None:
        raise VerificationError(Reason.MISSING_RECORD, "the file carries no trustgain record, "
                                "so the credentials would state nothing: sign the output of "
                                "`trustgain generate`, or give AI-use terms (training)")
    if text is None:
        manifest = terms_manifest(str(training))
    else:
        verified = verify_bytes(data, trusted=list(trusted) if trusted is not None
                                else [keyring.public_key])
        signed, index = SignedRecord.from_envelope(text)
        manifest = manifest_for(signed, index if index is not None else verified.output_index,
                                training=training)
    settings = {"builder": {"thumbnail": {"enabled": bool(thumbnail)}}}
    out = io.BytesIO()
    try:
        signer = c2pa.Signer.from_callback(keyring.sign, c2pa.C2paSigningAlg.ED25519,
                                           chain.decode("ascii"), None)
        with c2pa.Builder.from_json(json.dumps(manifest),
                                    context=c2pa.Context.from_dict(settings)) as builder:
            if text is None:
                builder.add_ingredient({"title": title, "relationship": "parentOf",
                                        "label": "parent"}, mime, io.BytesIO(data))
            builder.sign(signer, mime, io.BytesIO(data), out)
    except c2pa.C2paError as exc:
        raise InputError(f"C2PA signing failed: {_first_line(exc)}") from None
    return out.getvalue()


@dataclass(frozen=True)
class ContentCredentials:
    """How to add Content Credentials to files as they are saved
    (``Artifact.save(path, credentials=...)``): the keyring whose key signs, the certificate
    chain for that key (checked here, once), and the optional training-mining choice."""

    keyring: KeyRing
    chain: bytes = field(repr=False)
    training: str | None = None
    thumbnail: bool = False

    def __post_init__(self) -> None:
        check_chain(self.chain, self.keyring)
        if self.training is not None:
            training_assertion(self.training)  # a bad term fails here, not at the first save

    def sign(self, data: bytes) -> bytes:
        return sign_credentials(data, self.keyring, self.chain, training=self.training,
                                thumbnail=self.thumbnail)


# -- reading and verifying -------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What a C2PA reader finds in a file.

    ``state``: c2pa-rs's validation state ("Valid", "Trusted" or "Invalid"); ``failures``:
    its failure codes; ``signer``: the signing certificate's subject; ``record``: the
    ``org.trustgain.record`` assertion as JSON text, if any; ``actions``: action names;
    ``training``: the ``cawg.training-mining`` entries, if any.
    """

    state: str
    failures: tuple[str, ...]
    signer: str | None
    record: str | None
    actions: tuple[str, ...]
    training: Mapping[str, str] = field(default_factory=dict)
    digital_source_type: str | None = None


def read_credentials(data: bytes, *, trust_anchors: bytes | None = None) -> Credentials | None:
    """The file's Content Credentials as c2pa-rs validates them; None when it carries none.

    With ``trust_anchors`` (PEM CA certificates), the signer's chain is checked against them
    and an untrusted signer is a failure; without, the state is at best "Valid".
    """
    c2pa = _c2pa()
    mime = embed.media_type(data)
    settings: dict[str, Any] = {"verify": {"verify_trust": trust_anchors is not None}}
    if trust_anchors is not None:
        try:
            x509.load_pem_x509_certificates(trust_anchors)
        except ValueError:
            raise InputError("the trust anchors are not PEM certificates") from None
        settings["trust"] = {"trust_anchors": trust_anchors.decode("ascii")}
    try:
        with c2pa.Reader(mime, io.BytesIO(data),
                         context=c2pa.Context.from_dict(settings)) as reader:
            state = reader.get_validation_state() or "Invalid"
            results = reader.get_validation_results() or {}
            try:
                manifest = reader.get_active_manifest() or {}
            except KeyError:  # c2pa-python's way of saying the store names no active manifest
                state, manifest = "Invalid", {}
    except c2pa.C2paError as exc:
        if type(exc).__name__.endswith("ManifestNotFound"):
            return None
        raise VerificationError(Reason.INVALID_CREDENTIALS,
                                f"unreadable Content Credentials: {_first_line(exc)}") from None
    active = results.get("activeManifest") or {}
    failures = tuple(str(f.get("code")) for f in active.get("failure", []) or [])
    record, actions, training, source = None, [], {}, None
    for assertion in manifest.get("assertions", []) or []:
        label, value = assertion.get("label"), assertion.get("data")
        if label == RECORD_LABEL and isinstance(value, Mapping):
            record = value.get("envelope") if isinstance(value.get("envelope"), str) else None
        elif label in ("c2pa.actions", "c2pa.actions.v2") and isinstance(value, Mapping):
            for action in value.get("actions", []) or []:
                actions.append(str(action.get("action")))
                if action.get("action") == "c2pa.created":
                    source = action.get("digitalSourceType")
        elif label == "cawg.training-mining" and isinstance(value, Mapping):
            training = {k: str(v.get("use")) for k, v in (value.get("entries") or {}).items()
                        if isinstance(v, Mapping)}
    info = manifest.get("signature_info") or {}
    signer = info.get("common_name") or info.get("issuer")
    return Credentials(state, failures, signer, record, tuple(actions), training, source)


@dataclass(frozen=True)
class CredentialsCheck:
    """A file whose Content Credentials verify, and the trustgain record inside them (None
    only when ``require_record=False`` and there is none)."""

    credentials: Credentials
    verified: Verified | None
    trusted_signer: bool


def verify_credentials(data: bytes, *, trusted: Iterable[PublicKey],
                       trust_anchors: bytes | None = None,
                       require_record: bool = True) -> CredentialsCheck:
    """Check the file's C2PA manifest and the trustgain record it carries; fail closed.

    ``require_record=False`` accepts valid credentials that carry no trustgain record (AI-use
    terms on a photo); ``verified`` is then None. A record that is there is always checked.
    """
    found = read_credentials(data, trust_anchors=trust_anchors)
    if found is None:
        raise VerificationError(Reason.MISSING_RECORD, "no Content Credentials in the file")
    if found.state not in ("Valid", "Trusted"):
        untrusted = [f for f in found.failures if f.startswith("signingCredential.")]
        reason = Reason.UNTRUSTED_SIGNER if untrusted and len(untrusted) == len(
            found.failures) else Reason.INVALID_CREDENTIALS
        raise VerificationError(reason, "Content Credentials do not verify ("
                                f"{', '.join(found.failures) or found.state})")
    if trust_anchors is not None and found.state != "Trusted":
        raise VerificationError(Reason.UNTRUSTED_SIGNER,
                                "the C2PA signer does not chain to the trust anchors")
    if found.record is None and require_record:
        raise VerificationError(Reason.MISSING_RECORD,
                                f"the Content Credentials carry no {RECORD_LABEL} assertion")
    verified = None if found.record is None else verify_bytes(data, trusted=trusted,
                                                              sidecar_text=found.record)
    return CredentialsCheck(found, verified, found.state == "Trusted")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
