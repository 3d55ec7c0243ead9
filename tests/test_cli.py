"""The CLI end to end: keys, generate on a tiny saved pipeline, verify, errors."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pytest

from trustgain.cli.main import main


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, sd_pipe):
    path = tmp_path_factory.mktemp("model")
    sd_pipe.save_pretrained(path)
    return path


GEN = ["--steps", "2", "--height", "16", "--width", "16", "--device", "cpu", "--no-progress"]


def test_help_lists_commands_and_examples(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("keys", "verify", "generate", "stages"):
        assert command in out
    code, out, _ = run(capsys, "generate", "--help")
    assert code == 0 and "Examples:" in out


def test_keys_create_show_export(capsys, tmp_path, monkeypatch):
    code, out, err = run(capsys, "keys", "create", "--json")
    assert code == 0 and "not passphrase-protected" in err
    info = json.loads(out)
    assert info["mode"] == "0o600" and info["key_id"].startswith("ed25519:")
    code, out, _ = run(capsys, "keys", "show", "--json")
    assert json.loads(out)["key_id"] == info["key_id"]
    code, out, _ = run(capsys, "keys", "export-public")
    assert code == 0 and out.startswith("-----BEGIN PUBLIC KEY-----")
    code, _, err = run(capsys, "keys", "create")
    assert code == 1 and "exists" in err and "--force" in err


def test_encrypted_keyring_and_wrong_passphrase(capsys, tmp_path, monkeypatch, model_dir):
    key = tmp_path / "team.json"
    monkeypatch.setenv("TRUSTGAIN_PASSPHRASE", "s3cret-pass")
    code, out, _ = run(capsys, "keys", "create", "--keyring", str(key), "--json")
    assert code == 0 and json.loads(out)["encrypted"] is True
    monkeypatch.setenv("TRUSTGAIN_PASSPHRASE", "not-it")
    code, out, err = run(
        capsys,
        "generate",
        "x",
        "--model",
        str(model_dir),
        "--keyring",
        str(key),
        "-o",
        str(tmp_path / "x.png"),
        *GEN,
    )
    assert code == 1
    assert err.strip().splitlines()[0].startswith("error: wrong passphrase for")
    assert "Traceback" not in err and "s3cret" not in err + out and "not-it" not in err + out
    assert not (tmp_path / "x.png").exists()


def test_generate_verify_and_tamper(capsys, tmp_path, model_dir):
    run(capsys, "keys", "create")
    out_png = tmp_path / "seven.png"
    code, out, err = run(
        capsys,
        "generate",
        "a handwritten seven",
        "--model",
        str(model_dir),
        "-o",
        str(out_png),
        "--seed",
        "3",
        "--stage",
        "prompt.normalize",
        "--stage",
        "audit.outputs",
        "--json",
        *GEN,
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["files"] == [str(out_png)] and result["seed"] == 3
    assert (tmp_path / "seven.png.trustgain.json").exists()
    code, out, _ = run(capsys, "verify", str(out_png), "--json")
    assert code == 0 and json.loads(out)["valid"] is True
    # Refuses to overwrite.
    code, _, err = run(capsys, "generate", "x", "--model", str(model_dir), "-o", str(out_png), *GEN)
    assert code == 1 and "exists" in err
    # Tampered pixels: exit 1 with a machine-readable reason.
    from PIL import Image

    from trustgain.provenance import embed

    data = out_png.read_bytes()
    image = Image.open(out_png).convert("RGB")
    image.putpixel((0, 0), tuple((v + 1) % 256 for v in image.getpixel((0, 0))))
    bad = tmp_path / "bad.png"
    image.save(bad)
    bad.write_bytes(embed.embed(bad.read_bytes(), embed.extract(data)))
    code, out, _ = run(capsys, "verify", str(bad), "--json")
    assert code == 1 and json.loads(out)["reason"] == "content_hash_mismatch"
    # Under someone else's key only: unknown_key.
    other = tmp_path / "other.json"
    run(capsys, "keys", "create", "--keyring", str(other))
    code, out, _ = run(capsys, "verify", str(out_png), "--public-key", str(other), "--json")
    assert code == 1 and json.loads(out)["reason"] == "unknown_key"
    # A folder: one line per file, exit 1 when any fails.
    code, out, _ = run(capsys, "verify", str(tmp_path), "--json", "--no-progress")
    reasons = {r["file"].rsplit("/", 1)[-1]: r.get("reason") for r in json.loads(out)}
    assert code == 1 and reasons == {"bad.png": "content_hash_mismatch", "seven.png": None}
    # A missing path is one failed line; the others are still checked.
    code, out, _ = run(capsys, "verify", str(out_png), str(tmp_path / "nope.png"), "--json")
    results = json.loads(out)
    assert code == 1 and [r["valid"] for r in results] == [True, False]
    assert results[1]["reason"] == "unreadable"
    assert results[1]["message"] == "no such file or folder"
    # Same pixels, other bytes (here: bytes after IEND): valid by pixels, and the line says so.
    (tmp_path / "tail").mkdir()
    tail = tmp_path / "tail" / "seven.png"
    tail.write_bytes(data + b"appended")
    code, out, _ = run(capsys, "verify", str(tail))
    assert code == 0 and "file bytes differ" in out


def test_jpeg_output_and_missing_record(capsys, tmp_path, model_dir):
    run(capsys, "keys", "create")
    jpg = tmp_path / "a.jpg"
    code, _, err = run(
        capsys, "generate", "a", "--model", str(model_dir), "-o", str(jpg), "--no-sidecar", *GEN
    )
    assert code == 0, err
    assert not (tmp_path / "a.jpg.trustgain.json").exists()
    code, _, _ = run(capsys, "verify", str(jpg))
    assert code == 0
    from trustgain.provenance import embed

    jpg.write_bytes(embed.strip(jpg.read_bytes()))
    code, out, _ = run(capsys, "verify", str(jpg), "--json")
    assert code == 1 and json.loads(out)["reason"] == "missing_record"


def test_known_errors_are_one_line(capsys, tmp_path, model_dir):
    run(capsys, "keys", "create")
    code, _, err = run(
        capsys,
        "generate",
        "x",
        "--model",
        str(tmp_path / "nope"),
        "-o",
        str(tmp_path / "n.png"),
        *GEN,
    )
    assert code == 1 and err.startswith("error: model") and "no such folder" in err
    assert "Traceback" not in err
    code, _, err = run(
        capsys,
        "generate",
        "x",
        "--model",
        str(model_dir),
        "--stage",
        "watermak",
        "-o",
        str(tmp_path / "n.png"),
        *GEN,
    )
    assert code == 1 and "unknown stage 'watermak'; known:" in err
    code, _, err = run(
        capsys, "generate", "x", "--model", str(model_dir), "-o", str(tmp_path / "n.gif"), *GEN
    )
    assert code == 2 and ".png, .jpg or .jpeg" in err
    (tmp_path / "junk.png").write_bytes(b"not an image")
    code, out, _ = run(capsys, "verify", str(tmp_path / "junk.png"), "--json")
    assert code == 1 and json.loads(out)["reason"] == "unreadable"


def test_console_script_debug_traceback(tmp_path):
    env = {"TRUSTGAIN_HOME": str(tmp_path), "PATH": "", "TRUSTGAIN_DEBUG": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "trustgain", "keys", "show"], env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    env.pop("TRUSTGAIN_DEBUG")
    proc = subprocess.run(
        [sys.executable, "-m", "trustgain", "keys", "show"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[0] == f"error: no key file at {tmp_path}/keyring.json"


def test_key_file_mode(tmp_path, capsys):
    run(capsys, "keys", "create", "--keyring", str(tmp_path / "k.json"))
    assert stat.S_IMODE((tmp_path / "k.json").stat().st_mode) == 0o600
    _, _, err = run(capsys, "keys", "show", "--keyring", str(tmp_path / "k.json"))
    assert "chmod" not in err
    (tmp_path / "k.json").chmod(0o644)  # unencrypted and readable by others: said every time
    code, _, err = run(capsys, "keys", "show", "--keyring", str(tmp_path / "k.json"))
    assert code == 0 and f"chmod 600 {tmp_path / 'k.json'}" in err


def test_verify_soft_binding_through_the_watermark(capsys, tmp_path):
    """A JPEG re-encode of a marked, signed PNG loses its record; the watermark finds it."""
    import io

    from PIL import Image
    from skimage import data as skdata

    from trustgain import KeyRing, Phase, StageResult
    from trustgain.pipeline import TrustPipeline

    run(capsys, "keys", "create")
    ring = KeyRing.load()

    class Photo:
        name, phase, version, requires = "test.photo", Phase.GENERATE, "1", frozenset()

        def __call__(self, item, ctx):
            return StageResult(item, {})

    class PhotoGenerator:
        kind, callback_tensor_inputs = "test", ()

        def supports(self, capability):
            return False

        def describe(self):
            return {"kind": "test", "class": "Photo", "model_id": "skimage", "config_sha256": ""}

        def __call__(self, request, *, latents=None, hooks=()):
            return (Image.fromarray(skdata.chelsea()).resize((512, 340)),)

    art = TrustPipeline(PhotoGenerator(), [Photo(), "watermark.pixel"], keyring=ring)("cat")
    records = tmp_path / "records"
    art.save(records / "cat.png")
    buf = io.BytesIO()
    art.images[0].save(buf, format="JPEG", quality=80)  # re-encoded: the record is gone
    (tmp_path / "repost.jpg").write_bytes(buf.getvalue())
    code, out, _ = run(
        capsys, "verify", str(tmp_path / "repost.jpg"), "--records", str(records), "--json"
    )
    result = json.loads(out)
    assert code == 1 and result["reason"] == "missing_record"
    assert result["soft_binding"]["record_id"] == art.record.record_id
    code, out, _ = run(capsys, "verify", str(tmp_path / "repost.jpg"), "--records", str(records))
    assert f"links it to signed record {art.record.record_id}" in out
    code, out, _ = run(capsys, "verify", str(tmp_path / "repost.jpg"), "--json")
    assert "soft_binding" not in json.loads(out)  # only when asked for


def test_generate_with_the_embedded_model_offline(tmp_path):
    """The README's main job: no --model, no network (HF_HUB_OFFLINE=1), a signed seven."""
    import os

    from PIL import Image

    from trustgain.models import classify_digits

    env = {
        **os.environ,
        "TRUSTGAIN_HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "TRUSTGAIN_NO_PROGRESS": "1",
        "OMP_NUM_THREADS": "1",
    }
    steps = [
        [sys.executable, "-m", "trustgain", "keys", "create"],
        [
            sys.executable,
            "-m",
            "trustgain",
            "generate",
            "a handwritten seven",
            "-o",
            str(tmp_path / "seven.png"),
            "--seed",
            "0",
            "--steps",
            "12",
        ],
        [sys.executable, "-m", "trustgain", "verify", str(tmp_path / "seven.png")],
    ]
    for command in steps:
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    image = Image.open(tmp_path / "seven.png")
    assert image.size == (32, 32)
    digits, _ = classify_digits([image.convert("RGB")])
    assert int(digits[0]) == 7


def test_generate_notes_an_empty_prompt(capsys, tmp_path, model_dir):
    run(capsys, "keys", "create")
    code, _, err = run(capsys, "generate", " \u200b ", "--model", str(model_dir),
                       "-o", str(tmp_path / "empty.png"), *GEN)
    assert code == 0, err
    assert "prompt is empty" in err
    code, _, err = run(capsys, "generate", "a seven", "--model", str(model_dir),
                       "-o", str(tmp_path / "seven.png"), *GEN)
    assert code == 0 and "prompt is empty" not in err
