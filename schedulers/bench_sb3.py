"""A stable-baselines3 peer row: PPO trained on a ``schedulers`` gymnasium environment.

The agent learns on ``schedulers/Offloading-v0`` (random instances from its own seeded
``reset``) for a bounded number of steps, then decides the benchmark's instances: it walks the
users in order exactly as the environment does (action = edge units for the user, 0 = local,
clipped to what is left; steps and frequency set to their best response), and the resulting
decision is scored by the same objective as every other row. Training time is reported apart
from the per-decision time (inference only). stable-baselines3 is the maintained library for
this; nothing here re-implements PPO.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from schedulers.offloading import Decision, OffloadingProblem


def train_ppo(steps: int, seed: int = 0, n_users: int = 8, units: int = 10) -> tuple[Any, float]:
    """PPO (MlpPolicy, default hyper-parameters but ``n_steps=256``) and its training seconds."""
    import stable_baselines3 as sb3
    import torch

    from schedulers.envs.offloading_env import OffloadingEnv

    torch.set_num_threads(1)
    env = OffloadingEnv(n_users=n_users, units=units)
    model = sb3.PPO("MlpPolicy", env, n_steps=256, batch_size=64, seed=seed, verbose=0)
    t = time.perf_counter()
    model.learn(total_timesteps=steps)
    return model, time.perf_counter() - t


def offloading_policy(model: Any) -> Callable[[OffloadingProblem, np.random.Generator], Decision]:
    """The trained agent as a policy over :class:`OffloadingProblem` instances."""
    from schedulers.envs.offloading_env import OffloadingEnv

    def decide(p: OffloadingProblem, rng: np.random.Generator | None = None) -> Decision:
        env = OffloadingEnv(n_users=p.n, units=p.units)
        env.reset(seed=0)
        env.p, env.left, env.i = p, p.units, 0  # the instance to decide, not a random one
        units = np.zeros(p.n, dtype=np.int64)
        steps = np.ones(p.n, dtype=np.int64)
        obs = env._obs()
        for i in range(p.n):
            action, _ = model.predict(obs, deterministic=True)
            obs, _, _, _, info = env.step(np.int64(action))
            units[i], steps[i] = info["units"], info["steps"]
        return Decision(units, steps)

    return decide
