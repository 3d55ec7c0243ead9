"""The surrogate training command on bad input: every problem is one line, found before
training where it can be, and the output folder appears whole or not at all."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from trustgain.errors import InputError, OutputWriteError
from trustgain.protection import surrogates as S
from trustgain.protection import surrogates_cli, surrogates_files

FAST = ["--archs", "mlp", "--epochs", "1", "--no-progress"]


def _png(path, colour=0, size=40, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 100, (size, size, 3), dtype=np.uint8)
    img[..., colour] = 250
    Image.fromarray(img).save(path)


def _classes(root, names=("cats", "dogs"), n=3):
    for c, name in enumerate(names):
        for i in range(n):
            _png(root / name / f"{i}.png", colour=c, seed=i)
    return root


def _run(capsys, *argv):
    rc = S.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training starts: these problems must be found before it."""
    def boom(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(surrogates_cli, "train", boom)  # what the command calls


def test_hidden_folders_are_skipped_and_the_saved_classes_are_those_trained(tmp_path, capsys):
    data = _classes(tmp_path / "data")
    _png(data / ".ipynb_checkpoints" / "0.png")  # hidden: not a class
    (data / ".DS_Store").mkdir()
    (data / "cats" / "._0.png").write_bytes(b"AppleDouble")  # hidden file: not read
    rc, _, err = _run(capsys, "--data", data, "-o", tmp_path / "sur", *FAST)
    assert rc == 0, err
    assert "skipping" not in err
    doc = json.loads((tmp_path / "sur" / S.CONFIG_NAME).read_text())
    assert doc["classes"] == ["cats", "dogs"] and doc["n_classes"] == 2
    (model,) = S.load(tmp_path / "sur")
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "sur"]  # no temp left


@pytest.mark.parametrize("content", [None, b"not an image"])
def test_a_class_folder_without_a_readable_image_is_refused(tmp_path, capsys, content,
                                                             no_training):
    data = _classes(tmp_path / "data")
    (data / "empty").mkdir()
    if content is not None:
        (data / "empty" / "x.png").write_bytes(content)
    rc, _, err = _run(capsys, "--data", data, "-o", tmp_path / "sur", *FAST)
    assert rc == 1 and not (tmp_path / "sur").exists()
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: class folder") and str(data / "empty") in last


def test_images_beside_class_folders_are_refused(tmp_path, capsys, no_training):
    data = _classes(tmp_path / "data")
    _png(data / "stray.png")
    rc, _, err = _run(capsys, "--data", data, "-o", tmp_path / "sur", *FAST)
    assert rc == 1 and "stray.png" in err and len(err.strip().splitlines()) == 1


def test_16_bit_images_are_refused_naming_the_file(tmp_path, capsys, no_training):
    data = _classes(tmp_path / "data")
    deep = data / "dogs" / "deep.png"
    Image.fromarray(np.full((40, 40), 1000, np.uint16)).save(deep)
    assert Image.open(deep).mode.startswith("I")
    with pytest.raises(InputError, match="16-bit") as info:
        S.folder_dataset(data)
    assert str(deep) in str(info.value)
    rc, _, err = _run(capsys, "--data", data, "-o", tmp_path / "sur", *FAST)
    assert rc == 1 and str(deep) in err and len(err.strip().splitlines()) == 1


def test_flat_folder_notes_images_too_small_to_crop(tmp_path, capsys):
    for i in range(2):
        _png(tmp_path / "flat" / f"big{i}.png", colour=i, size=128, seed=i)
    _png(tmp_path / "flat" / "small.png", size=40)
    x, y, names = S.folder_dataset(tmp_path / "flat", per_image=4)
    assert names == ["big0.png", "big1.png"] and x.shape == (8, 32, 32, 3)
    assert np.array_equal(np.bincount(y), [4, 4])
    assert "small.png" in capsys.readouterr().err


def test_errors_and_interrupts_are_one_line(tmp_path, capsys, monkeypatch):
    rc, _, err = _run(capsys, "--data", tmp_path / "missing", "-o", tmp_path / "sur", *FAST)
    assert rc == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(surrogates_cli, "train", interrupt)
    rc, _, err = _run(capsys, "--data", _classes(tmp_path / "data"), "-o", tmp_path / "sur",
                      *FAST)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "sur").exists()


@pytest.mark.parametrize("bad", [
    ["--epochs", "0"], ["--epochs", "two"], ["--batch", "0"], ["--lr", "nan"],
    ["--lr", "inf"], ["--lr", "-1"], ["--seed", "-1"], ["--per-image", "0"],
    ["--threads", "0"], ["--archs", "cnn,alexnet"], ["--archs", "cnn,"],
    ["--archs", "cnn,cnn"], ["--device", "nonsense"],
])
def test_bad_options_are_usage_errors_before_anything_runs(tmp_path, capsys, bad, no_training):
    with pytest.raises(SystemExit) as info:
        S.main(["--data", str(tmp_path), "-o", str(tmp_path / "sur"), *bad])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {bad[0]}" in err and "Traceback" not in err


