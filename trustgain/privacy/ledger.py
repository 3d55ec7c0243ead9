"""A privacy budget ledger per dataset: the (epsilon, delta) budget and every spend on it.

One JSON file per dataset, rewritten atomically (:func:`trustgain.fileio.write_atomic`, mode
0600) under an exclusive ``fcntl.flock`` on a side lock file, so two processes charging at
once cannot lose a spend: the second one reads the file the first one wrote.

Composition: the total spent is the **basic composition** of the spends, sum of epsilons and
sum of deltas. It holds for any mix of mechanisms and adaptive choices, so it is the safe
default; it is loose. Tighter totals (RDP/PLD composition of many Gaussian mechanisms) need
the mechanisms themselves, not their (epsilon, delta), so a DP fine-tune should charge its
whole run once, with the epsilon its accountant reports for all its steps, rather than one
charge per step.
"""

from __future__ import annotations

import fcntl
import json
import math
import numbers
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trustgain.errors import OutputExistsError, TrustgainError
from trustgain.fileio import write_atomic

FORMAT = "trustgain.privacy-ledger/1"


class BudgetExceeded(TrustgainError):
    """A charge would take a dataset past its privacy budget; nothing was spent."""


class LedgerError(TrustgainError):
    """A ledger file is missing, malformed, or was asked for an invalid amount."""


@dataclass(frozen=True)
class Spend:
    """One charge: what spent it, the accountant that computed it, and the amount."""

    what: str
    accountant: str
    epsilon: float
    delta: float
    time: str


def _check_amount(epsilon: float, delta: float) -> None:
    if not (_number(epsilon) and _number(delta)):
        raise LedgerError(f"epsilon and delta must be numbers, not {epsilon!r} and {delta!r}")
    if not (_finite(epsilon) and epsilon >= 0):
        raise LedgerError(f"epsilon must be a finite number >= 0, not {epsilon!r}")
    if not (0 <= delta < 1):
        raise LedgerError(f"delta must be in [0, 1), not {delta!r}")


