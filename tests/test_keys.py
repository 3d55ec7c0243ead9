from __future__ import annotations

import json
import stat

import pytest

from trustgain import KeyRing, PublicKey
from trustgain.errors import KeyFileError, OutputExistsError
from trustgain.keys import is_encrypted, public_key_path


def _secret_hex(ring: KeyRing) -> list[str]:
    return [ring._master.hex(), ring.derive("x").material.hex()]


def test_save_load_roundtrip_plain_and_encrypted(tmp_path):
    ring = KeyRing.generate()
    plain = ring.save(tmp_path / "plain.json")
    enc = ring.save(tmp_path / "enc.json", passphrase="correct horse")
    for path in (plain, enc):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not is_encrypted(plain) and is_encrypted(enc)
    for loaded in (KeyRing.load(plain), KeyRing.load(enc, passphrase="correct horse")):
        assert loaded.key_id == ring.key_id
        assert loaded.derive("s", "p").material == ring.derive("s", "p").material
    # The encrypted file holds no secret in the clear.
    text = enc.read_text()
    assert all(s not in text for s in _secret_hex(ring))
    assert PublicKey.load(public_key_path(enc)) == ring.public_key
    assert PublicKey.load(enc) == ring.public_key  # public half without the passphrase


def test_subkeys_are_per_stage_and_purpose():
    ring = KeyRing.generate()
    a, b, c = (
        ring.derive("watermark.pixel"),
        ring.derive("protect.rae"),
        ring.derive("watermark.pixel", "sync"),
    )
    assert len({a.material, b.material, c.material}) == 3
    assert a.material == ring.derive("watermark.pixel").material
    assert a.key_id != b.key_id and a.material.hex() not in a.key_id


def test_secrets_never_in_repr_or_pickle():
    import pickle

    ring = KeyRing.generate()
    key = ring.derive("s")
    for text in (repr(ring), str(ring), repr(key), str(key)):
        assert all(s not in text for s in _secret_hex(ring))
        assert key.material.hex() not in text
    with pytest.raises(TypeError):
        pickle.dumps(ring)
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_wrong_passphrase_truncated_foreign_missing(tmp_path):
    ring = KeyRing.generate()
    path = ring.save(tmp_path / "k.json", passphrase="right")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        KeyRing.load(path, passphrase="wrong")
    with pytest.raises(KeyFileError, match="passphrase-protected"):
        KeyRing.load(path)
    truncated = tmp_path / "t.json"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(KeyFileError, match="truncated"):
        KeyRing.load(truncated, passphrase="right")
    foreign = tmp_path / "f.json"
    foreign.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(KeyFileError, match="not a trustgain key file"):
        KeyRing.load(foreign)
    png = tmp_path / "img.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(KeyFileError, match="not a trustgain key file"):
        KeyRing.load(png)
    with pytest.raises(KeyFileError, match="no key file"):
        KeyRing.load(tmp_path / "absent.json")


def test_modified_header_is_refused(tmp_path):
    ring = KeyRing.generate()
    path = ring.save(tmp_path / "k.json", passphrase="pw")
    doc = json.loads(path.read_text())
    doc["key_id"] = "ed25519:" + "0" * 32  # bound as associated data
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match=r"wrong passphrase .* or the file was modified"):
        KeyRing.load(path, passphrase="pw")
    doc["encryption"]["n"] = 2**30  # a foreign file must not make us allocate GBs
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="out of the accepted range"):
        KeyRing.load(path, passphrase="pw")


def test_plain_file_with_swapped_public_key_is_refused(tmp_path):
    a, b = KeyRing.generate(), KeyRing.generate()
    path = a.save(tmp_path / "a.json")
    doc = json.loads(path.read_text())
    doc["public_key"] = json.loads(b.save(tmp_path / "b.json").read_text())["public_key"]
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="does not match its public key"):
        KeyRing.load(path)


def test_never_overwrites_without_asking(tmp_path):
    path = KeyRing.generate().save(tmp_path / "k.json")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        KeyRing.generate().save(path)
    assert path.read_bytes() == before
    KeyRing.generate().save(path, overwrite=True)
    assert path.read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_never_overwrites_someone_elses_public_key(tmp_path):
    pub = tmp_path / "team.pub.pem"
    pub.write_text("alice's key\n")
    with pytest.raises(OutputExistsError, match=r"team\.pub\.pem"):
        KeyRing.generate().save(tmp_path / "team.json")
    assert pub.read_text() == "alice's key\n" and not (tmp_path / "team.json").exists()
    (tmp_path / "t2.pub.pem").mkdir()
    with pytest.raises(KeyFileError, match="folder"):
        KeyRing.generate().save(tmp_path / "t2.json")
    assert not (tmp_path / "t2.json").exists()  # nothing half-written: a retry just works
    ring = KeyRing.generate()
    ring.save(tmp_path / "team.json", overwrite=True)
    assert PublicKey.load(pub) == ring.public_key


def test_a_write_that_fails_names_the_path_not_the_temporary_file(tmp_path):
    from trustgain.errors import OutputWriteError, TrustgainError
    from trustgain.fileio import write_atomic

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputWriteError) as err:
        write_atomic(tmp_path / "file" / "k.pem", b"data")
    assert isinstance(err.value, TrustgainError) and isinstance(err.value, OSError)
    assert str(err.value).startswith(f"cannot write {tmp_path / 'file' / 'k.pem'}: ")
    assert ".tmp" not in str(err.value)


def test_deeply_nested_files_are_one_line_errors(tmp_path):
    from trustgain.config import PipelineConfig
    from trustgain.errors import ConfigError

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(KeyFileError, match="not a trustgain key file"):
        KeyRing.load(deep)
    with pytest.raises(ConfigError, match="nested too deeply"):
        PipelineConfig.load(deep)
