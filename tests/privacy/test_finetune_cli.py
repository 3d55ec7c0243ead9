"""``trustgain finetune``: help with examples, a DP run with --json, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from tiny import tiny_sd_pipeline

from trustgain.cli.finetune import finetune
from trustgain.cli.main import cli, main
from trustgain.privacy.finetune_data import write_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def wired(monkeypatch):
    monkeypatch.setitem(cli.commands, "finetune", finetune)  # the lead wires it in main.py


def test_help_has_examples():
    res = CliRunner().invoke(finetune, ["--help"])
    assert res.exit_code == 0
    assert "Examples:" in res.output and "--target-epsilon 8" in res.output


def test_dp_run_and_errors(tmp_path, wired, capsys):
    base = tmp_path / "base"
    tiny_sd_pipeline().save_pretrained(base)
    rng = np.random.default_rng(1)
    data = write_folder(tmp_path / "data", rng.integers(0, 256, (8, 16, 16, 3), np.uint8),
                        [f"a {i}" for i in range(8)])
    args = ["finetune", "--data", str(data), "--model", str(base), "-o", str(tmp_path / "o"),
            "--dp", "--noise-multiplier", "1.0", "--accountant", "rdp", "--epochs", "1",
            "--batch-size", "4", "--trainable", "attention", "--no-progress", "--json"]
    assert main(args) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["dp"] and facts["steps"] == 2 and facts["epsilon"] > 0
    assert (tmp_path / "o" / "privacy.json").is_file()
    assert main(args) == 1  # output exists: refused, nothing replaced
    assert "exists" in capsys.readouterr().err
    bad = [a for a in args if a not in ("--noise-multiplier", "1.0")]
    bad[bad.index(str(tmp_path / "o"))] = str(tmp_path / "o2")
    assert main(bad) == 2  # a usage error, in the flags' names
    err = capsys.readouterr().err
    assert "with --dp give one of --target-epsilon and --noise-multiplier" in err


@pytest.mark.parametrize(("extra", "says"), [
    (["--dp", "--target-epsilon", "1000"], "out of range"),  # opacus' search would not end
    (["--dp", "--target-epsilon", "inf"], "not a finite number"),
    (["--dp", "--noise-multiplier", "nan"], "not a finite number"),
    (["--target-epsilon", "5"], "--target-epsilon needs --dp"),
    (["--ledger", "l.json"], "--ledger needs --dp"),
    (["--physical-batch-size", "0"], "x>=1"),
    (["--epochs", "0"], "x>=1"),
    (["--lr", "-1"], "out of range"),
])
def test_flag_errors_before_any_work(tmp_path, wired, capsys, extra, says):
    (tmp_path / "data").mkdir()
    code = main(["finetune", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "o"),
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err


def test_unwritable_output_folder_fails_before_training(tmp_path):
    from trustgain.errors import OutputWriteError
    from trustgain.privacy.finetune import finetune as run

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputWriteError, match="cannot write"):
        run(tmp_path / "no-model-needed", tmp_path, blocker / "sub" / "ft", dp=False)
    assert blocker.read_text() == "not a folder"
