"""A stable-baselines3 agent trains on a scheduling environment (slow)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
def test_ppo_learns_offloading():
    import gymnasium as gym
    import stable_baselines3 as sb3
    import torch

    torch.set_num_threads(1)

    import schedulers.envs  # noqa: F401

    def mean_return(policy, episodes=20):
        env = gym.make("schedulers/Offloading-v0")
        out = []
        for ep in range(episodes):
            obs, _ = env.reset(seed=1000 + ep)
            total, done = 0.0, False
            while not done:
                obs, r, term, trunc, _ = env.step(policy(obs))
                total += r
                done = term or trunc
            out.append(total)
        return float(np.mean(out))

    env = gym.make("schedulers/Offloading-v0")
    model = sb3.PPO("MlpPolicy", env, n_steps=256, batch_size=64, seed=0, verbose=0)
    rng = np.random.default_rng(0)
    before = mean_return(lambda o: int(rng.integers(11)))
    model.learn(total_timesteps=10240)
    after = mean_return(lambda o: int(model.predict(o, deterministic=True)[0]))
    assert after > before
