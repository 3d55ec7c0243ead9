"""``python -m trustgain.privacy.finetune_public``: OUT required, checked ints, a reused folder
must be this command's model with the same settings. Training itself is replaced by a stub."""

from __future__ import annotations

import json
import runpy
import sys

import pytest

from trustgain.errors import InputError
from trustgain.privacy import finetune_public as fp

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # main sets torch's thread count
PARTS = ("unet", "text_encoder", "tokenizer", "vae", "scheduler")


def _fake_model(out, steps=1800, batch=512, max_minutes=None, **log):
    """A folder shaped like one ``public_model`` wrote (no weights)."""
    for part in PARTS:
        (out / part).mkdir(parents=True)
    (out / "model_index.json").write_text("{}")
    record = {"made_by": fp.MADE_BY, "digits": list(fp.PUBLIC_DIGITS),
              "recipe": fp._recipe_record(fp._recipe(steps, batch, max_minutes)), **log}
    (out / "training.json").write_text(json.dumps({k: v for k, v in record.items()
                                                   if v is not None}))
    return out


@pytest.fixture()
def trained(monkeypatch):
    """Calls of the (stubbed) trainer: (out, steps, batch, max_minutes)."""
    calls = []

    def train(out, recipe, device):
        calls.append((out, recipe.steps, recipe.batch, recipe.max_minutes))

    monkeypatch.setattr(fp, "_train", train)
    return calls


def _one_line(err: str) -> str:
    err = err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_out_is_required_and_no_developer_path(capsys):
    with pytest.raises(SystemExit) as exc:
        fp.main([])
    assert exc.value.code == 2
    assert "required: OUT" in _one_line(capsys.readouterr().err)
    with pytest.raises(SystemExit):
        fp.main(["--help"])
    assert "/work/notes" not in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "says"), [
    (["--threads", "0"], "argument --threads: 0 is out of range (must be >= 1)"),
    (["--steps", "0"], "argument --steps"),
    (["--batch", "many"], "'many' is not an integer"),
    (["--max-minutes", "inf"], "'inf' is not a finite number"),
    (["--max-minutes", "0"], "must be > 0"),
    (["--device", "tpu"], "argument --device: 'tpu'"),
])
def test_bad_flags_are_one_line_usage_errors(tmp_path, capsys, trained, extra, says):
    with pytest.raises(SystemExit) as exc:
        fp.main([str(tmp_path / "out"), *extra])
    assert exc.value.code == 2
    assert says in _one_line(capsys.readouterr().err)
    assert trained == [] and not (tmp_path / "out").exists()


def test_trains_into_a_new_or_empty_folder(tmp_path, capsys, trained):
    assert fp.main([str(tmp_path / "a"), "--steps", "5", "--batch", "4"]) == 0
    (tmp_path / "b").mkdir()
    assert fp.main([str(tmp_path / "b"), "--max-minutes", "2.5"]) == 0
    assert trained == [(tmp_path / "a", 5, 4, None), (tmp_path / "b", 1800, 512, 2.5)]
    assert capsys.readouterr().out.split() == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_reuses_only_its_own_model_with_the_same_settings(tmp_path, capsys, trained):
    out = _fake_model(tmp_path / "m", steps=8000, batch=64, max_minutes=60.0)
    assert fp.main([str(out), "--steps", "8000", "--batch", "64", "--max-minutes", "60"]) == 0
    assert capsys.readouterr().out.strip() == str(out) and trained == []
    assert fp.main([str(out), "--steps", "8000", "--batch", "32", "--max-minutes", "60"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "other settings: batch=64 (asked 32)" in err and "--force" in err
    assert trained == []
    args = [str(out), "--batch", "32", "--force"]
    assert fp.main(args) == 0 and trained == [(out, 1800, 32, None)]


def test_older_record_without_made_by_is_still_reused(tmp_path, trained):
    out = _fake_model(tmp_path / "m", made_by=None)
    assert "made_by" not in json.loads((out / "training.json").read_text())
    assert fp.public_model(out) == out and trained == []


@pytest.mark.parametrize("spoil", ["other digits", "no training.json", "half copied",
                                   "other maker"])
def test_other_models_are_refused_without_force(tmp_path, capsys, trained, spoil):
    out = _fake_model(tmp_path / "m")
    if spoil == "other digits":
        (out / "training.json").write_text(json.dumps({"digits": list(range(10)),
                                                       "recipe": {}}))
    elif spoil == "no training.json":
        (out / "training.json").unlink()
    elif spoil == "half copied":
        (out / "unet").rmdir()
    else:
        record = json.loads((out / "training.json").read_text())
        (out / "training.json").write_text(json.dumps({**record, "made_by": "someone"}))
    assert fp.main([str(out)]) == 1
    assert "is not the public model asked for" in _one_line(capsys.readouterr().err)
    assert trained == []
    assert fp.main([str(out), "--force"]) == 0 and trained == [(out, 1800, 512, None)]


def test_a_folder_that_is_no_model_is_never_replaced(tmp_path, capsys, trained):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    for extra in ([], ["--force"]):
        assert fp.main([str(out), *extra]) == 1
        assert "not a model folder" in _one_line(capsys.readouterr().err)
    (tmp_path / "file").write_text("")
    assert fp.main([str(tmp_path / "file" / "sub")]) == 1
    assert "cannot write" in _one_line(capsys.readouterr().err)
    assert trained == [] and (out / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize(("raised", "code", "says"), [
    (KeyboardInterrupt(), 130, "interrupted"),
    (InputError("no digits", hint="install scikit-learn"),
     1, "error: no digits (install scikit-learn)"),
])
def test_interrupt_and_known_errors_are_one_line(tmp_path, capsys, monkeypatch, raised, code,
                                                 says):
    def boom(*args, **kwargs):
        raise raised

    monkeypatch.setattr(fp, "_train", boom)
    assert fp.main([str(tmp_path / "out")]) == code
    assert _one_line(capsys.readouterr().err) == says


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy, re-run
def test_python_dash_m_runs_main(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["finetune_public", str(tmp_path), "--threads", "0"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("trustgain.privacy.finetune_public", run_name="__main__")
    assert exc.value.code == 2
    assert "--threads" in _one_line(capsys.readouterr().err)
