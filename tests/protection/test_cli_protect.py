"""`trustgain protect` / `trustgain recover` end to end on small folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trustgain.cli.main import cli, main
from trustgain.cli.protect import protect, recover
from trustgain.protection.batch_manifest import read_manifest
from trustgain.protection.residual import PNG_CHUNK
from trustgain.provenance.embed import _png_chunks

FAST = ["--steps", "2", "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True)
def _commands(monkeypatch):
    monkeypatch.setitem(cli.commands, "protect", protect)
    monkeypatch.setitem(cli.commands, "recover", recover)


@pytest.fixture
def ring(tmp_path, keyring):
    path = tmp_path / "ring.json"
    keyring.save(path)
    return str(path)


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    originals = {
        "a.png": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "sub/gray.png": rng.integers(0, 256, (24, 40), dtype=np.uint8),
    }
    for rel, arr in originals.items():
        Image.fromarray(arr).save(src / rel)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(src / "b.jpg")
    originals["b.png"] = np.asarray(Image.open(src / "b.jpg"))  # JPEG: its decoded pixels
    return src, originals


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_has_examples(capsys):
    for command in ("protect", "recover"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "Examples:" in out and "--json" in out


def test_protect_then_recover_is_bit_exact(capsys, tmp_path, photos, ring):
    src, originals = photos
    out, back = tmp_path / "protected", tmp_path / "back"
    (src / "alpha.png").write_bytes(b"")
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(src / "alpha.png")
    code, stdout, err = run(capsys, "protect", src, "-o", out, "--keyring", ring, "--json", *FAST)
    summary = json.loads(stdout)
    assert code == 1 and summary["done"] == 3 and summary["refused"] == 1
    assert "alpha.png: refused (has an alpha channel" in err
    assert summary["key_id"].startswith("hkdf:") and "hkdf" not in err
    assert "no --surrogate given" in err  # the default targets the digits judge: said so
    for rel, arr in originals.items():
        prot = np.asarray(Image.open(out / rel))
        assert prot.shape == arr.shape
        diff = np.abs(prot.astype(int) - arr.astype(int))
        assert 0 < diff.max() <= 8
        assert any(c == PNG_CHUNK for _, c, _, _ in _png_chunks((out / rel).read_bytes()))
    code, stdout, _ = run(capsys, "recover", out, "-o", back, "--keyring", ring, "--no-progress")
    assert code == 0 and "3 recovered, 0 already done, 0 refused" in stdout
    for rel, arr in originals.items():
        assert np.array_equal(np.asarray(Image.open(back / rel)), arr)
    code, stdout, _ = run(capsys, "protect", src, "-o", out, "--keyring", ring, *FAST)
    assert "0 protected, 3 already done, 1 refused" in stdout


def test_outputs_keep_profile_and_orientation_and_recover_exactly(capsys, tmp_path, ring):
    from PIL import ImageCms

    src, out, back = tmp_path / "in", tmp_path / "protected", tmp_path / "back"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8825)[2] = (52.0, 31.0, 12.0)  # GPSLatitude: not carried
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    pixels = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(src / "cam.png", exif=exif.tobytes(), icc_profile=icc)
    run(capsys, "protect", src, "-o", out, "--keyring", ring, *FAST)
    run(capsys, "recover", out, "-o", back, "--keyring", ring, "--no-progress")
    for image in (Image.open(out / "cam.png"), Image.open(back / "cam.png")):
        assert image.getexif().get(0x0112) == 6 and image.info.get("icc_profile") == icc
        assert not image.getexif().get_ifd(0x8825)
    assert np.array_equal(np.asarray(Image.open(back / "cam.png")), pixels)


def test_key_never_reaches_manifest_or_output(capsys, tmp_path, photos, ring, keyring):
    import base64

    from trustgain.protection.batch_jobs import KEY_PURPOSE, KEY_STAGE, ProtectJob

    src, _ = photos
    out = tmp_path / "protected"
    code, stdout, err = run(capsys, "protect", src, "-o", out, "--keyring", ring, "--json",
                            *FAST)
    assert code == 0
    key = keyring.derive(KEY_STAGE, KEY_PURPOSE)
    text = (out / "trustgain-manifest.jsonl").read_text() + stdout + err
    for form in (key.material.hex(), base64.b64encode(key.material).decode()):
        assert form not in text
    assert key.key_id in text
    job = ProtectJob(config=None, key=key.material, key_id=key.key_id)
    assert key.material.hex() not in repr(job) and repr(key.material) not in repr(job)


def test_sidecar_wrong_key_and_tamper(capsys, tmp_path, photos, ring, other_keyring):
    src, originals = photos
    out = tmp_path / "protected"
    code, _, _ = run(capsys, "protect", src, "-o", out, "--keyring", ring, "--residual",
                     "sidecar", *FAST)
    assert code == 0 and (out / "a.png.rae").is_file() and (out / "sub/gray.png.rae").is_file()
    assert not any(c == PNG_CHUNK for _, c, _, _ in _png_chunks((out / "a.png").read_bytes()))
    other = tmp_path / "other.json"
    other_keyring.save(other)
    code, stdout, err = run(capsys, "recover", out, "-o", tmp_path / "r1", "--keyring", other,
                            "--json", "--no-progress")
    assert code == 1 and json.loads(stdout)["refused"] == 3 and "another key" in err
    prot = np.array(Image.open(out / "a.png"))
    prot[0, 0, 0] ^= 1
    Image.fromarray(prot).save(out / "a.png")
    (out / "b.png.rae").unlink()
    code, stdout, err = run(capsys, "recover", out, "-o", tmp_path / "r2", "--keyring", ring,
                            "--no-progress")
    assert code == 1 and "1 recovered" in stdout
    assert "a.png: refused" in err and "modified" in err
    assert "b.png: refused (carries no residual" in err
    code, stdout, err = run(capsys, "recover", out, "-o", tmp_path / "r3", "--keyring", ring,
                            "--lenient", "--json", "--no-progress")
    assert json.loads(stdout)["done"] == 2 and "a.png: warning:" in err and "approximate" in err
    exact = {e["input"]: e["info"]["exact"] for e in read_manifest(tmp_path / "r3")
             if e["kind"] == "item" and e["status"] == "ok"}
    assert exact == {"a.png": False, "sub/gray.png": True}
    lenient = np.asarray(Image.open(tmp_path / "r3" / "a.png")).astype(int)
    assert np.abs(lenient - originals["a.png"]).sum() == 1


def test_output_inside_input_is_an_error(capsys, tmp_path, photos, ring):
    src, _ = photos
    code, _, err = run(capsys, "protect", src, "-o", src / "out", "--keyring", ring, *FAST)
    assert code == 1 and err.startswith("error: output folder") and "hint:" in err
    assert not (src / "out").exists()


def test_workers_needs_a_local_ray(capsys, tmp_path, photos, ring):
    src, _ = photos
    code, _, err = run(capsys, "protect", src, "-o", tmp_path / "o", "--keyring", ring,
                       "--workers", "2", *FAST)
    assert code == 2 and "--workers" in err and not (tmp_path / "o").exists()
    code, _, err = run(capsys, "protect", src, "-o", tmp_path / "o", "--keyring", ring,
                       "--method", "ddpm", *FAST)
    assert code == 2 and "--ddpm PATH" in err and not (tmp_path / "o").exists()


def test_unknown_method_fails_once_not_per_image(capsys, tmp_path, photos, ring,
                                                 monkeypatch):
    src, _ = photos
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    code, _, err = run(capsys, "protect", src, "-o", tmp_path / "o", "--keyring", ring,
                       "--method", "poison", *FAST)
    assert code == 1 and "not available" in err


# A local Ray takes ~13 s to start on a 2-core machine; it runs in the normal suite all the same.
def test_ray_protect_and_recover_match_serial(capsys, tmp_path, photos, ring):
    ray = pytest.importorskip("ray")
    src, originals = photos
    serial, distributed, back = tmp_path / "serial", tmp_path / "ray", tmp_path / "back"
    code, _, _ = run(capsys, "protect", src, "-o", serial, "--keyring", ring, *FAST)
    assert code == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code, stdout, _ = run(capsys, "protect", src, "-o", distributed, "--keyring", ring,
                              "--json", *FAST, "--ray")
        assert code == 0 and json.loads(stdout)["done"] == 3
        code, stdout, _ = run(capsys, "recover", distributed, "-o", back, "--keyring", ring,
                              "--no-progress", "--ray", "--json")
        assert code == 0 and json.loads(stdout)["done"] == 3
    finally:
        ray.shutdown()
    for rel, arr in originals.items():  # PGD is seeded by key and image id: same pixels
        assert np.array_equal(np.asarray(Image.open(distributed / rel)),
                              np.asarray(Image.open(serial / rel)))
        assert np.array_equal(np.asarray(Image.open(back / rel)), arr)
    entries = [e for e in read_manifest(distributed) if e["kind"] == "item"]
    assert sorted(e["input"] for e in entries) == sorted(originals.keys() - {"b.png"} | {"b.jpg"})


def test_class_wise_poison_from_class_folders(tmp_path, ring, capsys):
    """--poison grating: one class per subfolder, each image gets its class's grating (same
    as the library's dataset call with the same key), stray images are refused with a
    reason, and recovery is bit-exact."""
    from trustgain.keys import KeyRing
    from trustgain.protection import poison
    from trustgain.protection.api import ProtectConfig
    from trustgain.protection.batch_jobs import KEY_PURPOSE, KEY_STAGE

    rng = np.random.default_rng(1)
    src = tmp_path / "data"
    originals = {}
    for cls in ("cats", "dogs", "owls"):
        (src / cls).mkdir(parents=True)
        for k in range(2):
            arr = rng.integers(20, 236, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(src / cls / f"{k}.png")
            originals[f"{cls}/{k}.png"] = arr
    Image.fromarray(originals["cats/0.png"]).save(src / "stray.png")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "protect", src, "-o", out, "--method", "poison",
                            "--poison", "grating", "--keyring", ring, "--json", *FAST)
    assert code == 1  # the stray image is refused, the rest is done
    summary = json.loads(stdout)
    assert summary["done"] == 6 and summary["refused"] == 1
    assert "class folder" in err or "class folder" in stdout
    key = KeyRing.load(ring).derive(KEY_STAGE, KEY_PURPOSE).material
    cfg = ProtectConfig(method="poison", eps=8, extra={"poison": "grating", "n_classes": 3})
    pats = poison.grating_patterns(key, cfg, 3, (3, 32, 32))
    for rel, arr in originals.items():
        got = np.asarray(Image.open(out / rel))
        want = np.rint(pats[("cats", "dogs", "owls").index(rel.split("/")[0])].numpy()
                       .transpose(1, 2, 0) * 255).astype(int)
        assert np.array_equal(got.astype(int) - arr.astype(int), want), rel
    back = tmp_path / "back"
    code, _, _ = run(capsys, "recover", out, "-o", back, "--keyring", ring, "--no-progress")
    assert code == 0
    for rel, arr in originals.items():
        assert np.array_equal(np.asarray(Image.open(back / rel)), arr)


def test_class_wise_poison_needs_class_folders_and_method(tmp_path, photos, ring, capsys):
    src, _ = photos
    code, _, err = run(capsys, "protect", src, "-o", tmp_path / "o", "--method", "poison",
                       "--poison", "shortcut", "--keyring", ring, *FAST)
    assert code == 2 and "one subfolder per class" in err
    code, _, err = run(capsys, "protect", src, "-o", tmp_path / "o", "--poison", "grating",
                       "--keyring", ring, *FAST)
    assert code == 2 and "--poison needs --method poison" in err


def test_surrogate_weights_from_the_command_line(capsys, tmp_path, photos, ring):
    from trustgain.protection import surrogates as S

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    folders = []
    for arch in ("cnn", "mlp"):
        folder = tmp_path / arch
        S.save({arch: S.train(arch, x, np.repeat([0, 1], 4), epochs=1)}, folder,
               meta={"n_classes": 2, "channels": 3})
        folders += ["--surrogate", folder]
    src, _ = photos
    code, _, err = run(capsys, "protect", src, "-o", tmp_path / "o", *folders,
                       "--weight", "1", *FAST)
    assert code == 2 and "1 --weight for 2 --surrogate" in err
    code, _, err = run(capsys, "protect", src, "-o", tmp_path / "o", *folders,
                       "--weight", "nan", "--weight", "1", *FAST)
    assert code == 2 and "not a finite number" in err
    code, _, _ = run(capsys, "protect", src, "-o", tmp_path / "o", *folders, "--weight", "1",
                     "--weight", "0.5", "--keyring", ring, *FAST)
    assert code == 0
    manifest = (tmp_path / "o" / "trustgain-manifest.jsonl").read_text()
    header = json.loads(manifest.splitlines()[0])
    assert header["settings"]["config"]["weights"] == [1.0, 0.5]  # a resume keeps them
