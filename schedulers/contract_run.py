"""Runs of the contract scenario: the six schemes of ``comparison.py``, per round and averaged.

Per round (as ``vary_tasks_servers``): draw a scenario, then for each scheme label every task
(server type for no-contract, a coin for random, VLM / human / oracle labels), compute the
utilities (independent of the allocation, except for no-contract where the server type reached by
the greedy sets the type) and allocate. Averages are plain means over rounds; the code rounds
each round's means to 2 decimals first, which we do not (it moves a mean by < 0.005).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schedulers.contract import (
    SCHEMES,
    ContractParams,
    Scenario,
    eligible,
    make_scenario,
    optimal_bundle,
    utilities,
)
from schedulers.contract_alloc import Queues, exact, fifo_completion, greedy, paper_completion

ALLOCATORS = ("paper", "greedy", "exact")


@dataclass(frozen=True)
class RoundResult:
    """Metrics of one scheme in one round."""

    teleoperator_utility: float
    server_utility: float
    completion_rate: float
    response_time_ms: float


def score_scheme(
    sc: Scenario,
    scheme: str,
    labels: np.ndarray | None,
    choice: np.ndarray,
    params: ContractParams,
) -> tuple[float, float]:
    """Mean teleoperator utility per task and mean edge-server utility per server."""
    bundle = optimal_bundle(params, complete_info=scheme == "vlm_complete_info")
    types = (np.where(sc.small[choice], 1, 2) if labels is None else labels).astype(np.int64)
    scores = np.where(types == 1, sc.table[sc.image, 1], sc.table[sc.image, 2])
    u_t, u_e = utilities(params, bundle, types, scores)
    return float(u_t.mean()), float(u_e.sum() / sc.small.size)


def run_round(
    sc: Scenario,
    rng: np.random.Generator,
    allocator: str = "paper",
    params: ContractParams | None = None,
    schemes: tuple[str, ...] = SCHEMES,
) -> dict[str, RoundResult]:
    """All schemes on one scenario.

    ``allocator``: ``"paper"`` is the code's greedy with queues carried between schemes and its
    completion formula (reproduces the published tables); ``"greedy"`` the same greedy on empty
    queues, timed by release-aware FIFO; ``"exact"`` our slot assignment, timed the same way.
    """
    params = params or ContractParams()
    carried = Queues.empty(sc.small.size) if allocator == "paper" else None
    out: dict[str, RoundResult] = {}
    for scheme in schemes:
        labels = None if scheme == "no_contract" else sc.labels(scheme, rng)
        allowed = eligible(sc, labels)
        choice = exact(sc, allowed) if allocator == "exact" else greedy(sc, allowed, carried)
        done = paper_completion(sc, carried) if carried is not None else fifo_completion(sc, choice)
        u_t, u_s = score_scheme(sc, scheme, labels, choice, params)
        out[scheme] = RoundResult(
            u_t, u_s, float(100.0 * np.mean(done < sc.deadline_ms)), float(done.mean())
        )
    return out


def run(
    n_tasks: int = 200,
    n_servers: int = 30,
    rounds: int = 30,
    seed: int = 0,
    allocator: str = "paper",
    task_size_mb: float = 0.5,
) -> dict[str, dict[str, np.ndarray]]:
    """``rounds`` seeded rounds; returns metric -> scheme -> per-round values."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {ALLOCATORS}, not {allocator!r}")
    rng = np.random.default_rng(seed)
    per: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        sc = make_scenario(rng, n_tasks, n_servers, task_size_mb=task_size_mb)
        for scheme, res in run_round(sc, rng, allocator).items():
            for metric, value in res.__dict__.items():
                per.setdefault(metric, {}).setdefault(scheme, []).append(value)
    return {m: {s: np.asarray(v) for s, v in d.items()} for m, d in per.items()}
