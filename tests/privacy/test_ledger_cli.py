"""`trustgain ledger create|show` around a ledger that a spend has charged."""

from __future__ import annotations

import json
import stat

from trustgain.cli.main import main
from trustgain.privacy.ledger import Ledger


def test_create_show_and_refuse_overwrite(tmp_path, capsys):
    path = tmp_path / "photos.ledger.json"
    assert main(["ledger", "create", str(path), "--dataset", "photos", "--epsilon", "10",
                 "--delta", "1e-5"]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    Ledger(path).charge(what="finetune m", accountant="prv", epsilon=4.0, delta=1e-6)
    capsys.readouterr()
    assert main(["ledger", "show", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["spent"] == [4.0, 1e-6] and shown["remaining"][0] == 6.0
    assert shown["spends"][0]["what"] == "finetune m"
    before = path.read_bytes()
    assert main(["ledger", "create", str(path), "--dataset", "x", "--epsilon", "1",
                 "--delta", "1e-5"]) == 1
    assert path.read_bytes() == before
    assert main(["ledger", "show", str(tmp_path / "missing.json")]) == 1
    assert "no privacy ledger" in capsys.readouterr().err
