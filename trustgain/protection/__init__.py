"""Reversible adversarial protection: images that mislead unauthorized models, exactly
recoverable by the key holder.

``protect`` / ``recover`` / ``self_recover`` and :class:`ProtectConfig` are the library entry
points (:mod:`trustgain.protection.api`); the sealed residual format is in
:mod:`trustgain.protection.residual`, the PGD core in :mod:`trustgain.protection.pgd`, surrogate
models and adapters in :mod:`trustgain.protection.surrogates`.
"""

from trustgain.protection.api import ProtectConfig, protect, protect_batch, recover, self_recover
from trustgain.protection.residual import (
    ProtectedImageModifiedError,
    RecoveryError,
    RecoveryWarning,
    ResidualFormatError,
    TamperedResidualError,
    WrongKeyError,
)

__all__ = [
    "ProtectConfig",
    "ProtectedImageModifiedError",
    "RecoveryError",
    "RecoveryWarning",
    "ResidualFormatError",
    "TamperedResidualError",
    "WrongKeyError",
    "protect",
    "protect_batch",
    "recover",
    "self_recover",
]
