"""Keys: one master secret, HKDF sub-keys per stage, and an Ed25519 signing key.

A :class:`KeyRing` holds the two secrets. Stages never see the master secret: each gets a
:class:`DerivedKey` for its own name and purpose (HKDF-SHA256), so a leaked stage key
exposes nothing else. Records carry key ids, never keys.

Key files are JSON, written with mode 0600 (the temporary file is 0600 before the secret is
written into it, whatever the umask; a symlink at the path is replaced, never followed); with
a passphrase the secrets are sealed with AES-256-GCM under a scrypt-derived key, the file's
header bound as associated data. Reading is strict: duplicated keys, unknown versions or
encryptions, out-of-range scrypt parameters are each a one-line :class:`KeyFileError`.

Loading a key file that others may read (unencrypted) or write is allowed, as it always was;
:func:`permission_problem` names the risk and the CLI prints it as a warning on every use.

Not protected against: an attacker who can read the process memory, or who learns the
passphrase of an encrypted file (or reads an unencrypted one).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from trustgain.digest import StrictJSONError, canonical_json, loads_strict
from trustgain.errors import ConfigError, KeyFileError, OutputExistsError
from trustgain.fileio import trustgain_home, write_atomic

FORMAT = "trustgain.keyring"
FORMAT_VERSION = 1
_HKDF_SALT = b"trustgain/keyring/v1"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_SCRYPT_MAX_N = 2**20  # refuse files that would make loading take minutes or GBs:
_SCRYPT_MAX_MEMORY = 128 * 8 * 2**20  # 1 GiB (n=2**20, r=8), scrypt's 128*r*n bytes
_SCRYPT_MAX_WORK = 8 * 2**20  # n*r*p: 32 times the default, a few seconds


def default_keyring_path() -> Path:
    return trustgain_home() / "keyring.json"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, path: Path) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (TypeError, ValueError):
        raise KeyFileError(f"{path} is corrupt: field '{what}' is not base64") from None


def _public_key(text: Any, path: Path) -> Ed25519PublicKey:
    raw = _unb64(text, "public_key", path)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:  # wrong length
        raise KeyFileError(
            f"{path} is corrupt: field 'public_key' is not an Ed25519 public key"
        ) from None


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(b"trustgain-key-id\0" + raw).hexdigest()[:32]


class DerivedKey:
    """A stage's own secret. ``material`` is the raw key; ``key_id`` is safe to record."""

    __slots__ = ("_material", "key_id", "purpose")

    def __init__(self, material: bytes, purpose: str) -> None:
        self._material = material
        self.purpose = purpose
        self.key_id = (
            "hkdf:" + hashlib.sha256(b"trustgain-derived-id\0" + material).hexdigest()[:32]
        )

    @property
    def material(self) -> bytes:
        return self._material

    def __repr__(self) -> str:
        return f"DerivedKey(purpose={self.purpose!r}, key_id={self.key_id!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("DerivedKey cannot be pickled")


class PublicKey:
    """An Ed25519 verification key with its id."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self.key_id = _key_id(key)

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "public key") -> PublicKey:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyFileError(f"{source} is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{source} is not an Ed25519 key")
        return cls(key)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKey:
        """Load a PEM public key, or the public half of a keyring file (no passphrase needed)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
        if data.lstrip().startswith(b"{"):
            header = _read_header(path, data)
            return cls(_public_key(header["public_key"], path))
        return cls.from_pem(data, source=str(path))

    def to_pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def raw(self) -> bytes:
        return self._key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw() == self.raw()

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self.key_id!r})"


