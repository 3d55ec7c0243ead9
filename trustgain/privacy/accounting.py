"""DP-SGD privacy accounting through opacus' accountants, chosen by name.

Two entry points, both keyword-only: :func:`epsilon_spent` (noise -> epsilon) and
:func:`noise_for_epsilon` (target epsilon -> noise multiplier). Both describe the
Poisson-subsampled Gaussian mechanism run ``steps`` times at sampling rate ``sample_rate``,
the setting of ``opacus.PrivacyEngine`` with ``poisson_sampling=True``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Iterator
from typing import Any

from trustgain.errors import ConfigError

#: Largest target epsilon the noise search takes. Beyond it the guarantee says nothing useful,
#: and opacus' search (bisection down to a tiny sigma) runs for minutes to hours with "prv".
MAX_TARGET_EPSILON = 100.0

# Names trustgain accepts, mapped to opacus' registry names. "gdp" is left out on purpose:
# opacus warns that it "can underestimate privacy expenditure".
ACCOUNTANTS: dict[str, str] = {"rdp": "rdp", "prv": "prv"}


def _make(accountant: str) -> Any:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"unknown accountant {accountant!r}; known: {', '.join(sorted(ACCOUNTANTS))}"
        )
    from opacus.accountants.utils import create_accountant  # heavy import, only when used

    return create_accountant(mechanism=ACCOUNTANTS[accountant])


def _real(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, not {type(value).__name__}")


def _check(sample_rate: float, steps: int, delta: float) -> None:
    _real("sample_rate", sample_rate)
    _real("delta", delta)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ConfigError(f"steps must be a whole number, not {steps!r}")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample_rate must be in (0, 1], not {sample_rate!r}")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, not {steps!r}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), not {delta!r}")


def epsilon_spent(
    *,
    accountant: str = "prv",
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
) -> float:
    """Epsilon spent by ``steps`` DP-SGD steps at (``noise_multiplier``, ``sample_rate``)."""
    _check(sample_rate, steps, delta)
    _real("noise_multiplier", noise_multiplier)
    if not (0 < noise_multiplier < math.inf):  # NaN or infinity hang opacus' accountants
        raise ConfigError(f"noise_multiplier must be a finite number > 0, not {noise_multiplier!r}")
    acc = _make(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with _quiet():
        return float(acc.get_epsilon(delta=delta))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what opacus' accountants print on valid input: numpy's log(0) at sample rate 1
    (the result is still right) and RDP's "optimal order is the largest alpha" (the bound is
    still a valid upper bound, only not the tightest)."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        yield


def noise_for_epsilon(
    *,
    accountant: str = "prv",
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier whose spent epsilon is at most ``target_epsilon``."""
    _check(sample_rate, steps, delta)
    _real("target_epsilon", target_epsilon)
    _real("epsilon_tolerance", epsilon_tolerance)
    if not 0 < epsilon_tolerance < math.inf:
        raise ConfigError(f"epsilon_tolerance must be a finite number > 0, not "
                          f"{epsilon_tolerance!r}")
    if not 0 < target_epsilon <= MAX_TARGET_EPSILON:  # also refuses NaN and infinity
        raise ConfigError(
            f"target epsilon must be in (0, {MAX_TARGET_EPSILON:g}], not {target_epsilon!r}",
            hint="above it DP promises nothing useful: give a noise multiplier directly, "
            "or train without DP")
    _make(accountant)  # validates the name with our message
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with _quiet():
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=ACCOUNTANTS[accountant],
                epsilon_tolerance=epsilon_tolerance,
            )
    except ValueError as exc:
        if "too low" not in str(exc):
            raise
        raise ConfigError(
            f"target epsilon {target_epsilon:g} cannot be reached in {steps} step(s) at sampling "
            f"rate {sample_rate:.4g} with delta {delta:g} (the noise would pass opacus' limit)",
            hint="raise the target epsilon or delta, or train for fewer epochs") from None
    return float(sigma)
