"""Gymnasium environments over the ``schedulers`` simulators, registered on import.

Ids are namespaced and versioned; registering is idempotent and silent. Every environment is
seeded by ``reset(seed=...)`` and returns its reward's named terms in ``info["terms"]``.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

ENV_IDS: dict[str, str] = {
    "schedulers/ContractAllocation-v0": "schedulers.envs.contract_env:ContractAllocationEnv",
    "schedulers/ModelAssignment-v0": "schedulers.envs.assignment_env:ModelAssignmentEnv",
    "schedulers/Offloading-v0": "schedulers.envs.offloading_env:OffloadingEnv",
}

for _id, _entry in ENV_IDS.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry)