def test_cuda_on_a_machine_without_it_is_a_usage_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        S.main(["--data", str(tmp_path), "-o", str(tmp_path / "sur"), "--device", "cuda"])
    assert "use --device cpu" in capsys.readouterr().err


def test_output_is_checked_before_training(tmp_path, capsys, no_training):
    data = _classes(tmp_path / "data")
    (tmp_path / "file").write_text("x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    old = tmp_path / "old"
    old.mkdir()
    (old / S.CONFIG_NAME).write_text("{}")
    cases = {tmp_path / "file": "is a file", tmp_path / "file" / "sub": "is a file",
             tmp_path / "notes": "not surrogates", old: "--force", data / "sur": "inside"}
    for out, message in cases.items():
        rc, _, err = _run(capsys, "--data", data, "-o", out, *FAST)
        assert rc == 1 and message in err and len(err.strip().splitlines()) == 1, (out, err)
    rc, _, err = _run(capsys, "--data", data, "-o", tmp_path / "notes", "--force", *FAST)
    assert rc == 1 and "todo.txt" in err  # never replaced, even with --force
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_force_replaces_a_folder_whole(tmp_path, capsys):
    data = _classes(tmp_path / "data")
    out = tmp_path / "sur"
    assert _run(capsys, "--data", data, "-o", out, "--archs", "cnn,mlp", "--epochs", "1",
                "--no-progress")[0] == 0
    rc, _, err = _run(capsys, "--data", data, "-o", out, *FAST)
    assert rc == 1 and "--force" in err
    assert _run(capsys, "--data", data, "-o", out, "--force", *FAST)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["mlp.safetensors", S.CONFIG_NAME]
    assert list(S.load_named(out)) == ["mlp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "sur"]


def test_a_failed_write_leaves_the_old_folder_untouched(tmp_path, monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    model = S.train("mlp", x, np.repeat([0, 1], 4), epochs=1)
    out = S.save_folder({"mlp": model}, tmp_path / "sur", meta={"n_classes": 2})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def flaky(path, data, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OutputWriteError(path, OSError(28, "No space left on device"))
        return write_atomic(path, data, **kwargs)

    write_atomic = surrogates_files.write_atomic
    monkeypatch.setattr(surrogates_files, "write_atomic", flaky)  # what save_folder calls
    with pytest.raises(OutputWriteError, match="No space"):
        S.save_folder({"cnn": model, "mlp": model}, out, meta={"n_classes": 2}, replace=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sur"]


def test_progress_bar_and_no_progress(tmp_path, capsys, monkeypatch):
    data = _classes(tmp_path / "data")
    monkeypatch.delenv("TRUSTGAIN_NO_PROGRESS", raising=False)
    rc, _, err = _run(capsys, "--data", data, "-o", tmp_path / "a", "--archs", "mlp",
                      "--epochs", "1")
    assert rc == 0 and "mlp:" in err  # the bar's description
    monkeypatch.setenv("TRUSTGAIN_NO_PROGRESS", "1")
    rc, _, err = _run(capsys, "--data", data, "-o", tmp_path / "b", "--archs", "mlp",
                      "--epochs", "1")
    assert rc == 0 and "mlp:" not in err


def test_help_has_texts_and_examples(capsys):
    with pytest.raises(SystemExit):
        S.main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--force" in out and "passes over the data" in out
    assert "trustgain protect" in out


def test_train_refuses_bad_numbers_and_divergence():
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 4)
    for kwargs in ({"epochs": 0}, {"batch": 0}, {"lr": math.nan}):
        with pytest.raises(S.ConfigError):
            S.train("mlp", x, y, **kwargs)
    with pytest.raises(S.ConfigError, match="diverged"):
        S.train("mlp", x, y, epochs=2, batch=4, lr=1e30)


def test_load_names_a_model_file_that_does_not_fit_its_config(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    S.save_folder({"mlp": S.train("mlp", x, np.repeat([0, 1], 4), epochs=1)}, tmp_path / "s",
                  meta={"n_classes": 2, "channels": 3})
    doc = json.loads((tmp_path / "s" / S.CONFIG_NAME).read_text())
    doc["n_classes"] = 3
    (tmp_path / "s" / S.CONFIG_NAME).write_text(json.dumps(doc))
    with pytest.raises(InputError, match="does not fit"):
        S.load(tmp_path / "s")
