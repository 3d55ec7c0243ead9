"""``schedulers/ModelAssignment-v0``: assign each prompt to a generative model.

One episode is one instance of :mod:`schedulers.assignment` (prompt categories drawn from
PartiPrompts). Each step the agent picks a model for the current prompt; steps and compute units
of all models are then set to their exact best response
(:func:`schedulers.assignment.best_configuration`) for the prompts assigned so far. The reward is
the change in that best utility, so an episode's return is the final plan's utility; its terms
are ``quality`` (sum of expected CLIPScore x100) and ``delay`` (-weight x total delay).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from schedulers.assignment import CATEGORIES, best_configuration, evaluate, make_problem
from schedulers.core import integer
from schedulers.envs import check_step


class ModelAssignmentEnv(gym.Env[np.ndarray, np.int64]):
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, n_prompts: int = 8) -> None:
        self.n_prompts = integer("n_prompts", n_prompts, 1)
        self.model: np.ndarray | None = None
        self.action_space = gym.spaces.Discrete(3)
        # current category one-hot, then prompts per model so far (normalised), progress
        self.observation_space = gym.spaces.Box(0.0, 1.0, (len(CATEGORIES) + 3 + 1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.p = make_problem(self.np_random, self.n_prompts)
        self.model = np.zeros(0, dtype=np.int64)
        self.terms = {"quality": 0.0, "delay": 0.0}
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        t = self.model.size
        o = np.zeros(self.observation_space.shape, dtype=np.float32)
        if t < self.n_prompts:
            o[self.p.categories[t]] = 1.0
        o[len(CATEGORIES) : len(CATEGORIES) + 3] = np.bincount(self.model, minlength=3) / max(
            self.n_prompts, 1
        )
        o[-1] = t / self.n_prompts
        return o

    def _terms(self) -> dict[str, float]:
        from dataclasses import replace

        sub = replace(self.p, categories=self.p.categories[: self.model.size])
        plan = best_configuration(sub, self.model)
        ev = evaluate(sub, plan)
        n = self.model.size
        return {"quality": ev["quality"] * n, "delay": -self.p.delay_weight * ev["delay_s"] * n}

    def step(self, action: np.int64):
        done = None if self.model is None else self.model.size >= self.n_prompts
        check_step(self, action, done)
        self.model = np.append(self.model, int(action))
        new = self._terms()
        delta = {k: new[k] - self.terms[k] for k in new}
        self.terms = new
        done = self.model.size >= self.n_prompts
        return self._obs(), float(sum(delta.values())), done, False, {"terms": delta}
