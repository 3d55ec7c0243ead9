"""Privacy ledger: budget refused before spending, basic composition, no lost spends."""

from __future__ import annotations

import json
import multiprocessing as mp
import stat
from datetime import UTC, datetime

import pytest

from trustgain.errors import OutputExistsError, TrustgainError
from trustgain.privacy.ledger import BudgetExceeded, Ledger, LedgerError


def _ledger(tmp_path, eps=1.0, delta=1e-5):
    return Ledger.create(tmp_path / "digits.json", dataset="digits", epsilon=eps, delta=delta)


def test_charge_records_and_composes(tmp_path):
    ledger = _ledger(tmp_path)
    now = datetime(2026, 1, 2, tzinfo=UTC)
    ledger.charge(what="finetune run 1", accountant="prv", epsilon=0.4, delta=4e-6, now=now)
    ledger.charge(what="log histogram", accountant="laplace", epsilon=0.3, delta=0.0)
    assert ledger.spent() == pytest.approx((0.7, 4e-6))
    assert ledger.remaining() == pytest.approx((0.3, 6e-6))
    first = ledger.spends()[0]
    assert (first.what, first.accountant, first.time) == ("finetune run 1", "prv", now.isoformat())
    assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600


def test_refuses_before_spending(tmp_path):
    ledger = _ledger(tmp_path)
    ledger.charge(what="a", accountant="rdp", epsilon=0.9, delta=1e-6)
    before = ledger.path.read_bytes()
    with pytest.raises(BudgetExceeded, match=r"exceeded.*nothing was spent") as info:
        ledger.charge(what="b", accountant="rdp", epsilon=0.2, delta=1e-6)
    assert isinstance(info.value, TrustgainError) and "\n" not in str(info.value)
    with pytest.raises(BudgetExceeded):
        ledger.charge(what="c", accountant="rdp", epsilon=0.01, delta=1e-5)  # delta over
    assert ledger.path.read_bytes() == before
    with pytest.raises(BudgetExceeded):
        ledger.check(epsilon=0.2, delta=0.0)
    ledger.check(epsilon=0.1, delta=0.0)


def test_exact_budget_in_shares_fits(tmp_path):
    ledger = _ledger(tmp_path)
    for _ in range(10):
        ledger.charge(what="share", accountant="laplace", epsilon=0.1, delta=0.0)
    with pytest.raises(BudgetExceeded):
        ledger.charge(what="one more", accountant="laplace", epsilon=1e-6, delta=0.0)


def test_bad_amounts_and_files(tmp_path):
    ledger = _ledger(tmp_path)
    for eps, delta in ((-1.0, 0.0), (float("nan"), 0.0), (0.1, 1.0)):
        with pytest.raises(LedgerError):
            ledger.charge(what="x", accountant="rdp", epsilon=eps, delta=delta)
    with pytest.raises(OutputExistsError):
        _ledger(tmp_path)
    with pytest.raises(LedgerError, match="no privacy ledger"):
        Ledger(tmp_path / "missing.json").spent()
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(LedgerError, match="not a privacy ledger"):
        Ledger(tmp_path / "other.json").spent()


def _charge_many(path: str, n: int) -> None:
    ledger = Ledger(path)
    for i in range(n):
        ledger.charge(what=f"p{i}", accountant="laplace", epsilon=0.001, delta=0.0)


def test_concurrent_charges_lose_nothing(tmp_path):
    ledger = _ledger(tmp_path)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_charge_many, args=(str(ledger.path), 15)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(ledger.spends()) == 45
    assert ledger.spent()[0] == pytest.approx(0.045)


@pytest.mark.parametrize("edit", [
    lambda d: [],
    lambda d: "str",
    lambda d: {"format": d["format"]},
    lambda d: {**d, "budget": {"epsilon": "ten", "delta": 1e-5}},
    lambda d: {**d, "budget": {"epsilon": float("nan"), "delta": 1e-5}},
    lambda d: {**d, "budget": {"epsilon": True, "delta": 1e-5}},
    lambda d: {**d, "spends": {}},
    lambda d: {**d, "spends": [{**d["spends"][0], "epsilon": -100}]},
    lambda d: {**d, "spends": [{**d["spends"][0], "epsilon": "1"}]},
    lambda d: {**d, "spends": [{k: v for k, v in d["spends"][0].items() if k != "delta"}]},
    lambda d: "[" * 100_000 + "]" * 100_000,
])
def test_a_malformed_ledger_lets_nothing_be_spent(tmp_path, edit):
    """Fail closed: a negative spend or a NaN budget would otherwise leave room to spend."""
    ledger = _ledger(tmp_path)
    ledger.charge(what="a", accountant="rdp", epsilon=0.5, delta=0.0)
    doc = json.loads(ledger.path.read_text())
    bad = edit(doc)
    ledger.path.write_text(bad if isinstance(bad, str) and bad.startswith("[")
                           else json.dumps(bad))
    for call in (ledger.spent, ledger.remaining, lambda: ledger.charge(
            what="b", accountant="rdp", epsilon=1e6, delta=0.0)):
        with pytest.raises(LedgerError):
            call()


def test_ledger_paths_and_amount_types_are_checked(tmp_path):
    with pytest.raises(LedgerError, match="not a ledger file path"):
        Ledger("")
    with pytest.raises(LedgerError, match="numbers"):
        _ledger(tmp_path).charge(what="x", accountant="rdp", epsilon="1", delta=0.0)
    with pytest.raises(OutputExistsError) as err:
        _ledger(tmp_path)
    assert "never replaced" in err.value.hint
