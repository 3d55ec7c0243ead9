"""Policies for :mod:`schedulers.offloading`.

- ``ours``: exact dynamic programme over users and edge units on the tabulated option costs
  (multiple-choice knapsack, O(n U^2)); hand-written because it is ten lines and faster than
  building a solver model.
- ``milp_optimum``: the same problem as a HiGHS MILP (scipy), an independent exact reference.
- ``alternating`` (the paper's kind of method, [INF]): continuous compute shares by the
  square-root rule for fixed steps, best steps and frequency per user for fixed shares, offloading
  flips for fixed shares, repeated; shares are then rounded to units (largest remainders).
- ``simulated_annealing``: moves on (units, steps) of one user at a time.
- Baselines: all local, all offloaded with an equal split, random offloading, fixed 20 steps.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from schedulers.core import split_units
from schedulers.offloading import (
    INFEASIBLE,
    Decision,
    OffloadingProblem,
    edge_terms,
    evaluate,
    local_terms,
    option_costs,
)


def ours(p: OffloadingProblem, rng: np.random.Generator | None = None) -> Decision:
    """Exact optimum: tabulate each user's best option per unit count, then the knapsack DP."""
    cost, steps = option_costs(p)
    units = split_units(cost, p.units)
    return Decision(units, steps[np.arange(p.n), units])


def milp_optimum(p: OffloadingProblem) -> tuple[Decision, float]:
    cost, steps = option_costs(p)
    n, k = cost.shape
    c = np.minimum(cost, INFEASIBLE).ravel()
    one = np.kron(np.eye(n), np.ones(k))
    cap = np.tile(np.arange(k, dtype=np.float64), n)[None, :]
    res = milp(
        c,
        constraints=[LinearConstraint(one, 1, 1), LinearConstraint(cap, 0, p.units)],
        integrality=np.ones(n * k),
        bounds=Bounds(0, 1),
    )
    if res.x is None:
        raise RuntimeError(f"MILP failed: {res.message}")
    units = np.round(res.x).reshape(n, k).argmax(axis=1)
    return Decision(units, steps[np.arange(n), units]), float(res.fun)


def _best_steps(
    p: OffloadingProblem, units: np.ndarray, share: np.ndarray | None = None
) -> np.ndarray:
    grid = np.arange(1, p.t_max + 1)
    out = np.empty(p.n, dtype=np.int64)
    loc = local_terms(p, grid)["cost"]
    for i in range(p.n):
        if units[i] == 0:
            out[i] = grid[loc[i].argmin()]
        else:
            u = units[i] if share is None else share[i] * p.units
            out[i] = grid[edge_terms(p, grid, u)["cost"][i].argmin()]  # type: ignore[arg-type]
    return out


def _round_shares(share: np.ndarray, units: int) -> np.ndarray:
    raw = share * units
    out = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - out))[: units - int(out.sum())]:
        if share[i] > 0:
            out[i] += 1
    return out


def _relaxed(p: OffloadingProblem, off: np.ndarray, rounds: int) -> tuple[float, np.ndarray]:
    """Alternate continuous shares (square-root rule) and steps for a fixed offloading set."""
    grid = np.arange(1, p.t_max + 1)
    steps = np.full(p.n, p.t_max // 2)
    share = np.zeros(p.n)
    for _ in range(rounds):
        w = np.sqrt(steps * off)
        share = w / w.sum() if w.sum() > 0 else w
        steps = _best_steps(p, off.astype(np.int64), share)
    loc = local_terms(p, grid)["cost"].min(axis=1)
    total = 0.0
    for i in range(p.n):
        if off[i]:
            total += edge_terms(p, grid, share[i] * p.units)["cost"][i].min()  # type: ignore[arg-type]
        else:
            total += loc[i]
    return float(total), share


def alternating(
    p: OffloadingProblem, rng: np.random.Generator | None = None, rounds: int = 4, passes: int = 3
) -> Decision:
    """Alternating optimisation on the continuous relaxation, then rounding to units.

    Inner loop: shares by the square-root rule (optimal for fixed steps, by Cauchy-Schwarz),
    then each user's best steps for its share. Outer loop: single-user offloading flips, kept
    when the relaxed objective falls, from the better of all-local and all-offload.
    """
    starts = [np.zeros(p.n, dtype=bool), np.ones(p.n, dtype=bool)]
    scored = [(_relaxed(p, o, rounds)[0], o) for o in starts]
    cur, off = min(scored, key=lambda t: t[0])
    for _ in range(passes):
        improved = False
        for i in range(p.n):
            trial = off.copy()
            trial[i] = ~trial[i]
            v = _relaxed(p, trial, rounds)[0]
            if v < cur - 1e-9:
                cur, off, improved = v, trial, True
        if not improved:
            break
    share = _relaxed(p, off, rounds)[1]
    units = _round_shares(share * off, p.units)
    grid = np.arange(1, p.t_max + 1)
    for i in np.flatnonzero(units):  # rounding left no feasible edge option: run locally
        if edge_terms(p, grid, int(units[i]))["cost"][i].min() >= INFEASIBLE:
            units[i] = 0
    return Decision(units, _best_steps(p, units))


def simulated_annealing(
    p: OffloadingProblem,
    rng: np.random.Generator,
    iters: int = 3000,
    t0: float = 5.0,
    cooling: float = 0.998,
) -> Decision:
    units = np.zeros(p.n, dtype=np.int64)
    steps = _best_steps(p, units)
    cur = evaluate(p, Decision(units, steps))["objective"]
    best, best_v, temp = Decision(units, steps), cur, t0
    for _ in range(iters):
        u2, s2 = units.copy(), steps.copy()
        i = int(rng.integers(p.n))
        if rng.random() < 0.5:
            u2[i] = max(0, u2[i] + int(rng.choice((-1, 1))))
        else:
            s2[i] = int(np.clip(s2[i] + rng.integers(-5, 6), 1, p.t_max))
        v = evaluate(p, Decision(u2, s2))["objective"]
        if v <= cur or rng.random() < np.exp(-(v - cur) / max(temp, 1e-9)):
            units, steps, cur = u2, s2, v
            if v < best_v:
                best, best_v = Decision(units.copy(), steps.copy()), v
        temp *= cooling
    return best


def all_local(p: OffloadingProblem, rng: np.random.Generator | None = None) -> Decision:
    units = np.zeros(p.n, dtype=np.int64)
    return Decision(units, _best_steps(p, units))


def _equal(p: OffloadingProblem, off: np.ndarray) -> Decision:
    units = np.zeros(p.n, dtype=np.int64)
    idx = np.flatnonzero(off)[: p.units]
    if idx.size:
        units[idx] = p.units // idx.size
        units[idx[: p.units % idx.size]] += 1
    return Decision(units, _best_steps(p, units))


def all_offload(p: OffloadingProblem, rng: np.random.Generator | None = None) -> Decision:
    return _equal(p, np.ones(p.n, dtype=bool))


def random_offload(p: OffloadingProblem, rng: np.random.Generator) -> Decision:
    return _equal(p, rng.random(p.n) < 0.5)


def fixed_steps(
    p: OffloadingProblem, rng: np.random.Generator | None = None, steps: int = 20
) -> Decision:
    """Best offloading and units (exact DP) when every job runs a fixed ``steps`` steps."""
    t = np.array([steps])
    cost = np.column_stack(
        [local_terms(p, t)["cost"][:, 0]]
        + [edge_terms(p, t, u)["cost"][:, 0] for u in range(1, p.units + 1)]
    )
    return Decision(split_units(cost, p.units), np.full(p.n, steps))
