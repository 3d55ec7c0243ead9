"""Every registered scheduling environment passes gymnasium's checker and is seeded by reset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import schedulers.envs
from schedulers.envs import ENV_IDS


def test_registration_is_idempotent():
    import importlib

    importlib.reload(schedulers.envs)
    assert set(ENV_IDS) <= set(gym.registry)
    assert all(i.startswith("schedulers/") and i.endswith("-v0") for i in ENV_IDS)


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_seeded_and_terms_sum_to_reward(env_id):
    def rollout(seed):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        out = [obs]
        done = False
        while not done:
            obs, reward, term, trunc, info = env.step(env.action_space.sample())
            assert reward == pytest.approx(sum(info["terms"].values()))
            out.append(obs)
            done = term or trunc
        return np.concatenate(out)

    a, b, c = rollout(3), rollout(3), rollout(4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
