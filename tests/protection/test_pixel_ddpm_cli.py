"""The pixel DDPM trainer's command line against bad input: output folders it must not replace,
bad numbers, devices, divergence, 16-bit data, resume mismatches, interrupts."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch
from PIL import Image

from trustgain.devices import device_problem
from trustgain.errors import OutputWriteError, TrustgainError
from trustgain.protection import pixel_ddpm, pixel_ddpm_cli, pixel_ddpm_output, pixel_ddpm_train

TINY = ["--size", "16", "--width", "8", "--batch", "2", "--no-progress"]
KW = {"steps": 3, "batch": 2, "width": 8, "checkpoint_every": 1, "progress": False}


@pytest.fixture
def imgs(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


def _run(capsys, *args: str) -> tuple[int, str]:
    """``main`` with ``args``: (exit code, stderr); usage errors give argparse's code 2."""
    try:
        rc = pixel_ddpm.main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _no_data_load(monkeypatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("the data should not load")
    monkeypatch.setattr(pixel_ddpm_cli, "named_images", refuse)  # what the command calls


@pytest.mark.parametrize("bad", [
    ["--lr", "inf"], ["--lr", "nan"], ["--lr", "0"], ["--lr", "-1e-3"], ["--lr", "x"],
    ["--steps", "0"], ["--steps", "-5"], ["--batch", "0"], ["--size", "0"], ["--size", "30"],
    ["--width", "3"], ["--width", "0"], ["--threads", "0"], ["--checkpoint-every", "0"],
    ["--max-timestep", "0"], ["--max-timestep", "1000"], ["--seed", "-1"], ["--steps", "1.5"],
])
def test_bad_numbers_are_usage_errors(tmp_path, imgs, capsys, monkeypatch, bad):
    _no_data_load(monkeypatch)
    rc, err = _run(capsys, "--data", imgs, "-o", tmp_path / "m", *bad)
    assert rc == 2 and f"argument {bad[0]}:" in err.splitlines()[-1]
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:99", "nonsense"])
def test_unusable_device_is_a_usage_error_before_anything_loads(tmp_path, imgs, capsys,
                                                                 monkeypatch, device):
    if device_problem(device) is None:  # pragma: no cover
        pytest.skip(f"{device} exists here")
    _no_data_load(monkeypatch)
    rc, err = _run(capsys, "--data", imgs, "-o", tmp_path / "m", "--device", device)
    assert rc == 2 and f"--device '{device}'" in err.splitlines()[-1]


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_holding_the_data_is_never_replaced(tmp_path, imgs, capsys, monkeypatch,
                                                     force):
    _no_data_load(monkeypatch)
    sub = imgs / "sub"
    sub.mkdir()
    Image.new("RGB", (20, 20)).save(sub / "b.png")
    flags = ["--force"] if force else []
    for out in (imgs, tmp_path, sub):
        rc, err = _run(capsys, "--data", imgs, "-o", out, *TINY, *flags)
        assert rc == 1 and "holds the training data" in _one_line(err)
    assert sorted(p.name for p in imgs.rglob("*")) == ["a.png", "b.png", "sub"]


def test_the_current_folder_is_never_replaced(tmp_path, imgs, capsys, monkeypatch):
    _no_data_load(monkeypatch)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (work, tmp_path):
        rc, err = _run(capsys, "--data", imgs, "-o", out, "--force", *TINY)
        assert rc == 1 and "current folder" in _one_line(err)
    assert work.is_dir()


def test_a_foreign_folder_needs_force_and_then_is_replaced(tmp_path, imgs, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    rc, err = _run(capsys, "--data", imgs, "-o", other, "--steps", "2", *TINY)
    line = _one_line(err)
    assert rc == 1 and "not empty" in line and "--force" in line and "overwrite=True" not in line
    assert (other / "notes.txt").read_text() == "keep me"
    assert not (other / pixel_ddpm.CHECKPOINT_NAME).exists()
    rc, _ = _run(capsys, "--data", imgs, "-o", other, "--steps", "2", "--force", *TINY)
    assert rc == 0 and (other / "unet").is_dir() and not (other / "notes.txt").exists()


def test_an_existing_model_says_pass_force(tmp_path, imgs, capsys):
    out = tmp_path / "m"
    assert _run(capsys, "--data", imgs, "-o", out, "--steps", "1", *TINY)[0] == 0
    before = (out / "unet" / "config.json").read_bytes()
    rc, err = _run(capsys, "--data", imgs, "-o", out, "--steps", "1", *TINY)
    line = _one_line(err)
    assert rc == 1 and "--force" in line and "overwrite=True" not in line
    assert (out / "unet" / "config.json").read_bytes() == before
    assert _run(capsys, "--data", imgs, "-o", out, "--steps", "1", "--force", *TINY)[0] == 0


def test_a_file_at_out_or_among_its_parents_is_refused(tmp_path, imgs, capsys):
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "m"):
        rc, err = _run(capsys, "--data", imgs, "-o", out, "--force", *TINY)
        assert rc == 1 and "is a file" in _one_line(err)
    assert (tmp_path / "f").read_text() == "x"


def test_an_unwritable_output_fails_before_the_data_loads(tmp_path, imgs, capsys, monkeypatch):
    _no_data_load(monkeypatch)
    out = tmp_path / "ro"
    out.mkdir()
    real = pixel_ddpm_output.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):  # what a read-only folder does, even for root
        if dir is not None and os.fspath(dir) == os.fspath(out):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(pixel_ddpm_output.tempfile, "mkstemp", mkstemp)
    rc, err = _run(capsys, "--data", imgs, "-o", out, *TINY)
    assert rc == 1 and "cannot write" in _one_line(err) and "Permission denied" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_fails_before_training(tmp_path, imgs, capsys):  # pragma: no cover
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        rc, err = _run(capsys, "--data", imgs, "-o", out, *TINY)
    finally:
        out.chmod(0o755)
    assert rc == 1 and "cannot write" in _one_line(err)


