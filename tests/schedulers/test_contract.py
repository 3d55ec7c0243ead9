"""Contract scenario (Zhan et al.): contract optimality conditions, reproduction, allocation."""

from __future__ import annotations

import numpy as np
import pytest

from schedulers.contract import (
    ContractParams,
    difficulty_table,
    eligible,
    make_scenario,
    optimal_bundle,
    utilities,
)
from schedulers.contract_alloc import Queues, exact, fifo_completion, greedy, paper_completion
from schedulers.contract_run import run
from schedulers.data import load

PUBLISHED = load("vlm_contract_published.json")["tables"]["200x30"]


def test_asymmetric_contract_binds_ir_low_and_ic_high():
    c = ContractParams()
    b = optimal_bundle(c)
    (q_l, q_h), (p_l, p_h) = b.quality, b.price
    assert c.value(c.theta_l, q_l) - p_l == pytest.approx(0.0, abs=1e-12)  # IR of type 1
    u_h_own = c.value(c.theta_h, q_h) - p_h
    u_h_other = c.value(c.theta_h, q_l) - p_l
    assert u_h_own == pytest.approx(u_h_other, abs=1e-12)  # IC of type 2
    assert q_l < q_h and p_l < p_h


def test_complete_information_takes_the_whole_surplus():
    c = ContractParams()
    b = optimal_bundle(c, complete_info=True)
    for t, theta in enumerate((c.theta_l, c.theta_h)):
        assert c.value(theta, b.quality[t]) == pytest.approx(b.price[t])


@pytest.mark.parametrize(("scheme", "col"), [("vlm", 2), ("human", 3), ("oracle", 4)])
def test_expected_teleoperator_utility_matches_published_within_3_percent(scheme, col):
    """Utilities of label-based schemes do not depend on the allocation: their expectation
    over a uniformly drawn image is exact, so compare it to the paper's 30-round mean."""
    table = difficulty_table()
    labels = table[:, {"vlm": 3, "human": 4, "oracle": 5}[scheme]].astype(int)
    scores = np.where(labels == 1, table[:, 1], table[:, 2])
    c = ContractParams()
    u_t, u_e = utilities(c, optimal_bundle(c), labels, scores)
    assert u_t.mean() == pytest.approx(PUBLISHED["teleoperator_utility"][col], rel=0.03)
    assert 200 * u_e.mean() / 30 == pytest.approx(PUBLISHED["server_utility"][col], rel=0.03)


def test_short_run_is_seeded_and_close_to_published():
    a = run(200, 30, rounds=4, seed=1)
    b = run(200, 30, rounds=4, seed=1)
    assert np.array_equal(a["server_utility"]["vlm"], b["server_utility"]["vlm"])
    got = a["server_utility"]["no_contract"].mean()
    assert got == pytest.approx(PUBLISHED["server_utility"][0], rel=0.05)


def test_allocations_respect_contract_classes():
    rng = np.random.default_rng(0)
    sc = make_scenario(rng, 60, 10)
    labels = sc.labels("vlm", rng)
    allowed = eligible(sc, labels)
    for choice in (greedy(sc, allowed), exact(sc, allowed)):
        assert allowed[np.arange(60), choice].all()
        done = fifo_completion(sc, choice)
        start = sc.trans_ms[np.arange(60), choice]
        assert (done >= start + sc.time_per_img_ms[choice] - 1e-9).all()


def test_exact_is_optimal_for_its_slot_model():
    """Its back-to-back slot cost, summed, is never above the greedy's under the same model."""
    from schedulers.contract_alloc import slot_total

    rng = np.random.default_rng(2)
    sc = make_scenario(rng, 80, 8)
    allowed = eligible(sc, sc.labels("oracle", rng))
    assert slot_total(sc, exact(sc, allowed)) <= slot_total(sc, greedy(sc, allowed))


def test_carried_queues_slow_later_schemes_as_in_the_published_code():
    rng = np.random.default_rng(3)
    sc = make_scenario(rng, 200, 30)
    q = Queues.empty(30)
    greedy(sc, eligible(sc, None), q)
    first = paper_completion(sc, q).mean()
    greedy(sc, eligible(sc, sc.labels("vlm", rng)), q)
    assert paper_completion(sc, q).mean() > 1.5 * first


