"""DP log statistics: user-level bounding, spend charged first, refusal releases nothing."""

from __future__ import annotations

import pytest

from trustgain.privacy.ledger import BudgetExceeded, Ledger
from trustgain.privacy.logstats import (
    LogRecord,
    bound_contributions,
    dp_category_counts,
)

PERIODS = ["2026-11-26", "2026-11-27"]
CATS = ["portrait", "landscape"]


def _records():
    recs = [LogRecord(f"u{i}", PERIODS[i % 2], CATS[i % 3 % 2]) for i in range(600)]
    recs += [LogRecord("heavy", PERIODS[0], "portrait")] * 500  # one user, many prompts
    recs += [LogRecord("new", PERIODS[1], "nsfw-ish"), LogRecord("u2", "2025-01-01", "portrait")]
    return recs


def test_bound_contributions():
    kept = bound_contributions(_records(), 2)
    assert sum(r.user == "heavy" for r in kept) == 2
    assert len(kept) == 600 + 2 + 2


def test_release_charges_ledger_and_is_close(tmp_path):
    ledger = Ledger.create(tmp_path / "logs.json", dataset="logs", epsilon=2.0, delta=0.0)
    hist = dp_category_counts(
        _records(), periods=PERIODS, categories=CATS, epsilon=1.0, max_per_user=1, ledger=ledger
    )
    assert hist.epsilon == pytest.approx(1.0, rel=1e-6)
    assert ledger.spent()[0] == pytest.approx(hist.epsilon)
    assert ledger.spends()[0].accountant == "opendp:laplace"
    assert set(hist.counts) == {(p, c) for p in PERIODS for c in [*CATS, "other"]}
    # true counts with max_per_user=1 (heavy user once, unknown category -> other); the
    # discrete Laplace noise at scale 1 is almost never beyond 20
    true = {(p, c): 0 for p, c in hist.counts}
    for r in bound_contributions(_records(), 1):
        if r.period in PERIODS:
            true[r.period, r.category if r.category in CATS else "other"] += 1
    assert true[PERIODS[0], "portrait"] == 201 and true[PERIODS[1], "other"] == 1
    for cell, n in true.items():
        assert abs(hist.counts[cell] - n) <= 20
    assert set(hist.period(PERIODS[1])) == {*CATS, "other"}


def test_refused_spend_releases_nothing(tmp_path, monkeypatch):
    ledger = Ledger.create(tmp_path / "logs.json", dataset="logs", epsilon=0.5, delta=0.0)
    import trustgain.privacy.logstats as logstats

    called: list[int] = []
    real = logstats._measurement
    monkeypatch.setattr(logstats, "_measurement", lambda c, scale: _Spy(real(c, scale), called))
    with pytest.raises(BudgetExceeded):
        dp_category_counts(
            _records(),
            periods=PERIODS,
            categories=CATS,
            epsilon=1.0,
            max_per_user=1,
            ledger=ledger,
        )
    assert called == [] and ledger.spends() == []


class _Spy:
    def __init__(self, meas, called):
        self._meas, self._called = meas, called

    def map(self, d_in):
        return self._meas.map(d_in)

    def __call__(self, data):
        self._called.append(1)
        return self._meas(data)
