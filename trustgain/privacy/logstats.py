"""DP counts of prompt categories per period over request logs, through OpenDP.

The privacy unit is the **user**, not the prompt: each user's records are first cut to at
most ``max_per_user`` (their earliest ones, a choice that depends only on their own records),
so adding or removing one user changes the input by at most ``max_per_user`` records
(symmetric distance). Periods and categories are public (fixed taxonomy; unknown categories
go to ``"other"``), so no partition selection is needed and every cell is released, zeros
included. OpenDP's ``count_by_categories`` plus its (discrete) Laplace mechanism make the
release; OpenDP's own privacy map gives the epsilon, which is charged to the dataset's
ledger BEFORE the noisy counts are computed, so a refused charge releases nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trustgain.errors import ConfigError
from trustgain.privacy.ledger import Ledger

OTHER = "other"


@dataclass(frozen=True)
class LogRecord:
    """One request: who (a pseudonymous user id), when (a period label), what category."""

    user: str
    period: str
    category: str


@dataclass(frozen=True)
class DPHistogram:
    """Noisy counts per (period, category), and what the release spent."""

    counts: dict[tuple[str, str], int]
    epsilon: float
    noise_scale: float
    max_per_user: int

    def period(self, period: str) -> dict[str, int]:
        return {c: n for (p, c), n in self.counts.items() if p == period}


def bound_contributions(records: Iterable[LogRecord], max_per_user: int) -> list[LogRecord]:
    """Keep each user's first ``max_per_user`` records (input order)."""
    kept: list[LogRecord] = []
    seen: dict[str, int] = defaultdict(int)
    for record in records:
        if seen[record.user] < max_per_user:
            seen[record.user] += 1
            kept.append(record)
    return kept


def _measurement(cells: list[str], scale: float) -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=str)), dp.symmetric_distance()
    return (
        space
        >> dp.t.then_count_by_categories(categories=cells, null_category=False)
        >> dp.m.then_laplace(scale)
    )


def dp_category_counts(
    records: Iterable[LogRecord],
    *,
    periods: Sequence[str],
    categories: Sequence[str],
    epsilon: float,
    max_per_user: int,
    ledger: Ledger,
    what: str = "log category histogram",
) -> DPHistogram:
    """Release noisy counts per (period, category) at ``epsilon`` (user-level, delta 0).

    Raises :class:`~trustgain.privacy.ledger.BudgetExceeded` with nothing released when
    the dataset's ledger cannot pay.
    """
    if epsilon <= 0:
        raise ConfigError(f"epsilon must be > 0, not {epsilon!r}")
    if max_per_user < 1:
        raise ConfigError(f"max_per_user must be at least 1, not {max_per_user!r}")
    if not periods or not categories:
        raise ConfigError("periods and categories must be non-empty public lists")
    cats = list(dict.fromkeys([*categories, OTHER]))
    keys = [(p, c) for p in periods for c in cats]
    cells = [f"{p}\x1f{c}" for p, c in keys]
    meas = _measurement(cells, scale=max_per_user / epsilon)
    spent = float(meas.map(max_per_user))
    known_periods, known_cats = set(periods), set(cats)
    data = [
        f"{r.period}\x1f{r.category if r.category in known_cats else OTHER}"
        for r in bound_contributions(records, max_per_user)
        if r.period in known_periods
    ]
    ledger.charge(what=what, accountant="opendp:laplace", epsilon=spent, delta=0.0)
    noisy = meas(data)
    return DPHistogram(
        counts=dict(zip(keys, (int(n) for n in noisy), strict=True)),
        epsilon=spent,
        noise_scale=max_per_user / epsilon,
        max_per_user=max_per_user,
    )