def _dense_optimum(ready, tpi, deadline):
    """Hungarian algorithm on every (task, slot) pair with n slots per server: the full model."""
    from scipy.optimize import linear_sum_assignment

    from schedulers.contract_alloc import slot_cost

    n, m = ready.shape
    srv, k = np.repeat(np.arange(m), n), np.tile(np.arange(1, n + 1), m)
    cost = slot_cost(ready, tpi, k, srv, deadline)
    r, c = linear_sum_assignment(cost)
    return int(cost[r, c].sum())


@pytest.mark.parametrize("seed", range(6))
def test_certified_sparse_solver_equals_the_dense_hungarian_optimum(seed):
    from schedulers.contract_alloc import solve_slots

    rng = np.random.default_rng(seed)
    for _ in range(8):
        n, m = int(rng.integers(3, 40)), int(rng.integers(1, 6))
        ready, tpi = rng.uniform(0, 300, (n, m)), rng.uniform(20, 90, m)
        deadline = float(rng.choice([1000.0, 300.0, 120.0]))  # tight ones force late tasks
        srv, obj = solve_slots(ready, tpi, deadline, seed=seed)
        assert obj == _dense_optimum(ready, tpi, deadline)
        assert srv.shape == (n,) and srv.min() >= 0 and srv.max() < m


def test_exact_matches_the_old_hungarian_allocator_on_the_scenario():
    from schedulers.contract_alloc import exact_hungarian, slot_total

    rng = np.random.default_rng(4)
    sc = make_scenario(rng, 150, 12)
    allowed = eligible(sc, sc.labels("vlm", rng))
    assert slot_total(sc, exact(sc, allowed)) == slot_total(sc, exact_hungarian(sc, allowed))


def test_slot_minima_equal_the_dense_reduced_costs():
    """The O(tasks x servers) per-task and per-slot minima equal a dense check's."""
    from schedulers.contract_alloc import slot_cost
    from schedulers.contract_slots import _Slots

    rng = np.random.default_rng(11)
    for _ in range(40):
        n, m = int(rng.integers(2, 30)), int(rng.integers(1, 6))
        ready, tpi = rng.uniform(0, 300, (n, m)), rng.uniform(20, 90, m)
        deadline = float(rng.choice([1000.0, 200.0]))
        slots = _Slots(ready, tpi, deadline, rng.integers(1, 8, m))
        d, u = rng.integers(0, 10**6, slots.n_slots), rng.integers(0, 10**6, n)
        full = slot_cost(ready, tpi, slots.k, slots.srv, deadline) + d[None, :] - u[:, None]
        gap, best_slot = slots.row_best(d, u)
        gap_c, best_task = slots.col_best(d, u)
        assert np.array_equal(gap[:, 0], full.min(1))
        assert np.array_equal(full[np.arange(n), best_slot[:, 0]], gap[:, 0])
        gap3, slot3 = slots.row_best(d, u, top=3)
        assert np.array_equal(gap3[:, 0], gap[:, 0]) and (np.diff(gap3, axis=1) >= 0).all()
        assert np.array_equal(full[np.arange(n)[:, None], slot3], gap3)
        assert np.array_equal(gap_c, full.min(0))
        assert np.array_equal(full[best_task, np.arange(slots.n_slots)], gap_c)


def test_anytime_budget_returns_a_feasible_assignment_with_a_valid_bound():
    import time

    from schedulers.contract_alloc import SolveStats, solve_slots

    rng = np.random.default_rng(8)
    ready, tpi = rng.uniform(10, 200, (300, 30)), rng.uniform(20, 90, 30)
    full = SolveStats()
    _, opt = solve_slots(ready, tpi, 1000.0, stats=full)
    assert full.certified and full.lower_bound == opt and full.gap == 0.0
    cut = SolveStats()
    srv, cost = solve_slots(ready, tpi, 1000.0, stop_at=time.perf_counter(), stats=cut)
    assert srv.shape == (300,) and cost >= opt and cut.cost == cost
    assert cut.lower_bound <= opt  # weak duality: a true bound
    if not cut.certified:
        assert 0 < cut.gap < 1 and cut.rounds >= 1
