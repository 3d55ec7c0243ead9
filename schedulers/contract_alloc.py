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
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from schedulers.contract import Scenario
from schedulers.core import earliest_finish

_PENALTY_US = 10**12  # the same penalty in the integer microseconds of :func:`exact`


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


def _us(done_ms: np.ndarray, deadline_ms: float) -> np.ndarray:
    """Slot cost in integer microseconds, penalised past the deadline."""
    cost = np.round(done_ms * 1e3).astype(np.int64)
    return cost + _PENALTY_US * (done_ms > deadline_ms)


def slot_cost(ready: np.ndarray, tpi: np.ndarray, k: np.ndarray, srv: np.ndarray, deadline: float):
    """(tasks, slots) cost of each task in slot ``k`` of server ``srv`` (integer us)."""
    done = np.maximum(ready[:, srv], ((k - 1) * tpi[srv])[None, :]) + tpi[srv][None, :]
    return _us(done, deadline)


class _Slots:
    """The slots of one class: back-to-back positions ``k = 1..K_m`` on each server ``m``.

    Task j in slot (m, k) finishes at ``max(ready_jm, start) + tpi_m``, ``start = (k - 1)
    tpi_m``: ``ready_jm + tpi_m`` if the slot starts before the task arrives (region A, the
    first ``split[j, m]`` slots of m) and ``k tpi_m`` otherwise (region B), which does not
    depend on j. So the least reduced cost over a server's slots for each task (prefix minima
    over A, suffix minima over B) and over the tasks for each slot (tasks sorted by arrival:
    prefix maxima of the task prices before the slot's start, suffix minima after it) cost
    O(tasks x servers) instead of O(tasks x slots): the dense check was most of the time.
    """

    def __init__(self, ready: np.ndarray, tpi: np.ndarray, deadline: float, k_m: np.ndarray):
        n, m = ready.shape
        self.ready, self.tpi, self.deadline, self.k_m = ready, tpi, deadline, k_m
        self.srv = np.repeat(np.arange(m), k_m)
        self.k = np.concatenate([np.arange(1, x + 1) for x in k_m])
        self.offset = np.concatenate([[0], np.cumsum(k_m)[:-1]])
        self.start = (self.k - 1) * tpi[self.srv]
        self.cost_b = _us(self.start + tpi[self.srv], deadline)  # slot cost in region B
        self.cost_a = _us(ready + tpi[None, :], deadline)  # (tasks, servers), region A
        kmax = int(k_m.max())
        self.pad = np.arange(kmax)[None, :] < k_m[:, None]  # (servers, kmax) real slots
        self.grid = np.where(self.pad, self.offset[:, None] + np.arange(kmax)[None, :], 0)
        self.order = np.argsort(ready.T, axis=1, kind="stable")  # (servers, tasks) by arrival
        r_sorted = np.take_along_axis(ready.T, self.order, axis=1)
        self.split = np.empty((n, m), dtype=np.int64)  # slots of m in region A for j
        self.before = np.zeros((m, kmax), dtype=np.int64)  # tasks arrived before the slot
        for s in range(m):
            seg = self.start[self.offset[s]:self.offset[s] + k_m[s]]
            self.split[:, s] = np.searchsorted(seg, ready[:, s], side="right")
            self.before[s, :k_m[s]] = np.searchsorted(r_sorted[s], seg, side="left")
        self.cost_a_sorted = np.take_along_axis(self.cost_a.T, self.order, axis=1)

    @property
    def n_slots(self) -> int:
        return int(self.srv.size)

    def pair_cost(self, j: np.ndarray, s: np.ndarray) -> np.ndarray:
        srv = self.srv[s]
        done = np.maximum(self.ready[j, srv], self.start[s]) + self.tpi[srv]
        return _us(done, self.deadline)

    def row_best(self, d: np.ndarray, u: np.ndarray, top: int = 1
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Per task and its ``top`` best servers: least reduced cost ``cost + d[s] - u[j]``
        over the server's slots, and that slot; both (tasks, top), best first."""
        big = _BIG
        kmax = self.pad.shape[1]
        idx = np.arange(kmax)[None, :]
        p = np.where(self.pad, d[self.grid], big)
        pre = np.minimum.accumulate(p, axis=1)
        pre_i = np.maximum.accumulate(np.where(p == pre, idx, -1), axis=1)
        cb = np.where(self.pad, self.cost_b[self.grid] + d[self.grid], big)
        suf = np.minimum.accumulate(cb[:, ::-1], axis=1)[:, ::-1]
        suf_i = np.minimum.accumulate(np.where(cb == suf, idx, kmax)[:, ::-1], axis=1)[:, ::-1]
        suf = np.concatenate([suf, np.full((suf.shape[0], 1), big)], axis=1)
        suf_i = np.concatenate([suf_i, np.zeros((suf.shape[0], 1), dtype=np.int64)], axis=1)
        srv = np.arange(self.tpi.size)[None, :]
        val_a = self.cost_a + pre[srv, self.split - 1]
        val_b = suf[srv, self.split]
        val = np.minimum(val_a, val_b) - u[:, None]
        local = np.where(val_a <= val_b, pre_i[srv, self.split - 1], suf_i[srv, self.split])
        task = np.arange(val.shape[0])[:, None]
        if top == 1:
            ms = val.argmin(axis=1)[:, None]
        else:
            top = min(top, val.shape[1])
            ms = np.argpartition(val, top - 1, axis=1)[:, :top]
            ms = np.take_along_axis(ms, np.argsort(val[task, ms], axis=1), axis=1)
        return val[task, ms], self.offset[ms] + local[task, ms]

    def col_best(self, d: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per slot: least reduced cost over all tasks, and the task."""
        n = self.order.shape[1]
        big = _BIG
        us = u[self.order]  # (servers, tasks) in arrival order
        pm = np.maximum.accumulate(us, axis=1)
        pm_i = np.maximum.accumulate(np.where(us == pm, np.arange(n), -1), axis=1)
        w = self.cost_a_sorted - us
        sm = np.minimum.accumulate(w[:, ::-1], axis=1)[:, ::-1]
        sm_i = np.minimum.accumulate(np.where(w == sm, np.arange(n), n)[:, ::-1], axis=1)[:, ::-1]
        sm = np.concatenate([sm, np.full((sm.shape[0], 1), big)], axis=1)
        sm_i = np.concatenate([sm_i, np.zeros((sm.shape[0], 1), dtype=np.int64)], axis=1)
        srv = np.arange(self.order.shape[0])[:, None]
        nb = self.before
        val_b = np.where(nb > 0, self.cost_b[self.grid] - pm[srv, np.maximum(nb - 1, 0)], big)
        val_a = sm[srv, nb]
        use_b = val_b < val_a
        who = np.where(use_b, pm_i[srv, np.maximum(nb - 1, 0)], sm_i[srv, nb])
        val = np.minimum(val_a, val_b) + d[self.grid]
        task = self.order[srv, np.minimum(who, n - 1)]
        return val[self.pad], task[self.pad]  # slot order: grid rows are servers in turn


_BIG = np.iinfo(np.int64).max // 4


def _potentials(slots: _Slots, rows: np.ndarray, cols: np.ndarray, pair: np.ndarray,
                match: np.ndarray) -> np.ndarray:
    """Dual prices (as distances ``d >= 0``, price ``-d``) of an optimal sparse matching.

    Residual arcs ``s -> match[j]`` of weight ``cost[j, s] - cost[j, match[j]]`` for every
    candidate pair (j, s) (``pair``: their costs): moving task j into slot s frees its slot.
    Distances from the free slots (0) by Bellman-Ford; unreachable slots start from a bound
    above any path.
    """
    n, s_n = match.size, slots.n_slots
    own = np.empty(n, dtype=np.int64)
    hit = cols == match[rows]
    own[rows[hit]] = pair[hit]
    keep = ~hit
    r, src = rows[keep], cols[keep]
    dst = match[r]
    w = pair[keep] - own[r]
    order = np.argsort(dst, kind="stable")
    src, dst, w = src[order], dst[order], w[order]
    starts = np.flatnonzero(np.r_[True, dst[1:] != dst[:-1]])
    target = dst[starts] if dst.size else dst
    used = np.zeros(s_n, dtype=bool)
    used[match] = True
    top = max(int(slots.cost_a.max()), int(slots.cost_b.max()))
    big = 2 * n * (top + 1)
    d = np.where(used, big, 0).astype(np.int64)
    if not dst.size:
        return d
    for _ in range(s_n + 2):
        new = np.minimum(d[target], np.minimum.reduceat(d[src] + w, starts))
        if np.array_equal(new, d[target]):
            return d
        d[target] = new
    raise RuntimeError("negative cycle: the sparse matching was not optimal")


@dataclass
class SolveStats:
    """How a :func:`solve_slots` call ended (filled in when passed)."""

    certified: bool = False  # the returned assignment is proven optimal
    cost: int = 0  # its total cost, integer microseconds
    lower_bound: int = 0  # a proven lower bound on the optimum (= cost when certified)
    rounds: int = 0  # sparse solves

    @property
    def gap(self) -> float:
        """Relative distance to the optimum at most this (0 when certified)."""
        return 0.0 if self.certified else (self.cost - self.lower_bound) / max(1, self.cost)


def lower_bound(slots: _Slots, d: np.ndarray) -> int:
    """LP-dual lower bound on the optimum for any prices ``d >= 0`` on the slots.

    Slot prices ``p = d`` (0 beyond the last slot of each server) and task prices ``u_j =
    min_s cost + p`` are dual feasible, so ``sum u - sum p`` bounds the assignment from below
    (weak duality). Slots past ``K_m`` cost at least slot ``K_m + 1``, which is included.
    """
    best, _ = slots.row_best(d, np.zeros(slots.split.shape[0], dtype=np.int64))
    after = np.maximum(slots.ready, (slots.k_m * slots.tpi)[None, :]) + slots.tpi[None, :]
    u = np.minimum(best[:, 0], _us(after, slots.deadline).min(axis=1))
    return int(u.sum() - d.sum())


def solve_slots(
    ready: np.ndarray, tpi: np.ndarray, deadline: float, seed: int = 0, *,
    stop_at: float | None = None, stats: SolveStats | None = None,
) -> tuple[np.ndarray, int]:
    """Optimal assignment of tasks to back-to-back slots of servers (one contract class).

    ``ready`` is (tasks, servers) arrival time (ms), ``tpi`` (servers,) time per image. Returns
    the server index per task and the optimal total cost in integer microseconds. See the
    module docstring for the method and its optimality certificate.

    ``stop_at`` (a ``time.perf_counter()`` value) makes it an anytime solver: when another
    round (taken as 1.5x the last one) would end past it, the current sparse solve's
    assignment is returned (feasible, optimal on its candidate pairs),
    with ``stats.certified`` False and ``stats.lower_bound`` from :func:`lower_bound` (the
    better of the current prices and prices capped at the largest slot cost).
    """
    n, m = ready.shape
    greedy_srv = earliest_finish(np.broadcast_to(tpi, (n, m)).copy(), ready)
    count = np.bincount(greedy_srv, minlength=m)
    k_m = count + 2 + count // 4
    pos = np.empty(n, dtype=np.int64)  # greedy's slot: rank of arrival on its server
    order = np.lexsort((ready[np.arange(n), greedy_srv], greedy_srv))
    pos[order] = np.arange(n) - np.searchsorted(greedy_srv[order], greedy_srv[order])
    rng = np.random.default_rng(seed)
    task = np.arange(n)
    rounds = 0
    edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    while True:
        slots = _Slots(ready, tpi, deadline, k_m)
        s_n = slots.n_slots
        cand = np.zeros((n, s_n), dtype=bool)
        cand[task, slots.offset[greedy_srv] + pos] = True
        _, cheapest = slots.row_best(np.zeros(s_n, dtype=np.int64), np.zeros(n, dtype=np.int64))
        cand[task, cheapest[:, 0]] = True
        level = slots.k * tpi[slots.srv]
        region = np.flatnonzero(level <= np.partition(level, min(n, s_n) - 1)[min(n, s_n) - 1])
        cand[task[:, None], region[rng.integers(0, region.size, (n, 2))]] = True
        if edges is not None:  # carried over from before the slots were extended
            cand[edges[0], slots.offset[edges[1]] + edges[2] - 1] = True
        while True:
            began = time.perf_counter()
            rows, cols = np.nonzero(cand)
            pair = slots.pair_cost(rows, cols)
            graph = csr_matrix((pair.astype(np.float64), (rows, cols)), (n, s_n))
            r, c = min_weight_full_bipartite_matching(graph)
            match = np.empty(n, dtype=np.int64)
            match[r] = c
            d = _potentials(slots, rows, cols, pair, match)
            u = slots.pair_cost(task, match) + d[match]
            gap, by_row = slots.row_best(d, u)
            bad = gap[:, 0] < 0
            rounds += 1
            if not bad.any():
                break
            took = time.perf_counter() - began
            if stop_at is not None and time.perf_counter() + 1.5 * took > stop_at:
                return _stopped(slots, match, d, rounds, stats)  # the next round would overrun
            cand[task[bad], by_row[bad, 0]] = True
            gap_c, by_col = slots.col_best(d, u)
            bad_c = gap_c < 0
            cand[by_col[bad_c], np.flatnonzero(bad_c)] = True
        last_used = np.isin(slots.offset + k_m - 1, match)
        if not last_used.any():
            total = int(slots.pair_cost(task, match).sum())
            if stats is not None:
                stats.certified, stats.cost, stats.lower_bound = True, total, total
                stats.rounds = rounds
            return slots.srv[match], total
        if stop_at is not None and time.perf_counter() + 2 * took > stop_at:
            return _stopped(slots, match, d, rounds, stats)  # more slots: at least 2 rounds
        rows, cols = np.nonzero(cand)
        edges = (rows, slots.srv[cols], slots.k[cols])
        k_m = np.where(last_used, 2 * k_m, k_m)


def _stopped(slots: _Slots, match: np.ndarray, d: np.ndarray, rounds: int,
             stats: SolveStats | None) -> tuple[np.ndarray, int]:
    total = int(slots.pair_cost(np.arange(match.size), match).sum())
    if stats is not None:
        cap = max(int(slots.cost_a.max()), int(slots.cost_b.max()))
        stats.certified, stats.cost, stats.rounds = False, total, rounds
        stats.lower_bound = max(lower_bound(slots, d), lower_bound(slots, np.minimum(d, cap)))
    return slots.srv[match], total