def test_divergence_fails_and_writes_no_model(tmp_path, imgs, capsys):
    out = tmp_path / "m"
    rc, err = _run(capsys, "--data", imgs, "-o", out, "--lr", "1e30", "--steps", "5", *TINY)
    line = _one_line(err)
    assert rc == 1 and "diverged" in line and "no model was written" in line
    assert not (out / "unet").exists()
    data = np.random.default_rng(0).random((4, 1, 16, 16)).astype(np.float32)
    with pytest.raises(TrustgainError, match="diverged"):
        pixel_ddpm.train_ddpm(data, tmp_path / "lib", **{**KW, "lr": 1e30})
    assert not (tmp_path / "lib" / "unet").exists()


def test_the_library_refuses_bad_numbers_and_non_finite_data(tmp_path):
    data = np.random.default_rng(0).random((4, 1, 16, 16)).astype(np.float32)
    for bad in ({"lr": float("nan")}, {"lr": float("inf")}, {"steps": 0}, {"batch": -1},
                {"width": 6}, {"checkpoint_every": 0}, {"device": "tpu"}):
        with pytest.raises(TrustgainError):
            pixel_ddpm.train_ddpm(data, tmp_path / "m", **{**KW, **bad})
    data[0, 0, 0, 0] = np.nan
    with pytest.raises(TrustgainError, match=r"\[0, 1\]"):
        pixel_ddpm.train_ddpm(data, tmp_path / "m", **KW)
    assert not (tmp_path / "m").exists()


def test_resume_refuses_other_settings_naming_them(tmp_path, imgs, capsys):
    out = tmp_path / "m"
    args = ["--data", imgs, "-o", out, "--steps", "3", "--checkpoint-every", "1", *TINY]
    images = pixel_ddpm.folder_images(imgs, size=16, channels=3)
    pixel_ddpm.train_ddpm(images, out, stop_after=1, data_paths=[imgs], **KW)
    for extra, named in ((["--width", "16"], "--width 8 (this run: 16)"),
                         (["--lr", "1e-3"], "--lr 0.002 (this run: 0.001)"),
                         (["--batch", "4"], "--batch 2 (this run: 4)")):
        rc, err = _run(capsys, *args, *extra)
        line = _one_line(err)
        assert rc == 1 and named in line and "--force" in line
    Image.new("RGB", (24, 24), "red").save(imgs / "new.png")
    rc, err = _run(capsys, *args)
    assert rc == 1 and "training data" in _one_line(err)
    (imgs / "new.png").unlink()
    assert _run(capsys, *args)[0] == 0 and (out / "unet").is_dir()


