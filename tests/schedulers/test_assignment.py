"""Model assignment (Gao et al.): exact pieces agree with brute force and the MILP."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from schedulers import assignment_policies as ap
from schedulers.assignment import Plan, best_configuration, evaluate, make_problem


def test_best_configuration_matches_brute_force():
    p = make_problem(np.random.default_rng(0), 5, units=4, steps=(5, 20, 50))
    model = np.array([0, 1, 2, 2, 1])
    got = evaluate(p, best_configuration(p, model))["utility"]
    best = -np.inf
    for s in itertools.product(range(3), repeat=3):
        for u in itertools.product(range(5), repeat=3):
            if sum(u) <= 4:
                best = max(best, evaluate(p, Plan(model, np.array(s), np.array(u)))["utility"])
    assert got == pytest.approx(best)


@pytest.mark.parametrize("seed", [0, 1])
def test_milp_is_an_upper_bound_and_ours_reaches_98_percent(seed):
    rng = np.random.default_rng(seed)
    p = make_problem(rng, 5, units=5, steps=(5, 10, 20, 50))
    plan, opt = ap.milp_optimum(p)
    assert evaluate(p, plan)["utility"] == pytest.approx(opt, rel=1e-6)
    for fn in (ap.ours, ap.gao_sa, ap.best_quality, ap.largest_model, ap.random_model):
        assert evaluate(p, fn(p, rng))["utility"] <= opt + 1e-6
    assert evaluate(p, ap.ours(p))["utility"] >= 0.98 * opt


def test_the_papers_named_benchmarks():
    rng = np.random.default_rng(3)
    p = make_problem(rng, 6, units=6, steps=(5, 10, 20, 50))
    _, opt = ap.milp_optimum(p)
    plans = {f.__name__: f(p, rng) for f in (ap.direct_sa, ap.equal_allocation, ap.optimal_step)}
    plans["gao_sa"] = ap.anneal(p, ap.threshold_assignment(p), rng, iters=400)
    u = {k: evaluate(p, v)["utility"] for k, v in plans.items()}
    assert all(v <= opt + 1e-6 for v in u.values())
    assert u["optimal_step"] >= u["gao_sa"] - 1e-9  # exact steps/units for the same assignment
    assert u["optimal_step"] >= u["equal_allocation"] - 1e-9
    eq = plans["equal_allocation"]
    used = np.unique(eq.model)
    assert eq.units[used].max() - eq.units[used].min() <= 1  # an equal split
    assert (plans["direct_sa"].model == ap.best_quality(p).model).all()
