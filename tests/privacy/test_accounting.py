"""Accounting: trustgain (opacus) epsilon agrees with Google's dp-accounting on one setting."""

from __future__ import annotations

import pytest

from trustgain.bench.privacy import agreement, reference_epsilon
from trustgain.errors import ConfigError
from trustgain.privacy.accounting import epsilon_spent, noise_for_epsilon

Q, SIGMA, STEPS, DELTA = 0.01, 1.0, 500, 1e-5


def test_agrees_with_dp_accounting():
    for pair, mine, theirs in agreement(noise_multiplier=SIGMA, sample_rate=Q, steps=STEPS):
        assert mine == pytest.approx(theirs, rel=0.02), pair


def test_more_noise_less_epsilon_and_inverse():
    kw = dict(accountant="rdp", sample_rate=Q, steps=STEPS, delta=DELTA)
    assert epsilon_spent(noise_multiplier=2.0, **kw) < epsilon_spent(noise_multiplier=1.0, **kw)
    sigma = noise_for_epsilon(target_epsilon=2.0, **kw)
    check = reference_epsilon(
        method="rdp", noise_multiplier=sigma, sample_rate=Q, steps=STEPS, delta=DELTA
    )
    assert 1.97 <= check <= 2.0 + 1e-6


def test_rejects_unknown_and_bad_arguments():
    with pytest.raises(ConfigError, match="known: prv, rdp"):
        epsilon_spent(accountant="gdp", noise_multiplier=1.0, sample_rate=Q, steps=1, delta=DELTA)
    with pytest.raises(ConfigError):
        epsilon_spent(noise_multiplier=1.0, sample_rate=1.5, steps=1, delta=DELTA)
    with pytest.raises(TypeError):
        epsilon_spent("rdp", 1.0, Q, 1, DELTA)  # privacy parameters are keyword-only


def test_unreachable_and_meaningless_targets_are_one_line_errors():
    kw = dict(accountant="rdp", sample_rate=1.0, steps=1, delta=DELTA)
    with pytest.raises(ConfigError, match="cannot be reached in 1 step"):
        noise_for_epsilon(target_epsilon=1e-9, **kw)  # opacus: "privacy budget is too low"
    for target in (1000.0, float("inf"), float("nan"), 0.0):
        with pytest.raises(ConfigError, match="target epsilon must be in"):
            noise_for_epsilon(target_epsilon=target, **kw)  # refused before the search
