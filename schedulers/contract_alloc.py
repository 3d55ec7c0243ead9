"""Task-to-server allocation for the contract scenario: the paper's greedy and our exact one.

``greedy`` re-implements ``comparison.greedy_allocation`` of ZiJun0819/VLM-Contract-Theory,
including two behaviours of that code which shape its published completion rates:

- its completion time charges the transmission time only to the first task of a queue
  (``min_trans + tpi`` for the first, ``tpi (i + 1)`` for the i-th);
- its servers are never cleared between the schemes of one round, so each later scheme queues
  behind the earlier ones (``carry``). The published 6-column tables run the schemes in the
  order no-contract, random, VLM, human, oracle, complete-info, which is why their response time
  grows from column to column.

``exact`` is ours: for each contract class it solves the assignment of tasks to queue positions
``(server, k)`` exactly. The cost of task j in slot k of server m is its completion time when the
server works back to back, ``max(trans_jm, (k - 1) tpi_m) + tpi_m`` (rounded to the microsecond),
plus a large penalty when that exceeds the deadline: the solver first maximises the number of
tasks on time, then minimises total response time. The true completion times are then measured
with release-aware FIFO (:func:`fifo_completion`). Two solvers give the same optimum:

- :func:`exact_hungarian`: the dense Hungarian algorithm (``scipy.optimize.linear_sum_assignment``)
  on every (task, slot) pair, ``2 ceil(n / servers) + 1`` slots per server. Kept as the reference;
  0.4-1.9 s for 1,000 tasks over 100 servers, because most slots cost the same for every task
  (``k tpi_m`` once the task has arrived) and those ties make the augmenting-path search long.
- :func:`exact` (default): the same linear programme solved on a few candidate pairs with
  scipy's sparse LAPJV (``min_weight_full_bipartite_matching``) and *certified* optimal for all
  pairs and all slot counts by LP duality. After each sparse solve, dual prices come from
  shortest paths in the residual graph (a vectorised Bellman-Ford: scipy's matching returns no
  duals, hence hand-written); every pair's reduced cost is checked, pairs with
  a negative one are added and the sparse problem is solved again. The check never builds
  the (task, slot) matrix: a slot's cost is ``ready + tpi`` before the task arrives and
  ``k tpi`` after, so prefix and suffix minima per server give every task's best slot and
  every slot's best task in O(tasks x servers) (:class:`_Slots`). When no reduced cost is
  negative and no server's last slot is used, the matching is optimal for unlimited slots,
  since a slot's cost never falls with its position (the free last slot's zero price bounds all
  later ones). Candidates to start: the earliest-finish greedy's own slots (so a full matching
  exists), each task's cheapest slot and a few seeded random slots among the cheapest ``n``.

The slot solver behind :func:`exact` (:func:`solve_slots`, :class:`SolveStats`,
:func:`lower_bound`, :func:`slot_cost`) lives in :mod:`schedulers.contract_slots`; its public
names are importable from here too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from schedulers.contract import Scenario
from schedulers.contract_slots import SolveStats, _us, lower_bound, slot_cost, solve_slots

__all__ = [
    "Queues",
    "SolveStats",
    "exact",
    "exact_hungarian",
    "fifo_completion",
    "greedy",
    "lower_bound",
    "paper_completion",
    "slot_cost",
    "slot_total",
    "solve_slots",
]


@dataclass
class Queues:
    """Per-server queues (task indices, repeats allowed) carried between schemes of a round."""

    tasks: list[list[int]]
    min_trans: np.ndarray

    @classmethod
    def empty(cls, m: int) -> Queues:
        return cls([[] for _ in range(m)], np.full(m, np.inf))


def _check_allowed(sc: Scenario, allowed: np.ndarray) -> None:
    """ValueError unless ``allowed`` is (tasks, servers) and every task has an eligible server."""
    want = (sc.image.size, sc.small.size)
    if np.shape(allowed) != want:
        raise ValueError(f"allowed must have shape (tasks, servers) {want}, not "
                         f"{np.shape(allowed)}")
    blocked = ~np.asarray(allowed, dtype=bool).any(axis=1)
    if blocked.any():
        j = int(np.argmax(blocked))
        raise ValueError(f"task {j} has no eligible server ({int(blocked.sum())} such tasks): "
                         "the scenario lacks servers of its contract class")


def greedy(sc: Scenario, allowed: np.ndarray, queues: Queues | None = None) -> np.ndarray:
    """The paper's greedy: longest upload first, each to the server with least queue time."""
    _check_allowed(sc, allowed)
    n, m = allowed.shape
    q = queues if queues is not None else Queues.empty(m)
    trans = sc.trans_ms
    lengths = np.array([len(t) for t in q.tasks], dtype=np.float64)
    order = np.argsort(-(2.0 * sc.size_mb / sc.rate_mbps), kind="stable")
    choice = np.empty(n, dtype=np.int64)
    for j in order:
        delta = (lengths + 1) * sc.time_per_img_ms + np.minimum(q.min_trans, trans[j])
        delta = np.where(allowed[j], delta, np.inf)
        k = int(np.argmin(delta))
        choice[j] = k
        q.tasks[k].append(int(j))
        lengths[k] += 1
        q.min_trans[k] = min(q.min_trans[k], trans[j, k])
    return choice


