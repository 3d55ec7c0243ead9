"""``schedulers/ContractAllocation-v0``: allocate contract-labelled tasks to edge servers.

One episode is one round of the VLM contract scenario (:mod:`schedulers.contract`), smaller by
default so that agents learn quickly. Tasks arrive in the paper's order (longest upload first);
each step the agent picks a server for the current task. A task may only use servers of its
contract class (VLM label: 1 -> small-model servers, 2 -> large); an ineligible choice is
penalised and redirected to the eligible server that finishes first. Timing is release-aware
FIFO (:func:`schedulers.contract_alloc.fifo_completion`).

Reward terms: ``latency`` (-completion / deadline), ``deadline_miss`` (-1 when late),
``invalid`` (-1 for an ineligible choice); ``info`` also carries the (allocation-independent)
contract utilities of the task.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from schedulers.contract import (
    SCHEMES,
    ContractParams,
    eligible,
    make_scenario,
    optimal_bundle,
    utilities,
)
from schedulers.core import integer
from schedulers.envs import check_step


class ContractAllocationEnv(gym.Env[np.ndarray, np.int64]):
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, n_tasks: int = 40, n_servers: int = 6, scheme: str = "vlm") -> None:
        if scheme not in SCHEMES or scheme == "no_contract":
            known = ", ".join(s for s in SCHEMES if s != "no_contract")
            raise ValueError(f"unknown scheme {scheme!r}; known: {known}")
        self.n_tasks = integer("n_tasks", n_tasks, 1)
        self.n_servers = integer("n_servers", n_servers, 2)
        self.scheme = scheme
        self.t: int | None = None
        self.action_space = gym.spaces.Discrete(n_servers)
        # task: label, upload; per server: eligible, backlog, time per image (normalised)
        self.observation_space = gym.spaces.Box(0.0, 10.0, (2 + 3 * n_servers,), np.float32)
        self.params = ContractParams()
        self.bundle = optimal_bundle(self.params)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.sc = make_scenario(self.np_random, self.n_tasks, self.n_servers)
        self.labels = self.sc.labels(self.scheme, self.np_random)
        self.allowed = eligible(self.sc, self.labels)
        self.order = np.argsort(-self.sc.trans_ms.min(axis=1), kind="stable")
        self.free = np.zeros(self.n_servers)
        self.t = 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        d = self.sc.deadline_ms
        j = self.order[min(self.t, self.n_tasks - 1)]
        head = [self.labels[j] - 1.0, self.sc.trans_ms[j].min() / d]
        srv = np.concatenate([self.allowed[j], self.free / d, self.sc.time_per_img_ms / d])
        return np.clip(np.concatenate([head, srv]), 0.0, 10.0).astype(np.float32)

    def step(self, action: np.int64):
        check_step(self, action, None if self.t is None else self.t >= self.n_tasks)
        j = self.order[self.t]
        k = int(action)
        d = self.sc.deadline_ms
        finish = np.maximum(self.free, self.sc.trans_ms[j]) + self.sc.time_per_img_ms
        invalid = not self.allowed[j, k]
        if invalid:
            k = int(np.argmin(np.where(self.allowed[j], finish, np.inf)))
        self.free[k] = finish[k]
        u_t, u_e = utilities(
            self.params,
            self.bundle,
            self.labels[j : j + 1],
            self.sc.table[self.sc.image[j : j + 1], self.labels[j]],
        )
        terms = {
            "latency": -float(finish[k]) / d,
            "deadline_miss": -float(finish[k] > d),
            "invalid": -float(invalid),
        }
        self.t += 1
        info = {
            "terms": terms,
            "server": k,
            "completion_ms": float(finish[k]),
            "teleoperator_utility": float(u_t[0]),
            "server_utility": float(u_e[0]),
        }
        return self._obs(), float(sum(terms.values())), self.t >= self.n_tasks, False, info
