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
``(server, k)`` with ``scipy.optimize.linear_sum_assignment`` (Hungarian algorithm). The cost of
task j in slot k of server m is its completion time when the server works back to back,
``max(trans_jm, (k - 1) tpi_m) + tpi_m``, plus a large penalty when that exceeds the deadline:
the solver first maximises the number of tasks on time, then minimises total response time. The
true completion times are then measured with release-aware FIFO (:func:`fifo_completion`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from schedulers.contract import Scenario

_PENALTY = 1e6


@dataclass
class Queues:
    """Per-server queues (task indices, repeats allowed) carried between schemes of a round."""

    tasks: list[list[int]]
    min_trans: np.ndarray

    @classmethod
    def empty(cls, m: int) -> Queues:
        return cls([[] for _ in range(m)], np.full(m, np.inf))


def greedy(sc: Scenario, allowed: np.ndarray, queues: Queues | None = None) -> np.ndarray:
    """The paper's greedy: longest upload first, each to the server with least queue time."""
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


def exact(sc: Scenario, allowed: np.ndarray) -> np.ndarray:
    """Our allocation: per class, an exact slot assignment (Hungarian algorithm, scipy).

    Classes never share servers, so each class is solved alone. Each server offers
    ``2 ceil(n_class / servers) + 1`` slots (at most the class size): enough for any balanced
    schedule, and late slots stay available (penalised) so that every task gets a server.
    """
    n, _m = allowed.shape
    choice = np.empty(n, dtype=np.int64)
    trans = sc.trans_ms
    classes: dict[bytes, list[int]] = {}
    for j in range(n):
        classes.setdefault(allowed[j].tobytes(), []).append(j)
    for tasks in classes.values():
        servers = np.flatnonzero(allowed[tasks[0]])
        tpi = sc.time_per_img_ms[servers]
        slots = int(np.ceil(len(tasks) / servers.size)) * 2 + 1
        slots = min(slots, len(tasks))
        k = np.arange(1, slots + 1)
        ready = trans[np.ix_(tasks, servers)][:, :, None]
        done = np.maximum(ready, tpi[None, :, None] * (k[None, None, :] - 1)) + tpi[None, :, None]
        cost = done + _PENALTY * (done > sc.deadline_ms)
        rows, cols = linear_sum_assignment(cost.reshape(len(tasks), -1))
        choice[np.asarray(tasks)[rows]] = servers[cols // slots]
    return choice
