"""The solver behind :func:`schedulers.contract_alloc.exact`: one contract class's tasks
assigned to back-to-back slots of its servers (:func:`solve_slots`), by sparse LAPJV on
candidate pairs, certified optimal by LP duality (:class:`_Slots` prices every pair in
O(tasks x servers); :func:`lower_bound` when stopped early). The method is described in the
docstring of :mod:`schedulers.contract_alloc`, which re-exports the public names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from schedulers.core import earliest_finish

_PENALTY_US = 10**12  # the same penalty in the integer microseconds of contract_alloc.exact


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
    docstring of :mod:`schedulers.contract_alloc` for the method and its optimality
    certificate.

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
