"""``schedulers/Offloading-v0``: per user, run locally or on ``u`` edge compute units.

One episode is one instance of :mod:`schedulers.offloading`. Users come in index order; the
action is the number of edge units for the current user (0 = local), clipped to the units left.
The user's steps and frequency are then set to their exact best response, so the per-step reward
is minus that user's cost, split into named terms ``latency``, ``energy`` and ``error``
(weighted) and ``infeasible`` (-1 when no setting meets the deadline and battery).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from schedulers.core import integer
from schedulers.envs import check_step
from schedulers.offloading import INFEASIBLE, edge_terms, local_terms, make_problem


class OffloadingEnv(gym.Env[np.ndarray, np.int64]):
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, n_users: int = 8, units: int = 10) -> None:
        self.n_users, self.units = integer("n_users", n_users, 1), integer("units", units, 1)
        self.i: int | None = None
        self.action_space = gym.spaces.Discrete(units + 1)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (6,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.p = make_problem(self.np_random, self.n_users, units=self.units)
        self.left = self.units
        self.i = 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        p, i = self.p, min(self.i, self.n_users - 1)
        o = [
            p.f_max_ghz[i] / 3.0,
            p.battery_j[i] / 10.0,
            p.rate_mbps[i] / 50.0,
            p.deadline_s[i] / 20.0,
            self.left / self.units,
            self.i / self.n_users,
        ]
        return np.clip(np.array(o), 0.0, 1.0).astype(np.float32)

    def step(self, action: np.int64):
        check_step(self, action, None if self.i is None else self.i >= self.n_users)
        p, i = self.p, self.i
        u = min(int(action), self.left)
        grid = np.arange(1, p.t_max + 1)
        terms_all = local_terms(p, grid) if u == 0 else edge_terms(p, grid, u)
        j = int(terms_all["cost"][i].argmin())
        infeasible = terms_all["cost"][i, j] >= INFEASIBLE
        steps = int(grid[j])
        terms = {
            "latency": -p.w_t * float(terms_all["latency"][i, j]),
            "energy": -p.w_e * float(terms_all["energy"][i, j]),
            "error": -p.w_q * float(p.error(np.array([steps]))[0]),
            "infeasible": -float(infeasible),
        }
        self.left -= u
        self.i += 1
        info = {"terms": terms, "units": u, "steps": steps}
        return self._obs(), float(sum(terms.values())), self.i >= self.n_users, False, info