class KeyRing:
    """The master secret and the signing key. Build it with :meth:`generate` or :meth:`load`."""

    def __init__(self, *, master_secret: bytes, signing_key: Ed25519PrivateKey) -> None:
        if len(master_secret) != 32:
            raise KeyFileError("master secret must be 32 bytes")
        self._master = master_secret
        self._signing = signing_key
        self.public_key = PublicKey(signing_key.public_key())

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    @classmethod
    def generate(cls) -> KeyRing:
        return cls(master_secret=os.urandom(32), signing_key=Ed25519PrivateKey.generate())

    def derive(self, stage: str, purpose: str = "", *, length: int = 32) -> DerivedKey:
        """The sub-key of ``stage`` for ``purpose``: HKDF-SHA256 of the master secret."""
        info = b"stage:" + stage.encode() + b"\0" + purpose.encode()
        hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT, info=info)
        return DerivedKey(hkdf.derive(self._master), purpose=f"{stage}/{purpose}")

    def sign(self, data: bytes) -> bytes:
        return self._signing.sign(data)

    def certificate_request(self, subject: x509.Name) -> x509.CertificateSigningRequest:
        """A certificate signing request (PKCS #10) for the signing key, signed by it: what a
        certificate authority needs to issue a certificate for this key (the key stays here)."""
        return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(
            self._signing, None)

    def __repr__(self) -> str:
        return f"KeyRing(key_id={self.key_id!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("KeyRing cannot be pickled; save it with a passphrase instead")

    # -- files -------------------------------------------------------------------------

    def save(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        passphrase: str | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the key file (mode 0600) and its public key beside it (``.pub.pem``)."""
        path = Path(path) if path is not None else default_keyring_path()
        seed = self._signing.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        header: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "key_id": self.key_id,
            "public_key": _b64(self.public_key.raw()),
            "encryption": None,
        }
        secret = self._master + seed
        if passphrase == "":  # never silently plaintext because a variable was empty
            raise KeyFileError(
                "empty passphrase", hint="pass passphrase=None to write an unencrypted key file"
            )
        if passphrase:
            salt, nonce = os.urandom(16), os.urandom(12)
            header["encryption"] = {
                "kdf": "scrypt",
                **_SCRYPT,
                "salt": _b64(salt),
                "cipher": "AES-256-GCM",
                "nonce": _b64(nonce),
            }
            kek = _scrypt(passphrase, salt, _SCRYPT)
            secret = AESGCM(kek).encrypt(nonce, secret, canonical_json(header))
        body = json.dumps({**header, "secret": _b64(secret)}, indent=2).encode() + b"\n"
        pem, pub = self.public_key.to_pem(), public_key_path(path)
        if path.exists() and not overwrite and not path.is_dir():
            raise OutputExistsError(path)
        if pub.is_dir():  # both paths checked before either is written
            raise KeyFileError(f"{pub} is a folder; the public key goes there")
        if pub.exists() and not overwrite and pub.read_bytes() != pem:
            raise OutputExistsError(pub)  # someone else's public key: never replaced unasked
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, body, overwrite=overwrite, mode=0o600)
        write_atomic(pub, pem, overwrite=True, mode=0o644)
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, *, passphrase: str | None = None
    ) -> KeyRing:
        """Read a key file; every failure is a one-line :class:`KeyFileError`."""
        path = Path(path) if path is not None else default_keyring_path()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyFileError(
                f"no key file at {path}", hint="create one with `trustgain keys create`"
            ) from None
        except OSError as exc:
            raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
        doc = _read_doc(path, data)
        header = _header(doc)
        secret = _unb64(doc["secret"], "secret", path)
        enc = header["encryption"]
        if enc is not None:
            if not passphrase:
                raise KeyFileError(
                    f"{path} is passphrase-protected",
                    hint="set TRUSTGAIN_PASSPHRASE or pass the passphrase",
                )
            params = _scrypt_params(enc, path)
            try:
                aad = canonical_json(header)
            except ConfigError:  # 1e400 or 2**70 somewhere in it: not a file we wrote
                raise KeyFileError(f"{path} is corrupt: a header value has no JSON form") from None
            kek = _scrypt(passphrase, _unb64(enc.get("salt"), "salt", path), params)
            try:
                secret = AESGCM(kek).decrypt(_unb64(enc.get("nonce"), "nonce", path), secret, aad)
            except (InvalidTag, ValueError):
                raise KeyFileError(
                    f"wrong passphrase for {path}, or the file was modified"
                ) from None
        if len(secret) != 64:
            raise KeyFileError(f"{path} is corrupt: secret has the wrong length")
        ring = cls(
            master_secret=secret[:32], signing_key=Ed25519PrivateKey.from_private_bytes(secret[32:])
        )
        if ring.public_key != PublicKey(_public_key(header["public_key"], path)):
            raise KeyFileError(f"{path} is corrupt: its secret does not match its public key")
        return ring


def public_key_path(keyring_path: str | os.PathLike[str]) -> Path:
    p = Path(keyring_path)
    return p.with_name(p.stem + ".pub.pem")


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    return _read_header(path, data)["encryption"] is not None


def permission_problem(path: str | os.PathLike[str]) -> str | None:
    """What is unsafe about the key file's mode, or None: writable by others (they can swap in
    keys they know, encrypted file or not), or unencrypted and readable by others."""
    path = Path(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o022:
        return (
            f"{path} is writable by others (mode {mode:o}): anyone who can write it can "
            f"swap in keys they know; run: chmod 600 {path}"
        )
    if mode & 0o077 and not is_encrypted(path):
        return (
            f"{path} holds unencrypted keys and is readable by others (mode {mode:o}); "
            f"run: chmod 600 {path}"
        )
    return None


def _read_header(path: Path, data: bytes) -> dict[str, Any]:
    return _header(_read_doc(path, data))


def _header(doc: dict[str, Any]) -> dict[str, Any]:
    """The fields bound as associated data (everything but the secret)."""
    return {k: doc[k] for k in ("format", "version", "key_id", "public_key", "encryption")}


def _read_doc(path: Path, data: bytes) -> dict[str, Any]:
    try:
        doc = loads_strict(data)
    except StrictJSONError as exc:  # json keeps the last duplicate: which one was meant?
        raise KeyFileError(f"{path} is not a trustgain key file: {exc}") from None
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, integers past the digit limit
        raise KeyFileError(f"{path} is truncated or not a trustgain key file") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeyFileError(f"{path} is not a trustgain key file")
    version = doc.get("version")
    if type(version) is not int or version != FORMAT_VERSION:  # not True, not 1.0
        raise KeyFileError(
            f"{path} has key file version {str(version)[:20]!r}; "
            f"this trustgain reads version {FORMAT_VERSION}"
        )
    missing = {"key_id", "public_key", "encryption", "secret"} - doc.keys()
    if missing:
        raise KeyFileError(f"{path} is truncated: missing {', '.join(sorted(missing))}")
    if doc["encryption"] is not None and not isinstance(doc["encryption"], dict):
        raise KeyFileError(f"{path} uses an encryption this trustgain does not know")
    return doc


def _scrypt_params(enc: Any, path: Path) -> dict[str, int]:
    if (
        not isinstance(enc, dict)
        or enc.get("kdf") != "scrypt"
        or enc.get("cipher") != "AES-256-GCM"
    ):
        raise KeyFileError(f"{path} uses an encryption this trustgain does not know")
    params = {k: enc.get(k) for k in ("n", "r", "p")}
    if any(type(v) is not int for v in params.values()):  # not 32768.5, not true
        raise KeyFileError(f"{path} is corrupt: bad scrypt parameters")
    n, r, p = params["n"], params["r"], params["p"]
    if not (
        2 <= n <= _SCRYPT_MAX_N
        and n & (n - 1) == 0
        and 1 <= r <= 32
        and 1 <= p <= 16
        and 128 * r * n <= _SCRYPT_MAX_MEMORY
        and n * r * p <= _SCRYPT_MAX_WORK
    ):
        raise KeyFileError(f"{path} has scrypt parameters out of the accepted range")
    return params


def _scrypt(passphrase: str, salt: bytes, params: dict[str, int]) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=params["n"], r=params["r"], p=params["p"])
    return kdf.derive(_passphrase_bytes(passphrase))


def _passphrase_bytes(passphrase: str) -> bytes:
    """UTF-8; a passphrase that came from non-UTF-8 bytes (environment, terminal) reaches
    Python as lone surrogates, which stand for those very bytes again. Never an exception:
    one that quoted the passphrase would leak it."""
    try:
        return passphrase.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return passphrase.encode("utf-8", "surrogatepass")
