"""Signed records: tamper tests on PNG and JPEG files, keys, sidecars."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image

from trustgain import Reason, VerificationError, verify_file, wrap
from trustgain.provenance import embed, verify_bytes

SD = dict(num_inference_steps=2, height=16, width=16)


@pytest.fixture(scope="module", params=["png", "jpeg"])
def artifacts(request, sd_pipe):
    from trustgain import KeyRing

    ring = KeyRing.generate()
    pipe = wrap(sd_pipe, ["generate.latent_trace"], keyring=ring, output_format=request.param)
    return ring, pipe("a", seed=1, **SD), pipe("b", seed=2, **SD), request.param


def _reason(data: bytes, keys, sidecar=None) -> Reason:
    with pytest.raises(VerificationError) as err:
        verify_bytes(data, trusted=keys, sidecar_text=sidecar)
    return err.value.reason


def _replace_record(data: bytes, text: str) -> bytes:
    return embed.embed(embed.strip(data), text)


def test_untouched_file_verifies(artifacts):
    ring, art, _, fmt = artifacts
    v = verify_bytes(art.files[0].data, trusted=[ring.public_key])
    assert v.binding == "file" and v.source == "embedded"
    assert art.files[0].media_type == f"image/{fmt}"


def test_flipped_pixel_is_caught(artifacts):
    ring, art, _, fmt = artifacts
    data = art.files[0].data
    image = Image.open(io.BytesIO(data)).convert("RGB")
    r, g, b = image.getpixel((3, 3))
    image.putpixel((3, 3), ((r + 1) % 256, g, b))
    buf = io.BytesIO()
    image.save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
    tampered = _replace_record(buf.getvalue(), embed.extract(data))
    assert _reason(tampered, [ring.public_key]) == Reason.CONTENT_HASH_MISMATCH
    # A raw flipped byte in the image data, outside the record.
    stripped = embed.strip(data)
    at = len(stripped) - 20
    raw = bytearray(data)
    raw[data.index(stripped[at - 30 : at])] ^= 0x01
    assert _reason(bytes(raw), [ring.public_key]) == Reason.CONTENT_HASH_MISMATCH


def test_flipped_byte_in_record_is_caught(artifacts):
    ring, art, _, _ = artifacts
    text = embed.extract(art.files[0].data)
    env = json.loads(text)
    digest = env["record"]["outputs"][0]["pixels_sha256"]
    flipped = ("1" if digest[0] != "1" else "2") + digest[1:]
    forged = text.replace(digest, flipped)
    assert forged != text
    data = _replace_record(art.files[0].data, forged)
    assert _reason(data, [ring.public_key]) == Reason.BAD_SIGNATURE
    broken = _replace_record(art.files[0].data, text[:-5] + "}}}}}")
    assert _reason(broken, [ring.public_key]) == Reason.MALFORMED_RECORD


def test_raw_byte_flip_in_record_field_name_is_malformed(artifacts):
    ring, art, _, _ = artifacts
    data = bytearray(art.files[0].data)
    at = data.index(b'"record_id"') + 2
    data[at] ^= 0x20
    # PNG: the chunk's CRC fails; JPEG: the record lacks 'record_id'.
    assert _reason(bytes(data), [ring.public_key]) == Reason.MALFORMED_RECORD


def test_flipped_byte_in_signature_is_caught(artifacts):
    ring, art, _, _ = artifacts
    env = json.loads(embed.extract(art.files[0].data))
    sig = bytearray(base64.b64decode(env["signature"]))
    sig[10] ^= 0x01
    env["signature"] = base64.b64encode(bytes(sig)).decode()
    data = _replace_record(art.files[0].data, json.dumps(env))
    assert _reason(data, [ring.public_key]) == Reason.BAD_SIGNATURE


def test_swapped_record_from_another_image_is_caught(artifacts):
    ring, art, other, _ = artifacts
    data = _replace_record(art.files[0].data, embed.extract(other.files[0].data))
    assert _reason(data, [ring.public_key]) == Reason.CONTENT_HASH_MISMATCH


def test_other_key_is_unknown_and_forged_key_id_is_bad_signature(artifacts, other_keyring):
    _, art, _, _ = artifacts
    data = art.files[0].data
    assert _reason(data, [other_keyring.public_key]) == Reason.UNKNOWN_KEY
    assert _reason(data, []) == Reason.UNKNOWN_KEY
    env = json.loads(embed.extract(data))
    env["record"]["signer"]["key_id"] = other_keyring.key_id
    forged = _replace_record(data, json.dumps(env))
    assert _reason(forged, [other_keyring.public_key]) == Reason.BAD_SIGNATURE


def test_missing_record_and_sidecar(artifacts, tmp_path):
    ring, art, _, fmt = artifacts
    suffix = ".png" if fmt == "png" else ".jpg"
    bare = embed.strip(art.files[0].data)
    assert _reason(bare, [ring.public_key]) == Reason.MISSING_RECORD
    path = art.save(tmp_path / f"out{suffix}")
    assert verify_file(path, trusted=[ring.public_key]).source == "embedded"
    path.write_bytes(bare)  # metadata stripped: the sidecar still proves it
    v = verify_file(path, trusted=[ring.public_key])
    assert v.source == "sidecar" and v.binding == "file"


def test_lossless_reencode_verifies_by_pixels(sd_pipe, keyring, tmp_path):
    art = wrap(sd_pipe, keyring=keyring)("a", seed=4, **SD)
    text = embed.extract(art.files[0].data)
    image = Image.open(io.BytesIO(art.files[0].data))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=9)  # different bytes, same pixels
    reencoded = embed.embed(buf.getvalue(), text)
    assert embed.strip(reencoded) != embed.strip(art.files[0].data)
    assert verify_bytes(reencoded, trusted=[keyring.public_key]).binding == "pixels"


def test_embed_is_byte_exact_and_replaces(sd_pipe, keyring):
    art = wrap(sd_pipe, keyring=keyring)("a", seed=4, **SD)
    data = art.files[0].data
    stripped = embed.strip(data)
    assert embed.strip(embed.embed(stripped, "x")) == stripped
    assert embed.extract(embed.embed(data, "y")) == "y"
    Image.open(io.BytesIO(data)).load()  # still a valid PNG


def test_large_record_splits_across_jpeg_segments():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="JPEG")
    text = "é" * 70000  # > one APP11 segment
    data = embed.embed(buf.getvalue(), text)
    assert embed.extract(data) == text and embed.strip(data) == buf.getvalue()
    Image.open(io.BytesIO(data)).load()


def test_not_an_image_and_truncated_png():
    from trustgain.errors import InputError

    with pytest.raises(InputError, match="not a PNG or JPEG"):
        verify_bytes(b"GIF89a....", trusted=[])
    chunk = struct.pack(">I", 4) + b"IHDR"
    with pytest.raises(InputError, match="truncated"):
        verify_bytes(b"\x89PNG\r\n\x1a\n" + chunk + b"\0\0", trusted=[])
    assert zlib  # used to build chunks above


def test_bytes_slipped_past_the_record_are_caught(artifacts):
    """Bytes after IEND, a second record chunk, a short tagged JPEG segment: none verifies
    as the signed file (a second chunk could carry anything strip() silently drops)."""
    ring, art, _, fmt = artifacts
    data, keys = art.files[0].data, [ring.public_key]
    if fmt == "png":
        v = verify_bytes(data + b"EVIL PAYLOAD" * 100, trusted=keys)
        assert v.binding == "pixels"  # same pixels, but never "the exact file"
        end = len(data) - 12  # IEND
        extra = embed._png_chunk(b"iTXt", embed.KEYWORD + b"\0\0\0\0\0anything")
        doubled = data[:end] + extra + data[end:]
    else:
        at = embed._jpeg_insert_at(data)
        doubled = data[:at] + embed._jpeg_segment(0xEB, b"trustgain\0") + data[at:]
    assert _reason(doubled, keys) == Reason.MALFORMED_RECORD


@pytest.mark.parametrize("value", ["[" * 100_000 + "]" * 100_000, "NaN", "1e400",
                                   str(2**70)])
def test_records_with_no_canonical_form_are_malformed(artifacts, value):
    ring, art, _, _ = artifacts
    env = json.loads(embed.extract(art.files[0].data))
    env["record"]["extra"] = "@@"
    text = json.dumps(env).replace('"@@"', value)
    assert _reason(_replace_record(art.files[0].data, text), [ring.public_key]) == \
        Reason.MALFORMED_RECORD


def test_verify_file_reads_only_images(tmp_path):
    from trustgain.errors import InputError

    big = tmp_path / "huge.png"
    with big.open("wb") as fh:  # sparse: a 3 GB file of zeros is refused from its first bytes
        fh.truncate(3 * 2**30)
    with pytest.raises(InputError, match="not a PNG or JPEG"):
        verify_file(big, trusted=[])
    with pytest.raises(InputError, match="not a regular file"):
        verify_file("/dev/zero", trusted=[])
    png = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(png)
    with pytest.raises(InputError, match=r"sidecar .*no such file"):
        verify_file(png, trusted=[], sidecar=tmp_path / "gone.json")
