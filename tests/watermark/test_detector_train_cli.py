"""``python -m trustgain.watermark.detector_train``: flags checked up front, one-line errors,
a diverged run writes nothing. No training here (see test_detector_train.py for that)."""

from __future__ import annotations

import runpy
import sys
from types import SimpleNamespace

import pytest
import torch

from trustgain.errors import InputError
from trustgain.models import MINI_SD_ID
from trustgain.watermark import detector_train as dt
from trustgain.watermark import detector_train_cli as cli
from trustgain.watermark import detector_train_phases as phases


def _args(tmp_path, *extra):
    return ["--model", MINI_SD_ID, "-o", str(tmp_path / "out"), "--device", "cpu", *extra]


def _one_line(err: str) -> str:
    err = err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(("extra", "says"), [
    (["--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
    (["--e2e-lr", "inf"], "argument --e2e-lr: 'inf' is not a finite number"),
    (["--lr", "0"], "must be > 0"),
    (["--e2e-lr=-1e-4"], "must be > 0"),
    (["--lr", "fast"], "'fast' is not a number"),
    (["--samples", "0"], "argument --samples: 0 is out of range (must be >= 1)"),
    (["--x0-steps", "-1"], "must be >= 0"),
    (["--x0-seconds", "inf"], "not a finite number"),
    (["--seed", "-1"], "argument --seed"),
    (["--workers", "1.5"], "'1.5' is not an integer"),
    (["--device", "tpu"], "argument --device: 'tpu'"),
    (["--device", "cuda:99"], "argument --device: 'cuda:99'"),
])
def test_bad_flags_are_one_line_usage_errors(tmp_path, capsys, extra, says):
    with pytest.raises(SystemExit) as exc:
        cli.main(_args(tmp_path, *extra))
    assert exc.value.code == 2
    err = _one_line(capsys.readouterr().err)
    assert says in err and err.endswith("(see --help)")
    assert not (tmp_path / "out").exists()


def test_help_keeps_the_line_continuations(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    ends = [i for i, line in enumerate(lines) if line.endswith(" \\")]
    assert len(ends) == 2, text
    assert all(lines[i + 1].startswith("      --") for i in ends)
    assert "--force" in text and "--overwrite" in text


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy, re-run
def test_python_dash_m_still_runs_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["detector_train", *_args(tmp_path, "--lr", "nan")])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("trustgain.watermark.detector_train", run_name="__main__")
    assert exc.value.code == 2
    assert "--lr" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("make", ["missing", "empty folder", "file"])
def test_model_that_is_not_a_model_is_named(tmp_path, capsys, make):
    model = tmp_path / "model"
    if make == "empty folder":
        model.mkdir()
    elif make == "file":
        model.write_text("{}")
    code = cli.main(["--model", str(model), "-o", str(tmp_path / "out"), "--device", "cpu"])
    err = _one_line(capsys.readouterr().err)
    assert code == 1 and err.startswith("error: ")
    says = {"missing": "no such folder", "empty folder": "no model_index.json",
            "file": "is a file"}[make]
    assert says in err, err
    assert "--prompts" not in err  # was: "no prompts for ...", which hid the real problem
    assert not (tmp_path / "out").exists()


def test_output_checks_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code = cli.main(["--model", MINI_SD_ID, "-o", str(tmp_path / "file" / "sub")])
    assert code == 1 and "is not a folder" in _one_line(capsys.readouterr().err)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(_args(tmp_path)) == 1
    assert "--overwrite" in _one_line(capsys.readouterr().err)
    assert (out / "keep.txt").read_text() == "mine"
    assert cli.build_parser().parse_args(_args(tmp_path, "--force")).overwrite
    code = cli.main(_args(tmp_path, "--force", "--init", str(tmp_path / "nope")))
    assert code == 1 and "--init" in _one_line(capsys.readouterr().err)


def _fake_training(monkeypatch, vae):
    monkeypatch.setattr(dt, "load_pipeline", lambda *a, **k: SimpleNamespace())
    report = {"eval": {w: {"none": {"sign_accuracy": 0.5}} for w in ("base", "tuned")},
              "seconds": {}}
    monkeypatch.setattr(dt, "train_detector_encoder", lambda *a, **k: (vae, report))


def test_diverged_training_writes_nothing(tmp_path, capsys, monkeypatch):
    vae = torch.nn.Linear(2, 2)
    with torch.no_grad():
        vae.weight[0, 0] = float("nan")
    _fake_training(monkeypatch, vae)
    code = cli.main(_args(tmp_path, "--e2e-lr", "1e30"))
    err = _one_line(capsys.readouterr().err)
    assert code == 1 and "diverged" in err and "nothing written" in err
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder


def test_diverged_phase_stops_at_once():
    good, bad = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    phases._check_phase([good, bad], "phase 1 (x0)", "lower --lr")
    with torch.no_grad():
        bad[1] = float("inf")
    with pytest.raises(dt.DetectorTrainError, match=r"phase 1 \(x0\): 1 of the encoder's 2"):
        phases._check_phase([good, bad], "phase 1 (x0)", "lower --lr")


def test_too_few_reliability_samples_refused_before_work(tmp_path, capsys):
    assert cli.main(_args(tmp_path, "--reliability-samples", "8")) == 1
    err = _one_line(capsys.readouterr().err)
    assert "--reliability-samples must be 0 (none) or at least 9" in err
    assert not (tmp_path / "out").exists()


def test_library_settings_checked_too(tmp_path):
    with pytest.raises(dt.DetectorTrainError, match="--e2e-lr must be a finite positive"):
        dt.run(MINI_SD_ID, tmp_path / "out", dt.Settings(e2e_lr=float("inf")))
    with pytest.raises(dt.DetectorTrainError, match="--lr must be a finite positive"):
        dt.check_settings(dt.Settings(lr=float("nan")))
    with pytest.raises(dt.DetectorTrainError, match="--deadline"):
        dt.check_settings(dt.Settings(deadline=float("inf")))
    dt.check_settings(dt.Settings())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("raised", "code", "says"), [
    (KeyboardInterrupt(), 130, "interrupted"),
    (InputError("the data went away", hint="look again"),
     1, "error: the data went away (look again)"),
])
def test_interrupt_and_known_errors_are_one_line(tmp_path, capsys, monkeypatch, raised, code,
                                                 says):
    def boom(*args, **kwargs):
        raise raised

    monkeypatch.setattr(dt, "load_prompts", boom)
    assert cli.main(_args(tmp_path)) == code
    assert _one_line(capsys.readouterr().err) == says
    assert not (tmp_path / "out").exists()