class Ledger:
    """The budget ledger of one dataset, stored at ``path`` (a ``.json`` file)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.name:
            raise LedgerError(f"{str(path)!r} is not a ledger file path")

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        dataset: str,
        epsilon: float,
        delta: float,
    ) -> Ledger:
        """Start a ledger for ``dataset`` with budget (``epsilon``, ``delta``); never overwrites."""
        epsilon, delta = _as_amount(epsilon), _as_amount(delta)
        _check_text(dataset=dataset)
        _check_amount(epsilon, delta)
        ledger = cls(path)
        doc = {
            "format": FORMAT,
            "dataset": dataset,
            "budget": {"epsilon": epsilon, "delta": delta},
            "composition": "basic",
            "spends": [],
        }
        try:
            write_atomic(ledger.path, _dump(doc), mode=0o600)
        except OutputExistsError as exc:  # no --force here: replacing would forget spends
            exc.hint = ("a ledger is the record of what a dataset has spent and is never "
                        "replaced; choose another path")
            raise
        return ledger

    def _real(self) -> Path:
        """The file behind ``path``: a symlinked ledger is locked and rewritten where it lies,
        so the link stays a link and every path to the ledger sees every spend."""
        return Path(os.path.realpath(self.path))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        real = self._real()
        if not real.is_file():  # no lock file or folders for a ledger that is not there
            self._read()
        fd = os.open(real.with_name(real.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"), object_pairs_hook=_unique)
        except FileNotFoundError:
            raise LedgerError(
                f"no privacy ledger at {self.path}", hint="create one first"
            ) from None
        except _DuplicateKey as exc:
            raise LedgerError(f"privacy ledger {self.path} is malformed: key {exc} appears twice",
                              hint="restore it from a backup; it is never repaired by guessing"
                              ) from None
        except (OSError, ValueError) as exc:
            raise LedgerError(f"cannot read privacy ledger {self.path}: {exc}") from None
        except RecursionError:
            raise LedgerError(f"{self.path} is not a privacy ledger (nested too deeply)") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise LedgerError(f"{self.path} is not a privacy ledger ({FORMAT})")
        problem = _malformed(doc)
        if problem:  # fail closed: a ledger we cannot read exactly lets nothing be spent
            raise LedgerError(f"privacy ledger {self.path} is malformed: {problem}",
                              hint="restore it from a backup; it is never repaired by guessing")
        return doc

    @property
    def dataset(self) -> str:
        return str(self._read()["dataset"])

    def budget(self) -> tuple[float, float]:
        """The dataset's total (epsilon, delta) budget."""
        b = self._read()["budget"]
        return float(b["epsilon"]), float(b["delta"])

    def spends(self) -> list[Spend]:
        return [Spend(**s) for s in self._read()["spends"]]

    def spent(self) -> tuple[float, float]:
        """Total (epsilon, delta) spent so far, by basic composition."""
        return _total(self._read())

    def remaining(self) -> tuple[float, float]:
        (be, bd), (se, sd) = self.budget(), self.spent()
        return max(0.0, be - se), max(0.0, bd - sd)

    def check(self, *, epsilon: float, delta: float) -> None:
        """Raise :class:`BudgetExceeded` if a spend of (epsilon, delta) would not fit now."""
        epsilon, delta = _as_amount(epsilon), _as_amount(delta)
        _check_amount(epsilon, delta)
        _refuse_if_over(self._read(), epsilon, delta, str(self.path))

    def charge(
        self,
        *,
        what: str,
        accountant: str,
        epsilon: float,
        delta: float,
        now: datetime | None = None,
    ) -> Spend:
        """Record a spend, or raise :class:`BudgetExceeded` with nothing recorded.

        Call it BEFORE releasing anything computed with the spend: a refusal means the
        release must not happen. ``now`` is injectable for tests.
        """
        epsilon, delta = _as_amount(epsilon), _as_amount(delta)
        _check_text(what=what, accountant=accountant)
        _check_amount(epsilon, delta)
        stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        spend = Spend(what=what, accountant=accountant, epsilon=epsilon, delta=delta, time=stamp)
        with self._locked():
            doc = self._read()
            _refuse_if_over(doc, epsilon, delta, str(self.path))
            doc["spends"].append(asdict(spend))
            write_atomic(self._real(), _dump(doc), overwrite=True, mode=0o600)
        return spend


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _as_amount(value: Any) -> Any:
    """A numpy (or other) real scalar as a plain float, so it is checked and stored exactly as
    a Python number; anything else unchanged (and refused by :func:`_check_amount`)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value) not in (
            int, float):
        return float(value)
    return value


def _check_text(**fields: Any) -> None:
    """Refuse labels that could not be stored (a ledger whose spend has a non-text label is
    unreadable afterwards, so nothing could be spent on it any more)."""
    for name, value in fields.items():
        if not isinstance(value, str):
            raise LedgerError(f"{name} must be a str, not {type(value).__name__}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise LedgerError(f"{name} is not valid text (a lone surrogate)") from None


class _DuplicateKey(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: a second "spends" would hide the first one's."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(repr(key))
        out[key] = value
    return out


def _malformed(doc: dict[str, Any]) -> str | None:
    """What is wrong with a parsed ledger, or None: every amount a valid (epsilon, delta)."""
    if doc.get("composition") != "basic":
        return f"composition {doc.get('composition')!r} is not 'basic'"
    if not isinstance(doc.get("dataset"), str):
        return "no dataset name"
    budget = doc.get("budget")
    if not isinstance(budget, dict) or not all(_number(budget.get(k)) for k in ("epsilon",
                                                                                 "delta")):
        return "the budget is not a pair of numbers"
    try:
        _check_amount(budget["epsilon"], budget["delta"])
    except LedgerError as exc:
        return f"budget {exc}"
    spends = doc.get("spends")
    if not isinstance(spends, list):
        return "spends is not a list"
    fields = set(Spend.__dataclass_fields__)
    for i, s in enumerate(spends):
        if not isinstance(s, dict) or set(s) != fields:
            return f"spend {i + 1} does not have exactly the fields {', '.join(sorted(fields))}"
        if not (_number(s["epsilon"]) and _number(s["delta"])) or not all(
                isinstance(s[k], str) for k in ("what", "accountant", "time")):
            return f"spend {i + 1} has a field of the wrong type"
        try:
            _check_amount(s["epsilon"], s["delta"])
        except LedgerError as exc:
            return f"spend {i + 1}: {exc}"
    return None


def _total(doc: dict[str, Any]) -> tuple[float, float]:
    spends = doc["spends"]
    return math.fsum(s["epsilon"] for s in spends), math.fsum(s["delta"] for s in spends)


# Floating sums of budget shares (e.g. ten charges of 0.1 against 1.0) must not be refused.
_SLACK = 1e-9


def _refuse_if_over(doc: dict[str, Any], epsilon: float, delta: float, where: str) -> None:
    se, sd = _total(doc)
    be, bd = float(doc["budget"]["epsilon"]), float(doc["budget"]["delta"])
    if se + epsilon > be * (1 + _SLACK) or sd + delta > bd * (1 + _SLACK) + 1e-300:
        raise BudgetExceeded(
            f"privacy budget of '{doc['dataset']}' exceeded: spent (eps={se:.4g}, "
            f"delta={sd:.3g}) + asked (eps={epsilon:.4g}, delta={delta:.3g}) > budget "
            f"(eps={be:.4g}, delta={bd:.3g}); nothing was spent",
            hint=f"ledger {where}",
        )


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
