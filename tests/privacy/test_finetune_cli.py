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
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "exactly one" in err
