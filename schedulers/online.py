"""Per-request decision: which backend and how many steps, for one job as it arrives.

The same best response the batch policies use inside (:mod:`schedulers.assignment`), for a
single prompt: over every backend and step count on a grid, maximise expected quality minus
weighted latency and price, subject to an optional deadline and to each backend's backlog
(``busy_s``, the time until it is free). Exhaustive over backends x steps, vectorised; a few
microseconds per request for a handful of backends.

Prompt categories follow PartiPrompts' challenge labels (Gao et al. use Basic / Detail /
Imagination / Complex, [SRC]); a prompt found verbatim in PartiPrompts takes its label, any
other prompt a word-count rule ([INF]: up to 6 words Basic, up to 15 Detail, longer Complex).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from schedulers.assignment import CATEGORIES, category_of, default_models
from schedulers.core import QualityCurve
from schedulers.data import load


@dataclass(frozen=True)
class BackendProfile:
    """What the scheduler knows of one wrapped pipeline (no pipeline object: serialisable).

    ``quality`` holds the saturating curve's ``(q_max, q_0, s0)`` per category, in the order of
    :data:`schedulers.assignment.CATEGORIES` (expected CLIPScore x100).
    """

    name: str
    step_latency_s: float
    quality: tuple[tuple[float, float, float], ...]
    price_per_step: float = 0.0
    max_steps: int = 50

    def curve(self, category: int) -> QualityCurve:
        return QualityCurve(*self.quality[category])


@dataclass(frozen=True)
class Choice:
    backend: str
    steps: int
    latency_s: float
    quality: float
    cost: float
    utility: float
    feasible: bool


def default_backends() -> tuple[BackendProfile, ...]:
    """The three reconstructed models of :mod:`schedulers.assignment` ([INF])."""
    models, curves = default_models()
    return tuple(
        BackendProfile(m.name, m.step_latency_s, tuple((c.q_max, c.q_0, c.s0) for c in per))
        for m, per in zip(models, curves, strict=True)
    )


@cache
def _parti_index() -> dict[str, int]:
    out = {}
    for prompt, _cat, challenge in load("parti_prompts.json")["rows"]:
        c = category_of(challenge)
        if c is not None:
            out[" ".join(prompt.lower().split())] = c
    return out


def prompt_category(prompt: str | None) -> tuple[int, str]:
    """Category index and where it came from (``"partiprompts"`` or ``"word-count rule"``)."""
    if not prompt:
        return 0, "default"
    key = " ".join(prompt.lower().split())
    if key in _parti_index():
        return _parti_index()[key], "partiprompts"
    words = len(key.split())
    return (0 if words <= 6 else 1 if words <= 15 else 3), "word-count rule"


def choose(
    backends: Sequence[BackendProfile],
    category: int,
    steps: Sequence[int],
    latency_weight: float = 0.1,
    cost_weight: float = 0.0,
    deadline_s: float | None = None,
    busy_s: Sequence[float] | None = None,
) -> Choice:
    """Best (backend, steps); if nothing meets the deadline, the fastest option (infeasible)."""
    s = np.asarray(steps, dtype=np.float64)
    busy = np.zeros(len(backends)) if busy_s is None else np.asarray(busy_s, dtype=np.float64)
    lat = busy[:, None] + np.array([b.step_latency_s for b in backends])[:, None] * s[None, :]
    q = np.array([b.curve(category)(s) for b in backends])
    cost = np.array([b.price_per_step for b in backends])[:, None] * s[None, :]
    allowed = s[None, :] <= np.array([b.max_steps for b in backends])[:, None]
    util = q - latency_weight * lat - cost_weight * cost
    ok = allowed & (lat <= deadline_s if deadline_s is not None else True)
    feasible = bool(ok.any())
    score = np.where(ok, util, -np.inf) if feasible else np.where(allowed, -lat, -np.inf)
    k, j = np.unravel_index(int(np.argmax(score)), score.shape)
    return Choice(
        backends[k].name,
        int(s[j]),
        float(lat[k, j]),
        float(q[k, j]),
        float(cost[k, j]),
        float(util[k, j]),
        feasible,
    )


__all__ = [
    "CATEGORIES",
    "BackendProfile",
    "Choice",
    "choose",
    "default_backends",
    "prompt_category",
]
