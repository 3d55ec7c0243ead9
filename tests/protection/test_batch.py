"""The resumable batch runner: manifest, skip/redo, never touching inputs, refusals, locking."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trustgain.errors import InputError
from trustgain.protection.batch import Produced, Refused, run_batch
from trustgain.protection.batch_jobs import decode, png_bytes
from trustgain.protection.batch_manifest import MANIFEST_NAME, BatchError, Manifest, read_manifest


@dataclass(frozen=True)
class Invert:
    """A deterministic stand-in job: the negative of each 8-bit RGB/grayscale image."""

    tag: str = "v1"
    delay: float = 0.0
    name = "invert"
    output_suffix = ".png"
    extra_suffixes = ()
    companions = ()

    def settings(self):
        return {"tag": self.tag}

    def __call__(self, data, image_id, companions):
        try:
            pixels = decode(data, image_id)
        except InputError as exc:
            return Refused(str(exc))
        time.sleep(self.delay)
        return Produced(png_bytes(255 - pixels), info={"id": image_id})


@dataclass(frozen=True)
class ChunkedInvert(Invert):
    """Invert through ``call_many``, ``batch_size`` inputs per call (the serial chunked path)."""

    batch_size: int = 4
    calls: list = field(default_factory=list, compare=False, hash=False)

    def call_many(self, inputs):
        self.calls.append(len(inputs))
        return [Invert.__call__(self, *one) for one in inputs]


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def items(out: Path) -> list[dict]:
    return [e for e in read_manifest(out) if e["kind"] == "item"]


def test_runs_every_input_and_records_hashes(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 5)
    before = tree_digest(src)
    seen = []
    s = run_batch(src, out, Invert(), show_progress=False,
                  on_result=lambda rel, status, _: seen.append((rel, status)))
    assert (s.done, s.skipped, s.refused) == (5, 0, 0) and len(seen) == 5
    assert tree_digest(src) == before
    outputs = tree_digest(out)
    for e in items(out):
        assert e["status"] == "ok"
        assert e["input_sha256"] == before[e["input"]]
        (name, sha), = e["files"].items()
        assert outputs[name] == sha
        got = np.asarray(Image.open(out / name))
        assert (got == 255 - np.asarray(Image.open(src / e["input"]))).all()
    assert read_manifest(out)[0]["settings"] == {"tag": "v1"}


def test_rerun_skips_done_and_leaves_outputs_alone(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 4)
    run_batch(src, out, Invert(), show_progress=False)
    inodes = {p: p.stat().st_ino for p in out.rglob("*.png")}
    s = run_batch(src, out, Invert(), show_progress=False)
    assert (s.done, s.skipped, s.refused) == (0, 4, 0)
    assert {p: p.stat().st_ino for p in out.rglob("*.png")} == inodes


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_in_input_folder_refused(tmp_path, where):
    src = tmp_path / "in"
    make_images(src, 2)
    before = tree_digest(src)
    out = src if where == "same" else src / "protected"
    with pytest.raises(BatchError, match="input folder") as info:
        run_batch(src, out, Invert(), show_progress=False)
    assert info.value.hint and tree_digest(src) == before


def test_input_inside_output_folder_is_fine_and_untouched(tmp_path):
    out = tmp_path / "out"
    src = out / "b"
    make_images(out, 4)  # out/a/..., out/b/...: the inputs are out/b/*
    before = tree_digest(out)
    s = run_batch(src, out, Invert(), show_progress=False)
    assert s.done == 2
    after = tree_digest(out)
    assert all(after[k] == v for k, v in before.items())


def test_file_in_the_way_is_refused_never_overwritten(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 3)
    (out / "a").mkdir(parents=True)
    (out / "a" / "img001.png").write_bytes(b"mine")
    s = run_batch(src, out, Invert(), show_progress=False)
    assert (s.done, s.refused) == (2, 1)
    assert s.refusals[0][0] == "a/img001.png" and "not written by this batch" in s.refusals[0][1]
    assert (out / "a" / "img001.png").read_bytes() == b"mine"


def test_output_changed_after_the_batch_is_refused(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 2)
    run_batch(src, out, Invert(), show_progress=False)
    (out / "b" / "img000.png").write_bytes(b"edited by hand")
    s = run_batch(src, out, Invert(), show_progress=False)
    assert (s.skipped, s.refused) == (1, 1) and "changed after" in s.refusals[0][1]
    assert (out / "b" / "img000.png").read_bytes() == b"edited by hand"


def test_deleted_output_or_changed_input_is_redone(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    paths = make_images(src, 3)
    run_batch(src, out, Invert(), show_progress=False)
    (out / "b" / "img000.png").unlink()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(paths[1])
    s = run_batch(src, out, Invert(), show_progress=False)
    assert (s.done, s.skipped, s.refused) == (2, 1, 0)
    assert (np.asarray(Image.open(out / "a" / "img001.png")) == 255).all()


def test_partial_item_after_a_crash_is_redone_and_temp_removed(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 2)
    with Manifest.open(out, job="invert", settings={"tag": "v1"}) as m:
        m.append({"kind": "start", "input": "b/img000.png", "files": ["b/img000.png"]})
    (out / "b").mkdir()
    (out / "b" / "img000.png").write_bytes(b"half-written by a killed run")
    (out / "b" / ".img000.png.k3j9x_2a.tmp").write_bytes(b"temp")
    (out / "b" / ".notours.png.abcdefgh.tmp").write_bytes(b"foreign")
    with open(out / MANIFEST_NAME, "ab") as fh:
        fh.write(b'{"kind": "item", "inp')  # a line torn by kill -9
    s = run_batch(src, out, Invert(), show_progress=False)
    assert (s.done, s.refused) == (2, 0)
    assert sorted(p.name for p in (out / "b").iterdir()) == [".notours.png.abcdefgh.tmp",
                                                             "img000.png"]
    assert Image.open(out / "b" / "img000.png").size == (16, 16)
    assert all(line.endswith("}") for line in (out / MANIFEST_NAME).read_text().splitlines())


def test_other_settings_refused_and_corrupt_manifest_refused(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 1)
    run_batch(src, out, Invert(), show_progress=False)
    with pytest.raises(BatchError, match="settings differing in tag"):
        run_batch(src, out, Invert(tag="v2"), show_progress=False)
    (out / MANIFEST_NAME).write_text("not json\n")
    with pytest.raises(BatchError, match="corrupt at line 1"):
        run_batch(src, out, Invert(), show_progress=False)


def test_one_batch_per_output_folder_at_a_time(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 1)
    with Manifest.open(out, job="invert", settings={"tag": "v1"}), \
            pytest.raises(BatchError, match="in use"):
        run_batch(src, out, Invert(), show_progress=False)


def test_bad_inputs_refused_with_reasons_and_the_rest_goes_on(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 2)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "photo.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(src / "gray.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)).save(src / "alpha.png")
    Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)).save(src / "deep.png")
    Image.fromarray(rgb).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(src / "palette.png")
    (src / "trunc.png").write_bytes((src / "gray.png").read_bytes()[:60])
    (src / "junk.png").write_bytes(b"not an image at all")
    Image.fromarray(rgb).save(src / "photo.png")  # its output is photo.jpg's output
    s = run_batch(src, out, Invert(), show_progress=False)
    reasons = dict(s.refusals)
    assert s.done == 4  # two RGB PNGs, the JPEG, the grayscale PNG
    assert (np.asarray(Image.open(out / "gray.png")) == 255 - rgb[..., 0]).all()
    assert "alpha" in reasons["alpha.png"] and "16-bit" in reasons["deep.png"]
    assert "CMYK" in reasons["cmyk.jpg"] and "palette" in reasons["palette.png"]
    assert "truncated" in reasons["trunc.png"] and "not an image" in reasons["junk.png"]
    assert "photo.jpg" in reasons["photo.png"] and "gray.png" not in reasons
    assert s.refused == 7
    refused = {e["input"]: e["reason"] for e in items(out) if e["status"] == "refused"}
    assert refused == reasons
    assert json.loads(json.dumps(s.as_dict()))["refused"] == 7


class FakeRay:
    """Just enough of Ray's task API to drive run_batch fast: results come back last-in
    first-out (out of order), each job pickled like Ray would."""

    class exceptions:  # mirrors ray.exceptions
        RayTaskError = RuntimeError

    def __init__(self):
        self.up, self.init_kwargs, self.submitted = False, None, 0

    def is_initialized(self):
        return self.up

    def init(self, **kwargs):
        self.up, self.init_kwargs = True, kwargs

    def shutdown(self):
        self.up = False

    def cluster_resources(self):
        return {"CPU": 2.0}

    def put(self, obj):
        import pickle

        return pickle.loads(pickle.dumps(obj))

    def remote(self, **_):
        fake = self

        class Remote:
            def __init__(self, fn):
                self.fn = fn

            def remote(self, *args):
                fake.submitted += 1
                return Ref(self.fn, args)

        return Remote

    def wait(self, refs, num_returns):
        return refs[-num_returns:], refs[:-num_returns]

    def get(self, ref):
        return ref.fn(*ref.args)


@dataclass(eq=False)
class Ref:
    fn: object
    args: tuple


@pytest.mark.parametrize(("job", "tasks"), [(Invert(), 13), (ChunkedInvert(batch_size=4), 4)])
def test_ray_path_writes_from_the_driver_out_of_order(tmp_path, monkeypatch, job, tasks):
    """One Ray task per input, or per chunk of ``batch_size`` for jobs with ``call_many``."""
    fake = FakeRay()
    monkeypatch.setitem(__import__("sys").modules, "ray", fake)
    src = tmp_path / "in"
    make_images(src, 12)
    (src / "junk.png").write_bytes(b"junk")
    s = run_batch(src, tmp_path / "ray", job, ray_address="local", workers=3,
                  show_progress=False)
    assert (s.done, s.refused) == (12, 1) and fake.submitted == tasks and not fake.up
    assert fake.init_kwargs["num_cpus"] == 3
    run_batch(src, tmp_path / "serial", Invert(), show_progress=False)
    got, want = tree_digest(tmp_path / "ray"), tree_digest(tmp_path / "serial")
    assert got.pop(MANIFEST_NAME) and want.pop(MANIFEST_NAME) and got == want
    order = [e["input"] for e in items(tmp_path / "ray")]
    assert sorted(order) == sorted(e["input"] for e in items(tmp_path / "serial"))
    assert order != sorted(order)  # results were settled as they came back


def test_chunked_jobs_settle_every_input_once_in_chunks(tmp_path):
    src = tmp_path / "in"
    make_images(src, 10)
    (src / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    job = ChunkedInvert(batch_size=4)
    s = run_batch(src, tmp_path / "out", job, show_progress=False)
    assert (s.done, s.refused) == (10, 1)
    assert job.calls == [4, 4, 3]  # the broken file is refused inside its chunk
    for path in sorted(src.rglob("img*.png")):
        out = tmp_path / "out" / path.relative_to(src)
        assert np.array_equal(np.asarray(Image.open(out)), 255 - np.asarray(Image.open(path)))
    again = ChunkedInvert(batch_size=4)
    s = run_batch(src, tmp_path / "out", again, show_progress=False)
    assert (s.done, s.skipped) == (0, 10) and again.calls == [1]  # only the refused one redone


def test_protect_job_refuses_only_the_image_a_batch_fails_on(monkeypatch):
    import io

    from trustgain.errors import InputError as Bad
    from trustgain.protection import ProtectConfig, api, batch_jobs

    def fake_batch(images, *, image_ids, **_):
        if "b.png" in image_ids:
            raise Bad("cannot take this one")
        return [(im, b"sealed") for im in images]

    monkeypatch.setattr(api, "protect_batch", fake_batch)
    monkeypatch.setattr(batch_jobs, "load_surrogates", lambda folders: [])
    job = batch_jobs.ProtectJob(config=ProtectConfig(), key=b"k" * 32, key_id="t", batch_size=8)
    inputs = []
    for name in ("a.png", "b.png", "c.png"):
        buf = io.BytesIO()
        Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(buf, format="PNG")
        inputs.append((buf.getvalue(), name, {}))
    out = job.call_many(inputs)
    assert [type(o).__name__ for o in out] == ["Produced", "Refused", "Produced"]
    assert "cannot take this one" in out[1].reason

