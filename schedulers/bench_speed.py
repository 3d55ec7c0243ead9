"""Decision time of every policy for 1,000 jobs over 100 servers (issue 7 target: < 100 ms).

Printed by ``python -m schedulers.bench contract``. Each row is the best of ``repeat`` runs, as
wall-clock and as this process's CPU time: on a shared machine the wall clock also counts time
other jobs held the cores, so the CPU column is the one that says whether the policy's own work
fits in 100 ms; both are printed and judged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from schedulers.bench_util import table as _table
from schedulers.bench_util import timeit2


def _rows(rng: np.random.Generator) -> list[tuple[str, Callable[[], Any], int]]:
    from schedulers import assignment_policies as ap
    from schedulers.assignment import default_models
    from schedulers.assignment import make_problem as assign_problem
    from schedulers.contract import eligible, make_scenario
    from schedulers.contract_alloc import exact, exact_hungarian, greedy
    from schedulers.core import Job, Server, earliest_finish, service_matrix
    from schedulers.offloading import make_problem as off_problem
    from schedulers.offloading_policies import ours as off_ours
    from schedulers.online import BackendProfile, choose_batch, default_backends

    sc = make_scenario(rng, 1000, 100)
    allowed = eligible(sc, sc.labels("vlm", rng))
    service = np.where(allowed, sc.time_per_img_ms, np.inf)
    off = off_problem(rng, 1000, units=100)
    assign = assign_problem(rng, 1000, units=100)
    base = default_backends()
    backends = tuple(
        BackendProfile(
            f"b{i}", base[i % 3].step_latency_s * rng.uniform(0.5, 2), base[i % 3].quality
        )
        for i in range(100)
    )
    cats = rng.integers(0, 4, 1000)
    models = {m.name: m for m in default_models()[0]}
    names = list(models)
    servers = [Server(i, names[i % 3], float(rng.uniform(0.5, 2.0)), 0.002) for i in range(100)]
    jobs = [Job(j, 0.5, float(rng.uniform(5, 100))) for j in range(1000)]

    def generic() -> np.ndarray:
        s, r = service_matrix(jobs, servers, models, 20)
        return earliest_finish(s, r)

    return [
        ("contract: paper greedy", lambda: greedy(sc, allowed), 5),
        ("contract: earliest finish (core)", lambda: earliest_finish(service, sc.trans_ms), 5),
        ("contract: exact, certified sparse LAP (ours)", lambda: exact(sc, allowed), 5),
        ("contract: exact, dense Hungarian (reference)", lambda: exact_hungarian(sc, allowed), 1),
        ("contract: exact with an 80 ms budget (anytime, ours)",
         lambda: exact(sc, allowed, budget_ms=BUDGET_MS), 5),
        ("offloading: exact DP (ours), 1,000 users x 100 units", lambda: off_ours(off), 5),
        ("assignment: ours, 1,000 prompts x 100 compute units", lambda: ap.ours(assign), 5),
        (
            "online (SCHEDULE stage): queue-aware choose_batch, 1,000 requests x 100 backends",
            lambda: choose_batch(backends, cats, (4, 8, 12, 16, 20, 25, 30, 40, 50), 0.5),
            5,
        ),
        ("generic: core jobs/servers/models + earliest finish", generic, 5),
    ]


def speed_table(seed: int = 0) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    rows = []
    for name, fn, repeat in _rows(rng):
        wall, cpu = timeit2(fn, repeat)
        out[name] = {"wall_ms": 1000 * wall, "cpu_ms": 1000 * cpu}
        rows.append(
            [
                name,
                f"{1000 * wall:.1f}",
                f"{1000 * cpu:.1f}",
                "met" if wall < 0.1 else "missed",
                "met" if cpu < 0.1 else "missed",
            ]
        )
    print("## Decision time, 1,000 jobs over 100 servers / units (best of 5; dense Hungarian: 1)\n")
    print(
        _table(
            ["policy", "wall ms", "CPU ms", "< 100 ms (wall)", "< 100 ms (CPU)"],
            rows,
        )
        + "\n"
    )
    return out


BUDGET_MS = 80.0  # the anytime allocator's budget: its decision must come within 100 ms


def exact_spread(instances: int = 10, repeat: int = 5) -> dict[str, list[float]]:
    """The exact contract allocator on ``instances`` random 1,000x100 scenarios (seeds 0,
    1, ...): best-of-``repeat`` wall ms to a certified optimum, and with the budget its
    wall ms, whether it was certified, and its true gap to the optimum (measured afterwards
    against the certified solve; the solver itself only knows its dual bound)."""
    from schedulers.contract import eligible, make_scenario
    from schedulers.contract_alloc import SolveStats, exact, slot_total

    out: dict[str, list[float]] = {"certified_ms": [], "budget_ms": [], "gap": [],
                                   "bound_gap": [], "certified": []}
    for seed in range(instances):
        rng = np.random.default_rng(seed)
        sc = make_scenario(rng, 1000, 100)
        allowed = eligible(sc, sc.labels("vlm", rng))
        wall, _ = timeit2(lambda sc=sc, allowed=allowed: exact(sc, allowed), repeat)
        best = slot_total(sc, exact(sc, allowed))
        walls, stats = [], []
        for _ in range(repeat):
            one: list[SolveStats] = []
            t0 = time.perf_counter()
            choice = exact(sc, allowed, budget_ms=BUDGET_MS, stats=one)
            walls.append(time.perf_counter() - t0)
            stats.append((choice, one))
        choice, one = stats[int(np.argmax(walls))]  # the slowest run's decision
        out["certified_ms"].append(1000 * wall)
        out["budget_ms"].append(1000 * max(walls))
        out["gap"].append((slot_total(sc, choice) - best) / best)
        cost = sum(s.cost for s in one)
        out["bound_gap"].append((cost - sum(s.lower_bound for s in one)) / cost)
        out["certified"].append(float(all(s.certified for s in one)))
    cert = out["certified_ms"]
    print("exact contract allocator, certified optimum, over instances (ms, best of "
          f"{repeat}): " + ", ".join(f"{v:.0f}" for v in cert)
          + f"; median {np.median(cert):.0f}, max {max(cert):.0f}; "
          f"{sum(v < 100 for v in cert)}/{len(cert)} under 100 ms")
    print(f"with the {BUDGET_MS:.0f} ms budget (slowest of {repeat}): max "
          f"{max(out['budget_ms']):.0f} ms; certified on {int(sum(out['certified']))}/"
          f"{instances}; true gap to the optimum max {100 * max(out['gap']):.3f}% "
          f"(proven bound max {100 * max(out['bound_gap']):.1f}%)")
    return out


if __name__ == "__main__":  # the decision-time table alone: python -m schedulers.bench_speed
    speed_table()
    exact_spread()