def test_force_starts_over_instead_of_resuming(tmp_path):
    data = np.random.default_rng(0).random((4, 1, 16, 16)).astype(np.float32)
    part = tmp_path / "part"
    pixel_ddpm.train_ddpm(data, part, stop_after=2, **KW)
    pixel_ddpm.train_ddpm(data, part, **{**KW, "width": 4}, overwrite=True)
    assert pixel_ddpm.load_ddpm(part).unet.config.block_out_channels == [4, 8, 16]


def test_a_run_stopped_after_its_last_checkpoint_saves_on_rerun(tmp_path):
    data = np.random.default_rng(0).random((4, 1, 16, 16)).astype(np.float32)
    whole = pixel_ddpm.train_ddpm(data, tmp_path / "whole", **KW)
    part = tmp_path / "part"
    pixel_ddpm.train_ddpm(data, part, stop_after=3, **KW)  # killed while saving the model
    assert not (part / "unet").exists()
    pixel_ddpm.train_ddpm(data, part, **KW)
    a = pixel_ddpm.load_ddpm(whole).unet.state_dict()
    b = pixel_ddpm.load_ddpm(part).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (part / pixel_ddpm.CHECKPOINT_NAME).exists()


def test_ctrl_c_keeps_the_checkpoint_and_the_rerun_resumes(tmp_path, imgs, capsys,
                                                           monkeypatch):
    out = tmp_path / "m"
    real = pixel_ddpm_train.write_atomic
    written = []

    def write_then_interrupt(path, data, **kw):
        real(path, data, **kw)
        if path.name == pixel_ddpm.CHECKPOINT_NAME:
            written.append(torch.load(path, weights_only=True)["step"])
            raise KeyboardInterrupt

    monkeypatch.setattr(pixel_ddpm_train, "write_atomic", write_then_interrupt)  # checkpoints
    args = ["--data", imgs, "-o", out, "--steps", "5", "--checkpoint-every", "2", *TINY]
    rc, err = _run(capsys, *args)
    assert rc == 130 and written == [2]
    assert _one_line(err) == (f"interrupted; checkpoint kept at {out / pixel_ddpm.CHECKPOINT_NAME}"
                              " (rerun the same command to resume)")
    monkeypatch.setattr(pixel_ddpm_train, "write_atomic", real)
    assert _run(capsys, *args)[0] == 0 and (out / "unet").is_dir()
    assert not (out / pixel_ddpm.CHECKPOINT_NAME).exists()


def test_ctrl_c_before_any_checkpoint(tmp_path, imgs, capsys, monkeypatch):
    def interrupt(*_a, **_k):
        raise KeyboardInterrupt
    monkeypatch.setattr(pixel_ddpm_cli, "named_images", interrupt)
    rc, err = _run(capsys, "--data", imgs, "-o", tmp_path / "m", *TINY)
    assert rc == 130 and _one_line(err) == "interrupted; no checkpoint was written yet"


def test_a_failed_final_write_keeps_the_old_model(tmp_path, monkeypatch):
    from diffusers import DDPMPipeline

    data = np.random.default_rng(0).random((4, 1, 16, 16)).astype(np.float32)
    out = pixel_ddpm.train_ddpm(data, tmp_path / "m", **KW)
    before = pixel_ddpm.load_ddpm(out).unet.state_dict()

    def full_disk(self, path, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DDPMPipeline, "save_pretrained", full_disk)
    with pytest.raises(OutputWriteError, match="No space left"):
        pixel_ddpm.train_ddpm(data, out, **{**KW, "seed": 1}, overwrite=True)
    after = pixel_ddpm.load_ddpm(out).unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_16_bit_grey_is_read_at_full_precision_and_32_bit_is_skipped(tmp_path, capsys):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "float.tif")
    crops = pixel_ddpm.folder_images(tmp_path, size=32, channels=1, crops_per_image=1)
    assert crops.shape == (1, 1, 32, 32)
    np.testing.assert_allclose(crops[0, 0], ramp / 65535, atol=1e-6)
    assert f"skipping {tmp_path / 'float.tif'}: 32-bit float" in capsys.readouterr().err
    rgb = pixel_ddpm.folder_images(tmp_path, size=16, channels=3, crops_per_image=2)
    assert rgb.shape == (2, 3, 16, 16) and rgb.max() <= 1 and rgb.max() > 0.5


def test_help_has_examples_with_line_continuations(capsys):
    with pytest.raises(SystemExit) as exc:
        pixel_ddpm.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "examples:" in out and "--checkpoint-every" in out
    assert any(line.endswith(" \\") for line in out.splitlines())
