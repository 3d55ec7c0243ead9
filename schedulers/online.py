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
from functools import cache, lru_cache

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


@lru_cache(maxsize=64)
def _table(backends: tuple[BackendProfile, ...], steps: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Arrays over (backend, category, steps) for a backend set and step grid, built once."""
    s = np.asarray(steps, dtype=np.float64)
    curves = np.array([b.quality for b in backends], dtype=np.float64)  # (B, C, 3)
    q_max, q_0, s0 = (curves[..., i][..., None] for i in range(3))
    return {
        "steps": s,
        "per_step": np.array([b.step_latency_s for b in backends])[:, None] * s[None, :],
        "quality": q_max - (q_max - q_0) * np.exp(-s[None, None, :] / s0),  # (B, C, S)
        "cost": np.array([b.price_per_step for b in backends])[:, None] * s[None, :],
        "allowed": s[None, :] <= np.array([b.max_steps for b in backends])[:, None],
    }


def _pick(
    t: dict[str, np.ndarray],
    names: Sequence[str],
    category: int,
    busy: np.ndarray,
    latency_weight: float,
    cost_weight: float,
    deadline_s: float | None,
) -> tuple[Choice, int]:
    lat = busy[:, None] + t["per_step"]
    q = t["quality"][:, category, :]
    util = q - latency_weight * lat - cost_weight * t["cost"]
    allowed = t["allowed"]
    ok = allowed & (lat <= deadline_s) if deadline_s is not None else allowed
    feasible = bool(ok.any())
    score = np.where(ok, util, -np.inf) if feasible else np.where(allowed, -lat, -np.inf)
    k, j = np.unravel_index(int(np.argmax(score)), score.shape)
    c = Choice(
        names[k],
        int(t["steps"][j]),
        float(lat[k, j]),
        float(q[k, j]),
        float(t["cost"][k, j]),
        float(util[k, j]),
        feasible,
    )
    return c, int(k)


def choose(
    backends: Sequence[BackendProfile],
    category: int,
    steps: Sequence[int],
    latency_weight: float = 0.1,
    cost_weight: float = 0.0,
    deadline_s: float | None = None,
    busy_s: Sequence[float] | None = None,
) -> Choice:
    """Best (backend, steps); if nothing meets the deadline, the fastest option (infeasible).

    ``busy_s`` is each backend's backlog (seconds of queued work ahead of this request); the
    predicted latency is backlog plus this request's own run time.
    """
    bt = tuple(backends)
    t = _table(bt, tuple(int(x) for x in steps))
    busy = np.zeros(len(bt)) if busy_s is None else np.asarray(busy_s, dtype=np.float64)
    names = [b.name for b in bt]
    return _pick(t, names, category, busy, latency_weight, cost_weight, deadline_s)[0]


def choose_batch(
    backends: Sequence[BackendProfile],
    categories: Sequence[int],
    steps: Sequence[int],
    latency_weight: float = 0.1,
    cost_weight: float = 0.0,
    deadline_s: float | None = None,
    busy_s: Sequence[float] | None = None,
) -> list[Choice]:
    """Decide for requests in arrival order; each choice joins its backend's backlog.

    The queue-aware list-scheduling form of :func:`choose`: request i sees the backlog left by
    requests 0..i-1 (each backend serves one job at a time, first come first served).
    """
    bt = tuple(backends)
    t = _table(bt, tuple(int(x) for x in steps))
    names = [b.name for b in bt]
    busy = np.zeros(len(bt)) if busy_s is None else np.array(busy_s, dtype=np.float64)
    out = []
    for c in categories:
        choice, k = _pick(t, names, int(c), busy, latency_weight, cost_weight, deadline_s)
        busy[k] = choice.latency_s
        out.append(choice)
    return out


__all__ = [
    "CATEGORIES",
    "BackendProfile",
    "Choice",
    "choose",
    "choose_batch",
    "default_backends",
    "prompt_category",
]
