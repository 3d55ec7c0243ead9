"""Gymnasium environments over the ``schedulers`` simulators, registered on import.

Ids are namespaced and versioned; registering is idempotent and silent. Every environment is
seeded by ``reset(seed=...)`` and returns its reward's named terms in ``info["terms"]``. ``step``
refuses an action outside the action space (ValueError) and a step after the episode ended or
before the first reset (gymnasium's ``ResetNeeded``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import register, registry
from gymnasium.error import ResetNeeded

ENV_IDS: dict[str, str] = {
    "schedulers/ContractAllocation-v0": "schedulers.envs.contract_env:ContractAllocationEnv",
    "schedulers/ModelAssignment-v0": "schedulers.envs.assignment_env:ModelAssignmentEnv",
    "schedulers/Offloading-v0": "schedulers.envs.offloading_env:OffloadingEnv",
}



def check_step(env: gym.Env, action: Any, done: bool | None) -> None:
    """Refuse ``action`` outside ``env.action_space`` and a step on a finished episode
    (``done``; None: never reset)."""
    if done is None:
        raise ResetNeeded("call reset() before step()")
    if done:
        raise ResetNeeded("the episode has ended; call reset() before step()")
    if not env.action_space.contains(action):
        raise ValueError(f"action {action!r} is not in the action space {env.action_space}")


for _id, _entry in ENV_IDS.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry)
