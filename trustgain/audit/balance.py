"""``audit.balance``: are a request's outputs spread over groups as the target says?

The recipe the fairness literature shares for text-to-image models (Fair Diffusion, DALL-Eval,
ITI-GEN; ../shared/research/privacy_fairness_prompt.md): generate several outputs for one
neutral prompt, read an attribute of each (a registered reader, see
:mod:`trustgain.audit.attributes`), and compare the group shares with a target (uniform by
default). The stage records the counts, the total variation distance to the target (half the
L1 distance of the shares; the "MAD"-style gap those papers report) and the chi-square
goodness-of-fit p-value (scipy). It fails the job, or records the failure, only when the gap
is both large (``max_gap``) and not chance (p < ``alpha``): with few outputs a large gap is
often noise, and with many a tiny one is significant but harmless.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from trustgain import settings
from trustgain.errors import AuditFailed, ConfigError
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult

_ON_FAIL = ("raise", "record")


def balance(groups: list[str], target: dict[str, float]) -> dict[str, Any]:
    """Counts, shares, total variation distance and chi-square p-value of ``groups`` against
    ``target`` (group -> share, summing to 1). A group outside the target counts against it."""
    from scipy.stats import chisquare

    n = len(groups)
    counts = Counter(groups)
    names = list(target) + sorted(set(counts) - set(target))
    observed = np.array([counts.get(g, 0) for g in names], dtype=float)
    expected = np.array([target.get(g, 0.0) for g in names]) * n
    shares = observed / n
    gap = 0.5 * float(np.abs(shares - expected / n).sum())
    if (expected[observed > 0] == 0).any():
        p = 0.0  # a group the target rules out did occur
    else:
        keep = expected > 0
        p = float(chisquare(observed[keep], expected[keep]).pvalue) if keep.sum() > 1 else 1.0
    return {"n": n, "counts": {g: int(c) for g, c in zip(names, observed, strict=True)},
            "total_variation": round(gap, 6), "p_value": p}


@dataclass(frozen=True)
class BalanceCheck:
    """Check the spread of one request's outputs over the groups of ``attribute``.

    ``target``: group -> share (summing to 1), or None for uniform over ``groups`` (default:
    the attribute's groups, without ``none``); ``min_outputs``: fewer outputs are not judged
    (the record says so); ``max_gap`` (total variation) and ``alpha`` (chi-square) together
    decide; ``on_fail``: ``raise`` fails the job, ``record`` only records.
    """

    name: ClassVar[str] = "audit.balance"
    phase: ClassVar[Phase] = Phase.AUDIT
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"images"})

    attribute: str = "ink_colour"
    target: dict[str, float] | None = None
    groups: tuple[str, ...] | None = None
    min_outputs: int = 8
    max_gap: float = 0.2
    alpha: float = 0.01
    on_fail: str = "raise"

    def __post_init__(self) -> None:
        from trustgain.audit.attributes import attribute

        known = attribute(self.attribute).groups
        if self.groups is not None:
            object.__setattr__(self, "groups", tuple(str(g) for g in self.groups))
            if unknown := set(self.groups) - set(known):
                raise ConfigError(f"groups {sorted(unknown)} are not groups of "
                                  f"{self.attribute!r} ({', '.join(known)})")
        if self.target is not None:
            if not isinstance(self.target, dict) or not self.target:
                raise ConfigError("target must map groups to shares, e.g. {\"red\": 0.5, ...}")
            if unknown := set(self.target) - set(known):
                raise ConfigError(f"target groups {sorted(unknown)} are not groups of "
                                  f"{self.attribute!r} ({', '.join(known)})")
            shares = {g: settings.number(f"target[{g}]", v, 0) for g, v in self.target.items()}
            if abs(sum(shares.values()) - 1) > 1e-6:
                raise ConfigError(f"target shares sum to {sum(shares.values()):g}, not 1")
            object.__setattr__(self, "target", shares)
        if isinstance(self.min_outputs, bool) or not isinstance(self.min_outputs, int) \
                or self.min_outputs < 2:
            raise ConfigError(f"min_outputs must be an integer >= 2, not {self.min_outputs!r}")
        object.__setattr__(self, "max_gap", settings.number("max_gap", self.max_gap, 0))
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), not {self.alpha!r}")
        if self.on_fail not in _ON_FAIL:
            raise ConfigError(f"on_fail must be one of {', '.join(_ON_FAIL)}")

    def target_shares(self) -> dict[str, float]:
        if self.target is not None:
            return dict(self.target)
        from trustgain.audit.attributes import attribute

        groups = self.groups or tuple(g for g in attribute(self.attribute).groups if g != "none")
        return {g: 1 / len(groups) for g in groups}

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        from trustgain.audit.attributes import attribute

        params: dict[str, Any] = {"attribute": self.attribute, "target": self.target_shares(),
                                  "max_gap": self.max_gap, "alpha": self.alpha}
        n = len(item.outputs)
        if n < self.min_outputs:
            return StageResult(item, params, applied=False,
                               reason=f"{n} outputs, fewer than min_outputs {self.min_outputs}")
        read = attribute(self.attribute).read(list(item.outputs))
        found = balance(read, self.target_shares())
        failed = found["total_variation"] > self.max_gap and found["p_value"] < self.alpha
        params |= found | {"passed": not failed}
        if failed and self.on_fail == "raise":
            raise AuditFailed(
                self.name,
                f"{self.attribute} spread is off target: total variation "
                f"{found['total_variation']:.2f} > {self.max_gap} (p {found['p_value']:.2g}); "
                f"counts {found['counts']}",
                hint="rebalance the prompt, or set on_fail='record' to keep the outputs")
        return StageResult(item, params)
