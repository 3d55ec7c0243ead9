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

import math
import operator
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
    :data:`schedulers.assignment.CATEGORIES` (expected CLIPScore x100); ``s0 = 0`` means saturated
    from the first step. Checked when made (ValueError naming the field).
    """

    name: str
    step_latency_s: float
    quality: tuple[tuple[float, float, float], ...]
    price_per_step: float = 0.0
    max_steps: int = 50

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"backend name must be a non-empty string, not {self.name!r}")
        who = f"backend {self.name!r}:"
        for field in ("step_latency_s", "price_per_step"):
            object.__setattr__(self, field, _number(f"{who} {field}", getattr(self, field)))
        m = self.max_steps
        if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
            raise ValueError(f"{who} max_steps must be an integer >= 1, not {m!r}")
        object.__setattr__(self, "max_steps", int(m))
        rows = self.quality
        if not _seq(rows) or len(rows) != len(CATEGORIES):
            raise ValueError(f"{who} quality must hold {len(CATEGORIES)} (q_max, q_0, s0) "
                             f"triples, one per category ({', '.join(CATEGORIES)})")
        out = []
        for cat, row in zip(CATEGORIES, rows, strict=True):
            if not _seq(row) or len(row) != 3:
                raise ValueError(f"{who} quality for {cat} must be a (q_max, q_0, s0) triple, "
                                 f"not {row!r}")
            q_max, q_0, s0 = (_number(f"{who} quality for {cat}", x, lo=None) for x in row)
            if s0 < 0:
                raise ValueError(f"{who} quality for {cat}: s0 must be >= 0, not {s0}")
            out.append((q_max, q_0, s0))
        object.__setattr__(self, "quality", tuple(out))

    def curve(self, category: int) -> QualityCurve:
        return QualityCurve(*self.quality[category])


def _seq(x: object) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str | bytes)


def _number(what: str, value: object, lo: float | None = 0.0) -> float:
    """``value`` as a finite float (>= ``lo`` unless None), else a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{what} must be a number, not {value!r}")
    x = float(value)
    if not math.isfinite(x) or (lo is not None and x < lo):
        bound = "a finite number" if lo is None else f"a finite number >= {lo:g}"
        raise ValueError(f"{what} must be {bound}, not {value!r}")
    return x


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
    with np.errstate(divide="ignore", over="ignore"):  # s0 = 0: exp(-inf) = 0, saturated
        decay = np.exp(-s[None, None, :] / s0)
    return {
        "steps": s,
        "per_step": np.array([b.step_latency_s for b in backends])[:, None] * s[None, :],
        "quality": q_max - (q_max - q_0) * decay,  # (B, C, S)
        "cost": np.array([b.price_per_step for b in backends])[:, None] * s[None, :],
        "allowed": s[None, :] <= np.array([b.max_steps for b in backends])[:, None],
        "max": np.array([b.max_steps for b in backends]),
    }


def _prepare(
    backends: Sequence[BackendProfile],
    steps: Sequence[int],
    latency_weight: float,
    cost_weight: float,
    deadline_s: float | None,
    busy_s: Sequence[float] | None,
) -> tuple[tuple[BackendProfile, ...], dict[str, np.ndarray], np.ndarray]:
    """Checked backends, their table and backlog; one-line ValueErrors naming the argument."""
    bt = tuple(backends)
    if not bt or not all(isinstance(b, BackendProfile) for b in bt):
        raise ValueError("backends must be a non-empty sequence of BackendProfile")
    if not _seq(steps) or not steps:
        raise ValueError(f"steps must be a non-empty sequence of integers >= 1, not {steps!r}")
    if any(isinstance(x, bool) or not isinstance(x, int | np.integer) or x < 1 for x in steps):
        raise ValueError(f"steps must be integers >= 1, not {tuple(steps)!r}")
    _number("latency_weight", latency_weight)
    _number("cost_weight", cost_weight)
    if deadline_s is not None and _number("deadline_s", deadline_s) <= 0:
        raise ValueError(f"deadline_s must be positive (or None), not {deadline_s!r}")
    if busy_s is None:
        busy = np.zeros(len(bt))
    else:
        busy = np.array(busy_s, dtype=np.float64)
        if busy.shape != (len(bt),):
            raise ValueError(f"busy_s must hold one backlog per backend ({len(bt)}), "
                             f"not shape {busy.shape}")
        if not np.isfinite(busy).all() or (busy < 0).any():
            raise ValueError(f"busy_s must be finite and >= 0, not {busy.tolist()}")
    return bt, _table(bt, tuple(int(x) for x in steps)), busy


def _category(category: object) -> int:
    try:
        c = operator.index(category)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"category must be an integer index, not {category!r}") from None
    if isinstance(category, bool) or not 0 <= c < len(CATEGORIES):
        raise ValueError(f"category must be in 0..{len(CATEGORIES) - 1} "
                         f"({', '.join(CATEGORIES)}), not {category!r}")
    return c


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
    if not allowed.any():
        limits = ", ".join(f"{n}: {m}" for n, m in zip(names, t["max"], strict=True))
        raise ValueError(f"steps {tuple(int(x) for x in t['steps'])} exceed every backend's "
                         f"max_steps ({limits}); no (backend, steps) candidate remains")
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
    predicted latency is backlog plus this request's own run time. Step counts above a backend's
    ``max_steps`` are never chosen there; ValueError if no (backend, steps) pair remains.
    """
    bt, t, busy = _prepare(backends, steps, latency_weight, cost_weight, deadline_s, busy_s)
    names = [b.name for b in bt]
    return _pick(t, names, _category(category), busy, latency_weight, cost_weight,
                 deadline_s)[0]


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
    bt, t, busy = _prepare(backends, steps, latency_weight, cost_weight, deadline_s, busy_s)
    names = [b.name for b in bt]
    cats = [_category(c) for c in categories]
    out = []
    for c in cats:
        choice, k = _pick(t, names, c, busy, latency_weight, cost_weight, deadline_s)
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
