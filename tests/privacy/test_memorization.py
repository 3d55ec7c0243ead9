"""privacy.memorization: near-copies flagged, calibration, index files, the stage record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trustgain import GenerationRequest, Item, RunContext
from trustgain.digest import canonical_json
from trustgain.errors import AuditFailed, ConfigError, InputError, OutputExistsError
from trustgain.privacy.memorization import (
    MemorizationGuard,
    build_index,
    calibrate,
    load_index,
)


def _blobs(n: int, seed: int) -> np.ndarray:
    """Smooth random colour images (like generations, unlike white noise)."""
    rng = np.random.default_rng(seed)
    small = rng.random((n, 4, 4, 3))
    return np.stack(
        [np.asarray(Image.fromarray((s * 255).astype(np.uint8)).resize((32, 32))) for s in small]
    )


@pytest.fixture(scope="module")
def calibrated():
    train = _blobs(50, 0)
    index = calibrate(build_index(train, k=5), _blobs(199, 1), target_rate=0.01)
    return train, index


def test_copies_flagged_fresh_images_not(calibrated):
    train, index = calibrated
    rng = np.random.default_rng(2)
    copies = np.clip(train[:20] * 0.8 + 20 + rng.normal(0, 4, train[:20].shape), 0, 255)
    assert index.flags(copies.astype(np.uint8)).all()  # darker, noisy copies still caught
    assert index.flags(Image.fromarray(train[3]).resize((64, 64))).all()  # upscaled copy
    assert index.flags(_blobs(300, 3)).mean() <= 0.03
    assert index.calibration == {"target_rate": 0.01, "n": 199, "rank": 2,
                                 "flagged_share": pytest.approx(1 / 199)}


def test_calibration_needs_enough_generations():
    index = build_index(_blobs(5, 0), k=2)
    with pytest.raises(InputError, match="cannot support a false-flag rate"):
        calibrate(index, _blobs(50, 1), target_rate=0.01)
    with pytest.raises(ConfigError):
        calibrate(index, _blobs(50, 1), target_rate=1.5)
    with pytest.raises(ConfigError, match="not calibrated"):
        index.flags(_blobs(1, 1))


def test_index_file_round_trip(tmp_path, calibrated):
    _, index = calibrated
    path = index.save(tmp_path / "idx.npz")
    back = load_index(path)
    assert back.threshold == index.threshold and back.digest == index.digest
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # as private as the training data
    with pytest.raises(OutputExistsError):
        index.save(path)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(InputError, match="not a memorization index"):
        load_index(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="no such"):
        load_index(tmp_path / "missing.npz")


def _run(stage, outputs):
    item = Item(request=GenerationRequest(prompt="x"), outputs=tuple(outputs))
    return stage(item, RunContext(run_id="0" * 32, stage=stage.name, generator=None))


def test_stage_records_flags_never_content(tmp_path, calibrated):
    train, index = calibrated
    path = index.save(tmp_path / "idx.npz")
    outs = [Image.fromarray(train[7]), Image.fromarray(_blobs(1, 9)[0]), "a caption"]
    result = _run(MemorizationGuard(index=str(path), on_flag="record"), outs)
    p = result.params
    assert p["flagged"] == 1 and [o["flagged"] for o in p["outputs"]] == [True, False]
    assert p["outputs"][0]["distance"] < 0.05
    record = canonical_json(dict(p)).decode()
    assert len(record) < 1000  # distances and flags only, no pixels or neighbour ids
    assert "neighbour" not in record and "nearest" not in record
    with pytest.raises(AuditFailed, match="near-copies"):
        _run(MemorizationGuard(index=str(path)), outs)
    quiet = _run(MemorizationGuard(index=str(path)), outs[1:])
    assert quiet.params["flagged"] == 0


def test_stage_without_index_or_images(tmp_path, calibrated):
    result = _run(MemorizationGuard(), [Image.new("RGB", (8, 8))])
    assert not result.applied and "no memorization index" in result.reason
    with pytest.raises(InputError, match="not found"):
        _run(MemorizationGuard(index=str(tmp_path / "nope.npz")), [])
    uncal = build_index(_blobs(3, 0), k=2).save(tmp_path / "u.npz")
    with pytest.raises(ConfigError, match="not calibrated"):
        _run(MemorizationGuard(index=str(uncal)), [])
    _, index = calibrated
    path = index.save(tmp_path / "i.npz")
    none = _run(MemorizationGuard(index=str(path)), ["text only"])
    assert not none.applied and none.reason == "no image outputs"
    with pytest.raises(ValueError):
        MemorizationGuard(on_flag="ignore")


def test_stage_contract_when_registered(monkeypatch, sd_pipe, keyring):
    """The shared contract test, with the stage registered as the lead will register it."""
    import test_stage_contract as contract

    from trustgain import stage as stage_mod

    name = "privacy.memorization"
    monkeypatch.setitem(stage_mod.BUILTIN_STAGES, name,
                        "trustgain.privacy.memorization:MemorizationGuard")
    contract.test_stage_contract(name, sd_pipe, keyring)


def test_reference_set_catches_copies_of_duplicated_images(tmp_path):
    """Training images with near-duplicates among themselves hide their copies from the
    Carlini ratio (the k nearest training images are all close); a public reference does not."""
    rng = np.random.default_rng(4)
    base = _blobs(40, 0)
    dupes = [np.clip(base[:10] + rng.normal(0, 3, base[:10].shape), 0, 255).astype(np.uint8)
             for _ in range(5)]
    train = np.concatenate([base, *dupes])
    held_out, fresh = _blobs(199, 1), _blobs(300, 3)
    copies = np.clip(base[:10] + rng.normal(0, 3, base[:10].shape), 0, 255).astype(np.uint8)
    plain = calibrate(build_index(train, k=5), held_out, target_rate=0.01)
    ref = calibrate(build_index(train, reference=_blobs(400, 5), k=5), held_out,
                    target_rate=0.01)
    assert plain.flags(copies).mean() < 0.5
    assert ref.flags(copies).all() and ref.flags(base[10:]).all()
    assert ref.flags(fresh).mean() <= 0.03
    back = load_index(ref.save(tmp_path / "ref.npz"))
    assert back.digest == ref.digest and back.reference.dtype == np.float16
    assert (back.flags(copies) == ref.flags(copies)).all()
    assert back.space.endswith("400 reference images")
    with pytest.raises(InputError, match="fewer than k"):
        build_index(train, reference=_blobs(3, 6), k=5)


def test_rgb_channels_and_old_format_refused(tmp_path):
    index = build_index(_blobs(5, 0), k=2, channels="rgb")
    assert index.features.shape == (5, 32 * 32 * 3)
    assert build_index(_blobs(5, 0), k=2).features.shape == (5, 32 * 32)
    with pytest.raises(ConfigError, match="channels"):
        build_index(_blobs(5, 0), channels="grey")
    meta = np.array('{"format": "trustgain.memorization-index/1", "size": 32, "k": 2}')
    np.savez(tmp_path / "old.npz", features=index.features, meta=meta)
    with pytest.raises(InputError, match="format 1"):
        load_index(tmp_path / "old.npz")


def test_cli_builds_the_index_and_flags_copies(tmp_path, capsys):
    import json
    import os

    from trustgain.cli.main import main

    def run(*args):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    def folder(name, images):
        d = tmp_path / name
        d.mkdir()
        for i, im in enumerate(images):
            Image.fromarray(np.ascontiguousarray(im)).save(d / f"{i:03d}.png")
        return d

    members = folder("members", _blobs(30, 0))
    reference = folder("public", _blobs(100, 5))
    calib = folder("calib", _blobs(199, 1))
    rng = np.random.default_rng(3)
    copies = np.clip(_blobs(30, 0)[:5] * 0.9 + rng.normal(0, 3, (5, 32, 32, 3)), 0, 255)
    outputs = folder("outputs", [*copies.astype(np.uint8), *_blobs(5, 9)])
    index = tmp_path / "guard.npz"
    args = ["audit", "memorization-index", "--members", str(members), "--reference",
            str(reference), "--calibration", str(calib), "--rate", "0.01", "-o", str(index),
            "--no-progress", "--json"]
    code, out, _ = run(*args)
    assert code == 0
    built = json.loads(out)
    assert built["members"] == 30 and built["reference"] == 100 and built["calibration"] == 199
    assert os.stat(index).st_mode & 0o777 == 0o600
    before = index.read_bytes()
    code, _, err = run(*args)
    assert code == 1 and "exists" in err and index.read_bytes() == before
    code, out, _ = run("audit", "memorization", "--index", str(index), str(outputs),
                       "--no-progress", "--json")
    assert code == 1  # something flagged
    flags = {Path(r["file"]).name: r["flagged"] for r in json.loads(out)["images"]}
    assert [flags[f"{i:03d}.png"] for i in range(5)] == [True] * 5
    assert sum(flags[f"{i:03d}.png"] for i in range(5, 10)) <= 1
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run("audit", "memorization", "--index", str(index), str(empty))
    assert code == 1 and "holds no images" in err and len(err.strip().splitlines()) <= 2
