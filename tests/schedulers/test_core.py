"""Simulator core: quality curves, service matrices, earliest-finish list scheduling."""

from __future__ import annotations

import numpy as np
import pytest

from schedulers.core import (
    Job,
    ModelProfile,
    QualityCurve,
    Server,
    earliest_finish,
    mean_ci,
    service_matrix,
)


def test_quality_curve_is_monotone_concave_and_saturates():
    q = QualityCurve(32.0, 20.0, 10.0)(np.arange(0, 200))
    assert q[0] == pytest.approx(20.0) and q[-1] == pytest.approx(32.0, abs=1e-6)
    d = np.diff(q)
    assert (d > 0).all() and (np.diff(d) < 0).all()


def test_service_matrix_and_earliest_finish():
    models = {
        "a": ModelProfile("a", 0.1, QualityCurve(30.0)),
        "b": ModelProfile("b", 0.3, QualityCurve(32.0)),
    }
    servers = [Server(0, "a"), Server(1, "b", speed=3.0, relay_s=0.5)]
    jobs = [Job(0, size_mb=1.0, rate_mbps=8.0), Job(1, size_mb=1.0, rate_mbps=80.0)]
    service, ready = service_matrix(jobs, servers, models, steps=10)
    assert service == pytest.approx(np.array([[1.0, 1.0], [1.0, 1.0]]))
    assert ready == pytest.approx(np.array([[1.0, 1.5], [0.1, 0.6]]))
    choice = earliest_finish(service, ready)
    assert choice.tolist() == [0, 1]  # job 1 would wait for job 0 on server 0: 2.0 > 1.6


def test_earliest_finish_respects_forbidden_servers():
    rng = np.random.default_rng(0)
    service = rng.uniform(1, 2, (50, 5))
    service[:, 2] = np.inf
    assert 2 not in earliest_finish(service)


def test_mean_ci():
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(1.96 / np.sqrt(3))
