"""Offloading and quality control for AIGC at the edge (Wang, Liu, Zhao, arXiv 2312.06203).

Sources and modelling choices (research notes, P6; only the abstract was available):

- [SRC] Each user's diffusion job runs locally or on the edge server; the decision variables are
  the offloading decision, the computation time (equivalently the CPU/GPU frequency) and the
  number of reverse-diffusion steps; "average error" measures quality.
- [INF] Local run of ``T`` steps at frequency ``f``: latency ``c_l T / f``, energy
  ``kappa c_l T f^2`` (DVFS), ``f <= f_max``, within the device's battery budget.
- [INF] Edge run with ``u`` of the server's ``units`` compute slices: latency
  ``d_up / R + c_e T U / (u F_e) + d_img / R``, device energy ``p_tx d_up / R``.
- [INF] Error ``eps(T) = a T^-b + c`` (a power-law fit; research note §8).
- Objective: minimise ``sum_n w_t latency + w_e energy + w_q eps(T_n)`` s.t. deadlines, battery,
  ``sum u_n <= units``. Given (local, or ``u`` units), each user's best ``T`` and ``f`` are
  independent of the others, so :func:`option_costs` tabulates ``cost[n, u]`` exactly and the
  whole problem is a multiple-choice knapsack (:mod:`schedulers.offloading_policies`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from schedulers.core import integer, number, numbers

INFEASIBLE = 1e6
_PER_USER = ("f_max_ghz", "battery_j", "rate_mbps", "deadline_s")
_POSITIVE = ("cycles_local", "cycles_edge", "edge_ghz", "kappa", "w_t", "w_e")
_NON_NEGATIVE = ("p_tx_w", "up_mb", "down_mb", "err_a", "err_b", "w_q")


@dataclass(frozen=True)
class OffloadingProblem:
    """Users' devices and links, the edge server, and the objective's weights."""

    f_max_ghz: np.ndarray  # (n,)
    battery_j: np.ndarray  # (n,)
    rate_mbps: np.ndarray  # (n,)
    deadline_s: np.ndarray  # (n,)
    cycles_local: float = 1.0  # Gcycles per step on the device
    cycles_edge: float = 1.0  # Gcycles per step on the edge
    edge_ghz: float = 20.0
    units: int = 10
    kappa: float = 0.05  # J / (Gcycle GHz^2)
    p_tx_w: float = 0.5
    up_mb: float = 0.01
    down_mb: float = 2.0
    t_max: int = 50
    err_a: float = 1.0
    err_b: float = 0.8
    err_c: float = 0.02
    w_t: float = 1.0
    w_e: float = 1.0
    w_q: float = 20.0

    def __post_init__(self) -> None:
        """Checked when made: one value per user in each array, finite and in range (a deadline
        must be positive: one already past could never be met); ValueError naming the field."""
        n = None
        for name in _PER_USER:
            above = name != "battery_j"
            arr = numbers(name, getattr(self, name), n, 0.0, above=above)
            object.__setattr__(self, name, arr)
            n = arr.size
        for name in _POSITIVE:
            object.__setattr__(self, name, number(name, getattr(self, name), 0.0, above=True))
        for name in _NON_NEGATIVE:
            object.__setattr__(self, name, number(name, getattr(self, name), 0.0))
        object.__setattr__(self, "err_c", number("err_c", self.err_c))
        object.__setattr__(self, "units", integer("units", self.units, 1))
        object.__setattr__(self, "t_max", integer("t_max", self.t_max, 1))

    @property
    def n(self) -> int:
        return int(self.f_max_ghz.size)

    def error(self, steps: np.ndarray) -> np.ndarray:
        return self.err_a * np.asarray(steps, dtype=np.float64) ** -self.err_b + self.err_c


def make_problem(rng: np.random.Generator, n_users: int = 8, **kw: object) -> OffloadingProblem:
    return OffloadingProblem(
        f_max_ghz=rng.uniform(1.0, 3.0, n_users),
        battery_j=rng.uniform(2.0, 10.0, n_users),
        rate_mbps=rng.uniform(5.0, 50.0, n_users),
        deadline_s=rng.uniform(5.0, 20.0, n_users),
        **kw,  # type: ignore[arg-type]
    )


def local_terms(p: OffloadingProblem, steps: np.ndarray) -> dict[str, np.ndarray]:
    """(n, T) latency, energy, cost of running ``steps`` locally at the best frequency.

    For fixed ``T`` the cost ``w_t c T / f + w_e kappa c T f^2`` is convex in ``f`` with minimum
    at ``f* = (w_t / (2 w_e kappa))^(1/3)``; the feasible frequencies form the interval from the
    deadline's ``c T / tau`` to ``min(f_max, sqrt(battery / (kappa c T)))``, so the optimum is
    ``f*`` clipped to it (infeasible when the interval is empty).
    """
    t = np.asarray(steps, dtype=np.float64)[None, :]
    work = p.cycles_local * t
    f_star = (p.w_t / (2.0 * p.w_e * p.kappa)) ** (1.0 / 3.0)
    f_lo = work / p.deadline_s[:, None]
    f_hi = np.minimum(p.f_max_ghz[:, None], np.sqrt(p.battery_j[:, None] / (p.kappa * work)))
    f = np.clip(np.full(work.shape, f_star), f_lo, None)
    f = np.minimum(f, f_hi)
    latency = work / f
    energy = p.kappa * work * f**2
    cost = p.w_t * latency + p.w_e * energy + p.w_q * p.error(t)
    bad = f_lo > f_hi * (1 + 1e-12)
    return {"latency": latency, "energy": energy, "cost": np.where(bad, INFEASIBLE, cost)}


def edge_terms(p: OffloadingProblem, steps: np.ndarray, units: int) -> dict[str, np.ndarray]:
    """(n, T) latency, energy, cost of running ``steps`` on ``units`` edge slices."""
    t = np.asarray(steps, dtype=np.float64)[None, :]
    comm = (p.up_mb + p.down_mb) / p.rate_mbps[:, None]
    latency = comm + p.cycles_edge * t * p.units / (units * p.edge_ghz)
    energy = np.broadcast_to(p.p_tx_w * p.up_mb / p.rate_mbps[:, None], latency.shape)
    cost = p.w_t * latency + p.w_e * energy + p.w_q * p.error(t)
    bad = latency > p.deadline_s[:, None] + 1e-9
    return {"latency": latency, "energy": energy, "cost": np.where(bad, INFEASIBLE, cost)}


def option_costs(p: OffloadingProblem) -> tuple[np.ndarray, np.ndarray]:
    """``cost[n, u]`` and best steps ``steps[n, u]``; ``u = 0`` means local execution.

    Local: enumerate ``T``. Edge: the cost ``A T + w_q a T^-b`` (``A`` the weighted latency of
    one step on ``u`` units) is convex in ``T``, so the best integer ``T`` is the floor or ceiling
    of ``(w_q a b / A)^(1/(b+1))`` clipped to ``[1, T_deadline]``; O(n U) in all, so 1,000 users
    x 100 units take milliseconds.
    """
    grid = np.arange(1, p.t_max + 1)
    loc = local_terms(p, grid)["cost"]
    u = np.arange(1, p.units + 1, dtype=np.float64)[None, :]
    comm = ((p.up_mb + p.down_mb) / p.rate_mbps)[:, None]
    per_step = p.cycles_edge * p.units / (u * p.edge_ghz)  # seconds per step on u units
    a = p.w_t * per_step
    t_star = (p.w_q * p.err_a * p.err_b / a) ** (1.0 / (p.err_b + 1.0))
    t_hi = np.minimum(p.t_max, np.floor((p.deadline_s[:, None] - comm + 1e-9) / per_step))
    fixed = p.w_t * comm + p.w_e * p.p_tx_w * p.up_mb / p.rate_mbps[:, None]
    best_c = np.full((p.n, p.units), np.inf)
    best_t = np.ones((p.n, p.units), dtype=np.int64)
    for cand in (np.floor(t_star), np.ceil(t_star)):
        t = np.clip(np.broadcast_to(cand, best_c.shape), 1, np.maximum(t_hi, 1))
        c = fixed + a * t + p.w_q * p.error(t)
        better = c < best_c
        best_c, best_t = np.where(better, c, best_c), np.where(better, t, best_t).astype(np.int64)
    best_c = np.where(t_hi < 1, INFEASIBLE, best_c)
    j = loc.argmin(axis=1)
    cost = np.column_stack([loc[np.arange(p.n), j], best_c])
    return cost, np.column_stack([grid[j], best_t])


@dataclass(frozen=True)
class Decision:
    """Per user: edge units (0 = local) and reverse-diffusion steps."""

    units: np.ndarray
    steps: np.ndarray


def evaluate(p: OffloadingProblem, d: Decision) -> dict[str, float]:
    """Objective and its terms (means over users); ``inf`` if infeasible."""
    lat, en, cost = np.empty(p.n), np.empty(p.n), np.empty(p.n)
    for i in range(p.n):
        s = np.array([d.steps[i]])
        one = _one(p, i)
        terms = local_terms(one, s) if d.units[i] == 0 else edge_terms(one, s, int(d.units[i]))
        lat[i], en[i], cost[i] = terms["latency"][0, 0], terms["energy"][0, 0], terms["cost"][0, 0]
    objective = float(cost.sum())
    if objective >= INFEASIBLE or int(d.units.sum()) > p.units:
        objective = float("inf")
    return {
        "objective": objective,
        "latency_s": float(lat.mean()),
        "energy_j": float(en.mean()),
        "avg_error": float(p.error(d.steps).mean()),
        "offloaded": float((d.units > 0).mean()),
    }


def _one(p: OffloadingProblem, i: int) -> OffloadingProblem:
    """User ``i`` alone (a copy of a checked problem: not checked again, it is in the inner loop
    of the annealer)."""
    one = copy.copy(p)
    for name in _PER_USER:
        object.__setattr__(one, name, getattr(p, name)[i : i + 1])
    return one