def paper_completion(sc: Scenario, queues: Queues) -> np.ndarray:
    """Completion time per task as the code computes it (last write wins for repeats)."""
    done = np.full(sc.image.size, np.nan)
    trans = sc.trans_ms
    for k, tasks in enumerate(queues.tasks):
        if not tasks:
            continue
        key = trans[tasks, k]
        for i, pos in enumerate(np.argsort(key, kind="stable")):
            t = sc.time_per_img_ms[k] * (i + 1)
            done[tasks[pos]] = t + queues.min_trans[k] if i == 0 else t
    return done


def fifo_completion(sc: Scenario, choice: np.ndarray) -> np.ndarray:
    """Release-aware completion: a server serves its tasks in order of arrival (``trans``)."""
    trans = sc.trans_ms
    done = np.empty(choice.size)
    for k in np.unique(choice):
        idx = np.flatnonzero(choice == k)
        idx = idx[np.argsort(trans[idx, k], kind="stable")]
        t = 0.0
        for j in idx:
            t = max(t, trans[j, k]) + sc.time_per_img_ms[k]
            done[j] = t
    return done


def _classes(allowed: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(tasks, servers) of each contract class; classes never share servers."""
    classes: dict[bytes, list[int]] = {}
    for j in range(allowed.shape[0]):
        classes.setdefault(allowed[j].tobytes(), []).append(j)
    return [(np.asarray(t), np.flatnonzero(allowed[t[0]])) for t in classes.values()]


def exact_hungarian(sc: Scenario, allowed: np.ndarray) -> np.ndarray:
    """Reference solver: dense Hungarian algorithm per class (slow; see the module docstring).

    Each server offers ``2 ceil(n_class / servers) + 1`` slots (at most the class size): enough
    for any balanced schedule, and late slots stay available (penalised) so that every task gets
    a server.
    """
    _check_allowed(sc, allowed)
    choice = np.empty(allowed.shape[0], dtype=np.int64)
    trans = sc.trans_ms
    for tasks, servers in _classes(allowed):
        tpi = sc.time_per_img_ms[servers]
        slots = min(int(np.ceil(len(tasks) / servers.size)) * 2 + 1, len(tasks))
        k = np.arange(1, slots + 1)
        ready = trans[np.ix_(tasks, servers)][:, :, None]
        done = np.maximum(ready, tpi[None, :, None] * (k[None, None, :] - 1)) + tpi[None, :, None]
        cost = _us(done, sc.deadline_ms).reshape(len(tasks), -1)
        rows, cols = linear_sum_assignment(cost)
        choice[tasks[rows]] = servers[cols // slots]
    return choice


def exact(sc: Scenario, allowed: np.ndarray, budget_ms: float | None = None,
          stats: list[SolveStats] | None = None) -> np.ndarray:
    """Our allocation: per class, the optimal slot assignment (certified sparse solver).

    ``budget_ms``: decide within about this much time; a class still unproven then keeps the
    best assignment found and its proven gap (``stats``, one :class:`SolveStats` per class).
    """
    _check_allowed(sc, allowed)
    stop_at = None if budget_ms is None else time.perf_counter() + budget_ms / 1000
    choice = np.empty(allowed.shape[0], dtype=np.int64)
    for tasks, servers in _classes(allowed):
        ready = sc.trans_ms[np.ix_(tasks, servers)]
        one = SolveStats()
        srv, _ = solve_slots(ready, sc.time_per_img_ms[servers], sc.deadline_ms,
                             stop_at=stop_at, stats=one)
        if stats is not None:
            stats.append(one)
        choice[tasks] = servers[srv]
    return choice


def slot_total(sc: Scenario, choice: np.ndarray) -> int:
    """Total slot-model cost (integer us) of an allocation: each server's tasks in arrival
    order in back-to-back slots, the objective :func:`exact` minimises."""
    total = 0
    for k in np.unique(choice):
        r = np.sort(sc.trans_ms[choice == k, k])
        srv = np.zeros(r.size, dtype=np.int64)
        cost = slot_cost(r[:, None], sc.time_per_img_ms[[k]], np.arange(1, r.size + 1), srv,
                         sc.deadline_ms)
        total += int(np.diag(cost).sum())
    return total
