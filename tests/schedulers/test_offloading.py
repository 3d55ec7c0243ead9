"""Offloading and quality control (Wang et al.): DP = MILP = brute force on small instances."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from schedulers import offloading_policies as op
from schedulers.offloading import INFEASIBLE, Decision, evaluate, local_terms, make_problem


def test_local_frequency_is_the_convex_optimum():
    p = make_problem(np.random.default_rng(0), 3)
    t = np.array([10])
    got = local_terms(p, t)["cost"][:, 0]
    f = np.linspace(0.05, 3.0, 20000)[None, :]
    work = p.cycles_local * 10
    lat = work / f
    cost = p.w_t * lat + p.w_e * p.kappa * work * f**2 + p.w_q * p.error(t)
    ok = (lat <= p.deadline_s[:, None]) & (f <= p.f_max_ghz[:, None])
    ok &= p.kappa * work * f**2 <= p.battery_j[:, None]
    brute = np.where(ok, cost, np.inf).min(axis=1)
    feasible = np.isfinite(brute)
    assert (got < INFEASIBLE).tolist() == feasible.tolist()
    assert got[feasible] == pytest.approx(brute[feasible], rel=1e-3)


def test_dp_equals_enumeration_and_milp():
    p = make_problem(np.random.default_rng(1), 3, units=3, t_max=6)
    best = np.inf
    for u in itertools.product(range(4), repeat=3):
        if sum(u) > 3:
            continue
        for s in itertools.product(range(1, 7), repeat=3):
            best = min(best, evaluate(p, Decision(np.array(u), np.array(s)))["objective"])
    assert evaluate(p, op.ours(p))["objective"] == pytest.approx(best)
    assert op.milp_optimum(p)[1] == pytest.approx(best)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_policy_is_feasible_or_worse_than_ours(seed):
    rng = np.random.default_rng(seed)
    p = make_problem(rng, 6)
    ours = evaluate(p, op.ours(p))["objective"]
    for fn in (op.alternating, op.all_local, op.all_offload, op.random_offload, op.fixed_steps):
        assert evaluate(p, fn(p, rng))["objective"] >= ours - 1e-9
    d = op.ours(p)
    assert d.units.sum() <= p.units


def test_closed_form_edge_steps_match_enumeration():
    from schedulers.offloading import edge_terms, option_costs

    p = make_problem(np.random.default_rng(7), 10)
    cost, _ = option_costs(p)
    grid = np.arange(1, p.t_max + 1)
    for u in range(1, p.units + 1):
        brute = edge_terms(p, grid, u)["cost"].min(axis=1)
        assert np.minimum(cost[:, u], INFEASIBLE) == pytest.approx(np.minimum(brute, INFEASIBLE))


def test_sb3_adapter_walks_users_like_the_environment():
    """The PPO row's adapter: actions -> units (clipped to what is left) -> the same objective."""
    from schedulers.bench_sb3 import offloading_policy

    class Always:
        def __init__(self, a):
            self.a = a

        def predict(self, obs, deterministic=True):
            assert obs.shape == (6,)
            return np.int64(self.a), None

    p = make_problem(np.random.default_rng(3), 6)
    local = offloading_policy(Always(0))(p)
    assert local.units.tolist() == [0] * 6
    assert evaluate(p, local)["objective"] == pytest.approx(
        evaluate(p, op.all_local(p))["objective"]
    )
    greedy = offloading_policy(Always(4))(p)
    assert greedy.units.tolist() == [4, 4, 2, 0, 0, 0]  # 10 units, clipped as they run out
    assert evaluate(p, greedy)["objective"] >= evaluate(p, op.ours(p))["objective"] - 1e-9
