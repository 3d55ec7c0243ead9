"""Joint model assignment, denoising steps and compute allocation (Gao et al., arXiv 2409.09072).

Sources and modelling choices (research notes, P4; the full text was not available):

- [SRC] Prompts fall into the categories Basic, Detail, Imagination and Complex; a model's
  CLIPScore within a category is Gaussian; an edge server assigns a model per prompt from the
  category's expected score, then a simulated-annealing heuristic picks steps and compute shares
  per model to maximise quality minus latency under a fixed compute budget.
- [INF] Categories come from the PartiPrompts "Challenge" column (Simple / Fine-grained Detail
  both map to Detail; prompts with other challenges are not drawn). The three models, their
  expected CLIPScores (x100) per category, step latencies and the batch-delay model
  ``s (a + b (n - 1)) / share`` (research note §8, batch delay ``g(X) = a X + b [X > 0]``) are
  our reconstruction, chosen so that larger models are better on hard categories and slower.
- [INF] Compute is split in ``units`` equal shares (GPU slices); steps come from a finite grid.
  Both make the problem a finite one whose exact optimum a MILP can certify.

Utility = sum over prompts of expected CLIPScore x100 minus ``delay_weight`` x delay (s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from schedulers.core import ModelProfile, QualityCurve, integer, number, split_units
from schedulers.data import load

CATEGORIES = ("Basic", "Detail", "Imagination", "Complex")
_CHALLENGE = {
    "Basic": 0,
    "Simple Detail": 1,
    "Fine-grained Detail": 1,
    "Imagination": 2,
    "Complex": 3,
}

#: [INF] saturation CLIPScore x100 per category (Basic, Detail, Imagination, Complex).
_MODELS = (
    ("sd-small", 0.020, 0.008, 4.0, (30.5, 29.0, 28.5, 27.5)),
    ("sd-base", 0.050, 0.020, 8.0, (31.0, 30.5, 30.0, 29.0)),
    ("sd-xl", 0.120, 0.050, 10.0, (31.5, 32.0, 32.0, 31.5)),
)


@dataclass(frozen=True)
class AssignmentProblem:
    """Models, per-category quality curves, step grid, compute units and the prompts' categories."""

    categories: np.ndarray  # (n,) category index per prompt
    models: tuple[ModelProfile, ...]
    curves: tuple[tuple[QualityCurve, ...], ...]  # [model][category]
    steps: tuple[int, ...] = (5, 10, 15, 20, 30, 40, 50)
    units: int = 10
    delay_weight: float = 0.1
    quality_sigma: float = 2.0
    _q: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Checked when made (ValueError naming the field), then the quality table built."""
        cats = np.asarray(self.categories)
        if cats.ndim != 1 or cats.size == 0 or not np.issubdtype(cats.dtype, np.integer):
            raise ValueError("categories must be a non-empty 1-D array of category indices, "
                             f"not {self.categories!r}")
        if cats.min() < 0 or cats.max() >= len(CATEGORIES):
            raise ValueError(f"categories must be in 0..{len(CATEGORIES) - 1}")
        if not self.models or len(self.curves) != len(self.models) or any(
            len(per) != len(CATEGORIES) for per in self.curves
        ):
            raise ValueError(f"curves must hold {len(CATEGORIES)} quality curves per model "
                             f"({len(self.models)} models)")
        if isinstance(self.steps, str | bytes) or not self.steps:
            raise ValueError(f"steps must be a non-empty tuple of integers >= 1, not "
                             f"{self.steps!r}")
        object.__setattr__(self, "steps", tuple(integer("steps", x, 1) for x in self.steps))
        object.__setattr__(self, "units", integer("units", self.units, 1))
        object.__setattr__(self, "delay_weight", number("delay_weight", self.delay_weight, 0.0))
        object.__setattr__(self, "quality_sigma", number("quality_sigma", self.quality_sigma, 0.0))
        s = np.asarray(self.steps, dtype=np.float64)
        q = np.array([[c(s) for c in per] for per in self.curves])  # (K, C, S)
        object.__setattr__(self, "_q", q)

    @property
    def quality(self) -> np.ndarray:
        """(K, C, S) expected CLIPScore x100 of model k on category c with steps s."""
        return self._q

    def batch_time(self, k: int, n: int | np.ndarray) -> np.ndarray:
        """(S,) seconds to run a batch of ``n`` prompts on model ``k`` on the whole server."""
        m = self.models[k]
        per = m.step_latency_s + m.batch_latency_s * (np.asarray(n) - 1)
        return np.asarray(self.steps, dtype=np.float64) * per


def default_models() -> tuple[tuple[ModelProfile, ...], tuple[tuple[QualityCurve, ...], ...]]:
    models, curves = [], []
    for name, a, b, s0, mus in _MODELS:
        models.append(ModelProfile(name, a, QualityCurve(max(mus), 20.0, s0), batch_latency_s=b))
        curves.append(tuple(QualityCurve(mu, 20.0, s0) for mu in mus))
    return tuple(models), tuple(curves)


def parti_categories() -> np.ndarray:
    """Category index of every PartiPrompts prompt whose challenge maps to one of the four."""
    rows = load("parti_prompts.json")["rows"]
    return np.array([_CHALLENGE[r[2]] for r in rows if r[2] in _CHALLENGE], dtype=np.int64)


def category_of(challenge: str) -> int | None:
    return _CHALLENGE.get(challenge)


def make_problem(rng: np.random.Generator, n_prompts: int = 8, **kw: object) -> AssignmentProblem:
    """Draw ``n_prompts`` prompts uniformly from PartiPrompts (four categories)."""
    pool = parti_categories()
    models, curves = default_models()
    return AssignmentProblem(rng.choice(pool, size=n_prompts), models, curves, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Plan:
    """A decision: model per prompt, steps index and compute units per model (0 = unused)."""

    model: np.ndarray  # (n,)
    step_idx: np.ndarray  # (K,)
    units: np.ndarray  # (K,)


def evaluate(p: AssignmentProblem, plan: Plan) -> dict[str, float]:
    """Utility and its terms; ``-inf`` utility when a used model has no compute."""
    q = p.quality
    s_idx = plan.step_idx[plan.model]
    quality = q[plan.model, p.categories, s_idx]
    delays = np.zeros(p.categories.size)
    for k in range(len(p.models)):
        mask = plan.model == k
        n = int(mask.sum())
        if n == 0:
            continue
        if plan.units[k] <= 0:
            return {"utility": -np.inf, "quality": float(quality.mean()), "delay_s": np.inf}
        t = p.batch_time(k, n)[plan.step_idx[k]] * p.units / plan.units[k]
        delays[mask] = t
    utility = float(quality.sum() - p.delay_weight * delays.sum())
    if int(plan.units.sum()) > p.units:
        utility = -np.inf
    return {"utility": utility, "quality": float(quality.mean()), "delay_s": float(delays.mean())}


def model_values(p: AssignmentProblem, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best value and step index per (model, units) for ``counts`` (K, C) prompts per model.

    ``value[k, u]`` is ``max_s  sum_c counts[k,c] q[k,c,s] - w n_k s (a + b (n_k - 1)) U / u``
    for ``u = 1..U`` (index 0 holds ``u = 0``: zero if the model is unused, ``-inf`` otherwise).
    """
    k_n, u_n = counts.shape[0], p.units
    u = np.arange(1, u_n + 1, dtype=np.float64)
    value = np.zeros((k_n, u_n + 1))
    arg = np.zeros((k_n, u_n + 1), dtype=np.int64)
    for k in range(k_n):
        n = int(counts[k].sum())
        if n == 0:
            value[k, 1:] = -np.inf
            continue
        qsum = counts[k] @ p.quality[k]  # (S,)
        delay = p.delay_weight * n * p.batch_time(k, n)[:, None] * u_n / u[None, :]  # (S, U)
        v = qsum[:, None] - delay
        arg[k, 1:] = v.argmax(axis=0)
        value[k, 1:] = v.max(axis=0)
        value[k, 0] = -np.inf
    return value, arg


def best_configuration(p: AssignmentProblem, model: np.ndarray) -> Plan:
    """Exact best steps and units for a fixed assignment (multiple-choice knapsack DP)."""
    counts = np.zeros((len(p.models), len(CATEGORIES)))
    np.add.at(counts, (model, p.categories), 1)
    value, arg = model_values(p, counts)
    units = split_units(-value, p.units)  # maximise value = minimise its negation
    steps = arg[np.arange(len(units)), units]
    return Plan(model.astype(np.int64), steps, units)
