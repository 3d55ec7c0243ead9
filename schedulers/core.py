"""Simulator core shared by the policies, the benchmarks and the gymnasium environments.

Plain frozen dataclasses describe generative models (per-step latency and energy, a
quality-versus-steps curve, a price), servers and jobs; numpy does the arithmetic. The three
problem modules (:mod:`schedulers.contract`, :mod:`schedulers.assignment`,
:mod:`schedulers.offloading`) build their instances from these types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def number(what: str, value: object, lo: float | None = None, *, above: bool = False) -> float:
    """``value`` as a finite float, ``>= lo`` (``> lo`` with ``above``); else a one-line
    ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{what} must be a number, not {value!r}")
    x = float(value)
    if not math.isfinite(x) or (lo is not None and (x <= lo if above else x < lo)):
        bound = "" if lo is None else f" {'>' if above else '>='} {lo:g}"
        raise ValueError(f"{what} must be a finite number{bound}, not {value!r}")
    return x


def integer(what: str, value: object, lo: int) -> int:
    """``value`` as an int ``>= lo`` (bools refused); else a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ValueError(f"{what} must be an integer >= {lo}, not {value!r}")
    return int(value)


def numbers(what: str, value: object, n: int | None, lo: float, *, above: bool = False
            ) -> FloatArray:
    """``value`` as a 1-D float array of length ``n`` (any if None), finite and ``>= lo`` (or
    ``> lo``); else a one-line ValueError naming ``what``."""
    try:
        x = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an array of numbers") from None
    if x.ndim != 1 or (n is not None and x.size != n):
        want = "a 1-D array" if n is None else f"a 1-D array of {n} values (one per user)"
        raise ValueError(f"{what} must be {want}, not shape {x.shape}")
    bad = ~np.isfinite(x) | ((x <= lo) if above else (x < lo))
    if bad.any():
        raise ValueError(f"{what} must be finite and {'>' if above else '>='} {lo:g}; "
                         f"index {int(np.argmax(bad))} is {x[bad][0]}")
    return x


@dataclass(frozen=True)
class QualityCurve:
    """Saturating quality versus denoising steps: ``q(s) = q_max - (q_max - q_0) exp(-s / s0)``.

    Source: the generic fit of research note §8 ([INF]); DDIM-type samplers saturate with
    ``s0`` around 8-15 steps. Monotone and concave in ``s``.
    """

    q_max: float
    q_0: float = 0.0
    s0: float = 10.0

    def __call__(self, steps: ArrayLike) -> FloatArray:
        s = np.asarray(steps, dtype=np.float64)
        with np.errstate(divide="ignore", over="ignore"):  # s0 = 0: saturated from step 1
            return self.q_max - (self.q_max - self.q_0) * np.exp(-s / self.s0)


@dataclass(frozen=True)
class ModelProfile:
    """A generative model as a scheduler sees it.

    ``step_latency_s`` is the time of one denoising step of one image on a whole server of unit
    speed; ``batch_latency_s`` the extra time per additional image in a batch (batch delay
    ``g(X) = a X + b [X > 0]``, research note §8); ``step_energy_j`` the energy of one step and
    ``price_per_step`` what a step is billed.
    """

    name: str
    step_latency_s: float
    quality: QualityCurve
    step_energy_j: float = 0.0
    price_per_step: float = 0.0
    batch_latency_s: float = 0.0
    max_steps: int = 50

    def latency(self, steps: ArrayLike, speed: float = 1.0, batch: int = 1) -> FloatArray:
        """Seconds to run ``steps`` steps for a batch of ``batch`` images at relative ``speed``."""
        per_step = self.step_latency_s + self.batch_latency_s * max(batch - 1, 0)
        return np.asarray(steps, dtype=np.float64) * per_step / speed

    def energy(self, steps: ArrayLike) -> FloatArray:
        return np.asarray(steps, dtype=np.float64) * self.step_energy_j

    def cost(self, steps: ArrayLike) -> FloatArray:
        return np.asarray(steps, dtype=np.float64) * self.price_per_step


@dataclass(frozen=True)
class Server:
    """An edge or cloud worker holding one loaded model; ``speed`` scales its step latency."""

    server_id: int
    model: str
    speed: float = 1.0
    relay_s: float = 0.0


@dataclass(frozen=True)
class Job:
    """One generation request: payload size, uplink rate, deadline and prompt category."""

    job_id: int
    size_mb: float = 0.5
    rate_mbps: float = 50.0
    deadline_s: float = 1.0
    category: str = "Basic"

    def __post_init__(self) -> None:
        number("size_mb", self.size_mb, 0.0)
        number("rate_mbps", self.rate_mbps, 0.0, above=True)
        number("deadline_s", self.deadline_s, 0.0, above=True)

    @property
    def upload_s(self) -> float:
        return 8.0 * self.size_mb / self.rate_mbps


def earliest_finish(service_s: FloatArray, ready_s: FloatArray | None = None) -> np.ndarray:
    """Greedy list scheduling: each job, in order, goes to the server where it finishes first.

    ``service_s`` is (jobs, servers) processing time of job j on server m (``inf`` forbids);
    ``ready_s`` the (jobs, servers) time the job's input reaches the server. Returns the server
    index per job. One vectorised pass over the servers per job: O(jobs * servers) in numpy and
    O(jobs) in Python, so 1,000 jobs over 100 servers decide in a few milliseconds.
    """
    n, m = service_s.shape
    if ready_s is not None and np.shape(ready_s) != (n, m):
        raise ValueError(f"ready_s must have the shape of service_s {(n, m)}, not "
                         f"{np.shape(ready_s)}")
    if np.isnan(service_s).any():
        raise ValueError("service_s holds NaN")
    if n and (blocked := np.isinf(service_s).all(axis=1)).any():
        raise ValueError(f"job {int(np.argmax(blocked))} has no allowed server (every service "
                         f"time is inf{', no servers' if m == 0 else ''})")
    free = np.zeros(m)
    choice = np.empty(n, dtype=np.int64)
    ready = np.zeros_like(service_s) if ready_s is None else ready_s
    for j in range(n):
        finish = np.maximum(free, ready[j]) + service_s[j]
        k = int(np.argmin(finish))
        choice[j] = k
        free[k] = finish[k]
    return choice


def service_matrix(
    jobs: list[Job], servers: list[Server], models: dict[str, ModelProfile], steps: int
) -> tuple[FloatArray, FloatArray]:
    """(jobs, servers) processing and ready times for ``steps`` denoising steps per job.

    Processing: the server's model's per-step latency over its speed; ready: the job's upload
    plus the server's relay. Feeds :func:`earliest_finish` and the exact allocators.
    """
    lat = np.array([float(models[s.model].latency(steps, s.speed)) for s in servers])
    relay = np.array([s.relay_s for s in servers])
    upload = np.array([j.upload_s for j in jobs])
    return np.broadcast_to(lat, (len(jobs), len(servers))).copy(), upload[:, None] + relay


def split_units(cost: np.ndarray, units: int) -> np.ndarray:
    """Units per row minimising ``sum cost[i, u_i]`` subject to ``sum u_i <= units``.

    ``cost`` is (rows, units + 1), ``inf`` where a share is not allowed. Exact multiple-choice
    knapsack by dynamic programming over the units used so far, O(rows x units^2), vectorised
    per row; shared by the offloading and model-assignment policies (a MILP solver would also
    do, but this is exact, dependency-free and ~100x faster at these sizes).
    """
    n = cost.shape[0]
    used = np.arange(units + 1)
    give = used[None, :]  # units given to this row
    rest = used[:, None] - give  # units left for the rows before
    valid = rest >= 0
    best = np.full(units + 1, np.inf)
    best[0] = 0.0
    take = np.zeros((n, units + 1), dtype=np.int64)
    for i in range(n):
        cand = np.where(valid, best[np.clip(rest, 0, None)] + cost[i][give], np.inf)
        take[i] = cand.argmin(axis=1)
        best = cand[used, take[i]]
    share = np.zeros(n, dtype=np.int64)
    left = int(np.argmin(best))
    for i in reversed(range(n)):
        share[i] = take[i, left]
        left -= share[i]
    return share


def mean_ci(samples: ArrayLike, z: float = 1.96) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% confidence interval."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size < 2:
        return float(x.mean()) if x.size else float("nan"), 0.0
    return float(x.mean()), float(z * x.std(ddof=1) / np.sqrt(x.size))
