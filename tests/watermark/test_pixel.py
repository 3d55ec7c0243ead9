"""The keyed pixel mark: round trip, attacks, keys, null, formats, stage, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from trustgain import KeyRing, Phase, StageResult, wrap
from trustgain.cli.main import main
from trustgain.errors import InputError, StageError
from trustgain.watermark import attacks, ecc, pixel
from trustgain.watermark.images import open_image

KEY = bytes(range(32))
PAYLOAD = b"\xde\xad\xbe\xef"


def _photo(name: str = "astronaut", size: int = 512) -> Image.Image:
    image = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    side = min(image.size)
    return image.crop((0, 0, side, side)).resize((size, size), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def marked():
    image = _photo()
    out, nonce = pixel.embed(image, KEY, PAYLOAD, nonce=5)
    return image, out, nonce


def test_round_trip_quality_and_payload(marked):
    image, out, nonce = marked
    assert out.size == image.size and out.mode == image.mode and 0 <= nonce < pixel.NONCES
    a, b = np.asarray(image, float), np.asarray(out, float)
    psnr = 10 * np.log10(255**2 / np.mean((a - b) ** 2))
    assert psnr >= 40.0
    d = pixel.detect(out, KEY)
    assert d.detected and d.payload == PAYLOAD and d.nonce == nonce and d.p_value < 1e-20


@pytest.mark.parametrize(
    "attack", ["jpeg50", "crop_random_50", "rotate5", "resize0.75_kept", "blur1", "noise0.02"]
)
def test_survives_attacks(marked, attack):
    _, out, _ = marked
    attacked = attacks.SUITE[attack](out, np.random.default_rng(1))
    d = pixel.detect(attacked, KEY)
    assert d.detected, (attack, d.z)


def test_wrong_key_and_clean_images_are_not_detected(marked):
    image, out, _ = marked
    for candidate, key in ((out, bytes(32)), (image, KEY), (_photo("coffee"), KEY)):
        d = pixel.detect(candidate, key)
        assert not d.detected and d.p_value > 1e-3 and d.payload is None


def test_p_value_bound_and_threshold_agree():
    t = pixel.threshold(1e-3)
    assert pixel.p_value(t) == pytest.approx(1e-3, rel=1e-9)
    assert pixel.p_value(-1.0) == 1.0 and pixel.p_value(t + 1) < 1e-3


def test_nonces_give_uncorrelated_patterns():
    a = pixel.pattern(KEY, 0, PAYLOAD).ravel()
    b = pixel.pattern(KEY, 1, PAYLOAD).ravel()
    c = pixel.pattern(bytes(32), 0, PAYLOAD).ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1 and abs(np.corrcoef(a, c)[0, 1]) < 0.1
    assert np.array_equal(a, pixel.pattern(KEY, 0, PAYLOAD).ravel())


def test_ecc_corrects_and_tag_rejects():
    bits = ecc.encode_bits(KEY, PAYLOAD)
    assert bits.size == ecc.CODE_BITS
    noisy = bits.copy()
    noisy[[3, 17, 40, 90, 120]] ^= 1
    assert ecc.decode_bits(KEY, noisy) == (PAYLOAD, 5)
    assert ecc.decode_bits(bytes(32), bits) == (None, None)  # other key: tag fails


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "I;16"])
def test_other_modes_are_handled(mode):
    base = _photo("chelsea")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    else:
        image = base.convert(mode)
    out, _ = pixel.embed(image, KEY, PAYLOAD)
    assert out.mode == image.mode
    if mode in ("RGBA", "LA"):
        assert np.array_equal(np.asarray(out)[..., -1], np.asarray(image)[..., -1])
    assert pixel.detect(out, KEY).payload == PAYLOAD


@pytest.mark.parametrize(("mode", "reason"), [("CMYK", "CMYK"), ("P", "palette"), ("1", "1-bit")])
def test_unsupported_modes_are_refused(mode, reason):
    with pytest.raises(InputError, match=reason):
        pixel.embed(_photo(size=256).convert(mode), KEY, PAYLOAD)


def test_tiny_images_are_refused():
    with pytest.raises(InputError, match="at least 256x256"):
        pixel.embed(_photo(size=100), KEY, PAYLOAD)


class PhotoGenerator:
    """A generator that returns one photo and counts its calls."""

    kind = "test"
    callback_tensor_inputs = ()

    def __init__(self):
        self.calls = []

    def supports(self, capability):
        return False

    def describe(self):
        return {"kind": "test", "class": "Photo", "model_id": "photo", "config_sha256": ""}

    def __call__(self, request, *, latents=None, hooks=()):
        self.calls.append(request)
        return (_photo("chelsea"),)


def test_stage_marks_outputs_with_record_id(keyring):
    class Photo:
        name, phase, version, requires = "test.photo", Phase.GENERATE, "1", frozenset()

        def __call__(self, item, ctx):
            return StageResult(item, {})

    from trustgain.pipeline import TrustPipeline

    art = TrustPipeline(PhotoGenerator(), [Photo(), "watermark.pixel"], keyring=keyring)("x")
    record = art.record.record
    params = record["stages"][1]["params"]
    assert params["payload"] == record["record_id"][:8]
    (mark,) = params["marks"]  # each mark checked as it is kept, the strength used recorded
    assert mark["strength"] == pixel.STRENGTH and mark["check_p_value"] <= 1e-3
    assert record["stages"][1]["version"] == "2"
    key = keyring.derive("watermark.pixel", "pixel")
    assert pixel.detect(art.images[0], key.material).payload.hex() == params["payload"]
    assert key.material.hex() not in json.dumps(record)


def test_stage_refuses_images_it_cannot_mark(sd_pipe, keyring):
    with pytest.raises(StageError, match="at least 256x256"):
        wrap(sd_pipe, ["watermark.pixel"], keyring=keyring)(
            "x", seed=0, num_inference_steps=2, height=16, width=16
        )


def test_cli_embed_detect_resume_and_errors(tmp_path, capsys):
    assert main(["keys", "create"]) == 0
    src = tmp_path / "in"
    src.mkdir()
    _photo().save(src / "a.png")
    _photo("coffee").save(src / "b.jpg")
    (src / "broken.png").write_bytes(b"not an image")
    _photo(size=64).save(src / "tiny.png")
    capsys.readouterr()
    code = main(
        [
            "watermark",
            "embed",
            str(src),
            "-o",
            str(tmp_path / "out"),
            "--payload",
            "0badc0de",
            "--json",
            "--no-progress",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 1 and result["marked"] == 2 and result["failed"] == 2
    reasons = {r["file"].rsplit("/", 1)[-1]: r.get("reason", "") for r in result["files"]}
    assert "not an image" in reasons["broken.png"] and "256x256" in reasons["tiny.png"]
    before = (tmp_path / "out" / "a.png").read_bytes()
    main(["watermark", "embed", str(src), "-o", str(tmp_path / "out"), "--json", "--no-progress"])
    again = json.loads(capsys.readouterr().out)
    assert again["skipped"] == 2 and (tmp_path / "out" / "a.png").read_bytes() == before
    code = main(
        [
            "watermark",
            "detect",
            str(tmp_path / "out"),
            str(src / "a.png"),
            "--json",
            "--no-progress",
        ]
    )
    found = {r["file"]: r for r in json.loads(capsys.readouterr().out)["files"]}
    assert code == 0
    assert found[str(tmp_path / "out" / "a.png")]["payload"] == "0badc0de"
    assert found[str(tmp_path / "out" / "b.jpg")]["detected"]
    assert not found[str(src / "a.png")]["detected"]
    main(["watermark", "detect", str(tmp_path / "out" / "a.png"), "--require-payload", "--json"])
    strict = json.loads(capsys.readouterr().out)["files"][0]
    assert strict["detected"] and strict["present"] and strict["payload"] == "0badc0de"
    code = main(["watermark", "embed", str(src / "a.png"), "-o", str(src / "a.png"), "--force"])
    assert code == 1 and "overwrite the input" in capsys.readouterr().out
    other = KeyRing.generate()
    other.save(tmp_path / "other.json")
    main(
        [
            "watermark",
            "detect",
            str(tmp_path / "out" / "a.png"),
            "--keyring",
            str(tmp_path / "other.json"),
            "--json",
        ]
    )
    assert not json.loads(capsys.readouterr().out)["files"][0]["detected"]


def _camera_jpeg(path, image: Image.Image) -> None:
    """A camera-like JPEG: sRGB profile, EXIF orientation 6 (rotate 90) and a GPS position."""
    from PIL import ImageCms

    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "CameraMaker"
    exif.get_ifd(0x8825)[2] = (52.0, 31.0, 12.0)  # GPSLatitude
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(path, quality=95, exif=exif.tobytes(), icc_profile=icc)


def test_cli_embed_keeps_profile_and_orientation_drops_the_rest(tmp_path, capsys):
    assert main(["keys", "create"]) == 0
    src = tmp_path / "in"
    src.mkdir()
    _camera_jpeg(src / "cam.jpg", _photo())
    Image.new("P", (200, 200)).save(src / "anim.gif")  # an image type embed does not take
    _photo("coffee").save(src / "scan.tif", tiffinfo={0x0112: 3})  # TIFF: orientation as a tag
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["watermark", "embed", str(src), "-o", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 image file(s)" in err and "anim.gif" in err  # named, not passed over
    marked = Image.open(out / "cam.jpg")
    exif = marked.getexif()
    assert exif.get(0x0112) == 6 and marked.info.get("icc_profile")
    assert 0x010F not in exif and not exif.get_ifd(0x8825)  # maker and GPS position dropped
    # Pillow turns a TIFF upright as it loads it: the output holds upright pixels and no
    # orientation tag, so it displays as the input did (a kept tag would turn it twice).
    upright = np.asarray(open_image(src / "scan.tif").convert("L"), dtype=float)
    scan = Image.open(out / "scan.tif")
    assert scan.getexif().get(0x0112) in (None, 1)
    assert np.abs(np.asarray(scan.convert("L"), dtype=float) - upright).mean() < 4
    assert main(["watermark", "detect", str(out / "scan.tif"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["detected"]
    assert main(["watermark", "detect", str(out / "cam.jpg"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["detected"]
    code = main(["watermark", "embed", str(src), str(src), "-o", str(out / "cam.jpg")])
    assert code != 0 and "-o names a folder" in capsys.readouterr().err  # not a traceback
    (tmp_path / "file").write_bytes(b"")
    code = main(["watermark", "embed", str(src), "-o", str(tmp_path / "file" / "x")])
    assert code == 1 and "cannot write" in capsys.readouterr().out


def test_chase_decodes_beyond_the_hard_decoder():
    bits = ecc.encode_bits(KEY, PAYLOAD).astype(float)
    rng = np.random.default_rng(3)
    soft = (2 * bits - 1) * 1.0 + rng.normal(0, 0.1, bits.size)
    wrong = rng.choice(bits.size, 14, replace=False)  # more than the 12 BCH corrects
    soft[wrong] *= -0.05  # flipped, but with low confidence
    assert ecc.decode_bits(KEY, (soft > 0).astype(np.uint8)) == (None, None)
    assert ecc.chase_decode(KEY, soft)[0] == PAYLOAD


def test_max_z_matches_detect(marked):
    _, out, _ = marked
    zs = pixel.max_z(out, [KEY, bytes(32)])
    assert zs[0] == pytest.approx(pixel.detect(out, KEY).z) and zs[1] < pixel.threshold(1e-3)


def test_require_payload_gates_detection_on_the_verified_payload(marked, monkeypatch):
    _, out, _ = marked
    d = pixel.detect(out, KEY, require_payload=True)
    assert d.detected and d.present and d.payload == PAYLOAD
    clean = pixel.detect(_photo("coffee"), KEY, require_payload=True)
    assert not clean.detected and not clean.present
    # a mark whose payload does not verify: present, but not detected when it is required
    monkeypatch.setattr(pixel, "chase_decode", lambda key, soft: (None, None))
    d = pixel.detect(out, KEY)
    assert d.detected and d.present and d.payload is None
    d = pixel.detect(out, KEY, require_payload=True)
    assert not d.detected and d.present and d.p_value < 1e-20
    assert pixel.PAYLOAD_FALSE_ACCEPT == 2.0**-10


def test_strict_rows_count_released_payloads():
    from trustgain.bench.watermark import strict_rows

    log = [(1e-9, True), (1e-9, None), (1e-4, True), (0.5, None)]
    rows = {r.metric.split(": ", 1)[1]: r for r in strict_rows("none", log, exempt=False)}
    assert rows["TPR@1e-6 none"].value == 0.5
    assert rows["payload released of detected, none"].value == pytest.approx(2 / 3)
    assert rows["released payloads exact, none"].value == 1.0
    assert rows["TPR@1e-3 payload required, none"].value == 0.5
    assert rows["TPR@1e-3 payload required, none"].ok is False
    assert rows["TPR@1e-6 payload required, none"].value == 0.25


def test_bench_marks_with_the_checked_embed_and_reports_the_strength(monkeypatch):
    from trustgain.bench import watermark as bench
    from trustgain.watermark.pixel_check import CheckedMark

    image = Image.fromarray(skdata.astronaut()).resize((256, 256), Image.Resampling.BICUBIC)
    calls = []

    def fake(im, key, payload, **kw):  # the CLI's checked embed, raising this image's strength
        calls.append(payload)
        out, _ = pixel.embed(im, key, payload, strength=1.5 * pixel.STRENGTH, nonce=3)
        return CheckedMark(out, None, 3, 1.5 * pixel.STRENGTH, 1e-9)

    monkeypatch.setattr(bench, "embed_checked", fake)
    strengths: list[float] = []
    marked = bench.ours([KEY], checked=True, strengths=strengths).embed(image, 0)
    assert len(calls) == 1 and strengths == [1.5 * pixel.STRENGTH]
    assert pixel.detect(marked, KEY).nonce == 3
    bench.ours([KEY], checked=False, strengths=strengths).embed(image, 1)
    assert len(calls) == 1 and strengths[-1] == pixel.STRENGTH


def test_checked_embed_raises_strength_only_where_the_mark_is_not_found():
    from trustgain.watermark.pixel_check import WeakMarkError, embed_checked

    small = Image.fromarray(skdata.astronaut()).resize((256, 256), Image.Resampling.BICUBIC)
    key = b"k" * 32  # with nonce 0 this 256-px photo is missed at the default strength
    plain, _ = pixel.embed(small, key, PAYLOAD, nonce=0)
    assert not pixel.detect(plain, key, require_payload=True).detected
    mark = embed_checked(small, key, PAYLOAD, nonce=0)
    assert mark.strength > pixel.STRENGTH and mark.p_value <= 1e-3
    assert pixel.detect(mark.image, key, require_payload=True).payload == PAYLOAD
    with pytest.raises(WeakMarkError, match="not found in the marked image even at strength"):
        embed_checked(small, key, PAYLOAD, nonce=0, max_strength=pixel.STRENGTH)
    big = Image.fromarray(skdata.astronaut())  # 512 px: found at once, nothing raised
    assert embed_checked(big, key, PAYLOAD, nonce=0).strength == pixel.STRENGTH


def test_stage_refuses_what_it_cannot_mark_before_generating(keyring):
    from trustgain.pipeline import TrustPipeline

    generator = PhotoGenerator()
    trust = TrustPipeline(generator, ["watermark.pixel"], keyring=keyring)
    with pytest.raises(StageError, match="too small for the mark"):
        trust("x", height=128, width=128)
    with pytest.raises(StageError, match="output_type is 'np'"):
        trust("x", output_type="np")
    assert generator.calls == []  # refused from the request alone: no generation was spent


def test_detect_lines_say_when_the_mark_is_there_without_its_payload():
    from trustgain.cli.watermark import _human_line

    base = {"file": "x.jpg", "status": "ok", "p_value": 1e-9}
    with_payload = _human_line({**base, "detected": True, "present": True, "payload": "0badc0de"})
    assert with_payload == "x.jpg: DETECTED p=1e-09 payload 0badc0de"
    weak = _human_line({**base, "detected": True, "present": True, "payload": None})
    assert weak.endswith("DETECTED p=1e-09 (mark present; payload not recovered)")
    required = _human_line({**base, "detected": False, "present": True, "payload": None})
    assert required.startswith("x.jpg: not detected") and "payload not recovered" in required
    absent = _human_line({**base, "p_value": 0.4, "detected": False, "present": False,
                          "payload": None})
    assert absent == "x.jpg: not detected p=0.4"
    assert _human_line({"file": "y.png", "status": "error", "reason": "not an image"}) == (
        "y.png: error (not an image)")
