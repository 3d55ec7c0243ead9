"""Contract-theoretic AIGC task allocation (Zhan et al., arXiv 2407.17428, "P5").

Every formula and constant here follows the authors' public code, ZiJun0819/VLM-Contract-Theory
(MIT), files ``lvm_contractThoery_allocation/{constVaribale,contractTheory,generateSite,
comparison}.py`` ([CODE] in the research notes): read there, re-written here.

- Teleoperator utility ``U_T = theta ln(eta2 (I - I_r1)) + eta3 (I - I_r2) - p`` where ``I`` is
  the *measured* score of the model that served the task and ``p`` the contract price.
- Edge-server utility per task ``p 1[U_T >= 0] - eta1 I_contract + m_fee``.
- Optimal contract under information asymmetry (IR binds for the low type, IC for the high type)
  and the complete-information contract (each type pays its full surplus).
- Scenario: 20 sites x 10 machines = 200 tasks, 30 servers of which the first 40% host the small
  ("S") model; NOMA uplink ``U{5..99}`` Mbps; relay ``U{1..4} * U{1..3}`` ms per (task, server);
  server capability ``U{3,4,5}``; time per image ``U(117.37, 283.26) / capability`` ms rounded to
  0.01; deadline 1000 ms; transmission ``2000 size / rate + relay`` ms.

One modelling choice is ours: the code reads each task's size from the PNG file of its image,
which is not in the data we ship; we use ``task_size_mb`` (default 0.5 MB, [INF]) for all. Sizes
enter only the completion times, never the utilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from schedulers.core import integer, number
from schedulers.data import load

SCHEMES = ("no_contract", "random", "vlm", "human", "oracle", "vlm_complete_info")
_LABEL_COLUMN = {"vlm": 3, "human": 4, "oracle": 5, "vlm_complete_info": 3}


@dataclass(frozen=True)
class ContractParams:
    """Constants of ``contractTheory.Contract`` and the edge server's maintenance fee."""

    i_r1: float = 1.3
    i_r2: float = 1.4
    theta_l: float = 1.0
    theta_h: float = float(np.sqrt(2.0))
    eta1: float = 5.0
    eta2: float = 250.0
    eta3: float = 1.0
    beta_l: float = 0.4
    m_fee: float = 10.0

    def value(self, theta: float | np.ndarray, score: np.ndarray) -> np.ndarray:
        """Teleoperator's gross value ``theta ln(eta2 (I - I_r1)) + eta3 (I - I_r2)``."""
        return theta * np.log(self.eta2 * (score - self.i_r1)) + self.eta3 * (score - self.i_r2)


@dataclass(frozen=True)
class Bundle:
    """The contract menu: contracted quality ``I`` and price ``p`` for types 1 (low) and 2."""

    quality: tuple[float, float]
    price: tuple[float, float]


def optimal_bundle(c: ContractParams, complete_info: bool = False) -> Bundle:
    """``cal_contract_bundles`` (asymmetric) or ``cal_complete_contract_bundles``."""
    th = (c.theta_l, c.theta_h)
    if complete_info:
        q = tuple(c.i_r1 + t / (c.eta1 - c.eta3) for t in th)
        p = tuple(float(c.value(t, np.float64(qq))) for t, qq in zip(th, q, strict=True))
        return Bundle((q[0], q[1]), (p[0], p[1]))
    beta_h = 1.0 - c.beta_l
    q_l = c.i_r1 + (c.theta_l - beta_h * c.theta_h) / (c.beta_l * (c.eta1 - c.eta3))
    q_h = c.i_r1 + c.theta_h / (c.eta1 - c.eta3)
    p_l = float(c.value(c.theta_l, np.float64(q_l)))
    p_h = p_l + float(c.value(c.theta_h, np.float64(q_h)) - c.value(c.theta_h, np.float64(q_l)))
    return Bundle((q_l, q_h), (p_l, p_h))


def utilities(
    c: ContractParams, b: Bundle, types: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-task teleoperator and edge-server utility for contract types (1/2) and scores."""
    t = types - 1
    theta = np.where(t == 0, c.theta_l, c.theta_h)
    price = np.asarray(b.price)[t]
    u_t = c.value(theta, scores) - price
    u_e = np.where(u_t >= 0, price, 0.0) - c.eta1 * np.asarray(b.quality)[t] + c.m_fee
    return u_t, u_e


@dataclass(frozen=True)
class Scenario:
    """One random round: tasks (image index, size, rate, relay) and servers."""

    image: np.ndarray  # (n,) index into the difficulty table
    size_mb: np.ndarray  # (n,)
    rate_mbps: np.ndarray  # (n,)
    relay_ms: np.ndarray  # (n, m)
    small: np.ndarray  # (m,) bool: server hosts the small model
    time_per_img_ms: np.ndarray  # (m,)
    deadline_ms: float = 1000.0
    table: np.ndarray = field(repr=False, default_factory=lambda: difficulty_table())

    @property
    def trans_ms(self) -> np.ndarray:
        """(n, m) upload-plus-relay time, ``2000 size / rate + relay`` as in the code."""
        return (2000.0 * self.size_mb / self.rate_mbps)[:, None] + self.relay_ms

    def labels(self, scheme: str, rng: np.random.Generator) -> np.ndarray:
        if scheme == "random":
            return rng.integers(1, 3, size=self.image.size)
        return self.table[self.image, _LABEL_COLUMN[scheme]].astype(np.int64)


def difficulty_table() -> np.ndarray:
    """(42, 6) array: image id (row), small score, large score, VLM, human, oracle label."""
    rows = load("vlm_contract_difficulty.json")["rows"]
    return np.array([[i, *r[1:]] for i, r in enumerate(rows)], dtype=np.float64)


def make_scenario(
    rng: np.random.Generator,
    n_tasks: int = 200,
    n_servers: int = 30,
    small_share: float = 0.4,
    task_size_mb: float = 0.5,
) -> Scenario:
    """Draw one round as ``generateSite.generate_tasks_servers`` does (servers 1..40% are S).

    Both server classes always exist (at least one S and one L server: with fewer, some contract
    class would have nowhere to run), so ``n_servers`` must be at least 2.
    """
    n_tasks = integer("n_tasks", n_tasks, 1)
    n_servers = integer("n_servers", n_servers, 2)
    if not 0.0 < number("small_share", small_share) < 1.0:
        raise ValueError(f"small_share must be in (0, 1), not {small_share!r}")
    number("task_size_mb", task_size_mb, 0.0, above=True)
    table = difficulty_table()
    image = rng.integers(0, table.shape[0], size=n_tasks)
    rate = rng.integers(5, 100, size=n_tasks).astype(np.float64)
    relay = rng.integers(1, 5, size=(n_tasks, n_servers)) * rng.integers(1, 4, (n_tasks, n_servers))
    n_small = min(max(int(small_share * n_servers), 1), n_servers - 1)
    small = np.arange(1, n_servers + 1) <= n_small
    cap = rng.integers(3, 6, size=n_servers)
    tpi = np.round(rng.uniform(117.37, 283.26, size=n_servers) / cap, 2)
    return Scenario(
        image,
        np.full(n_tasks, task_size_mb),
        rate,
        relay.astype(np.float64),
        small,
        tpi,
        table=table,
    )


def eligible(sc: Scenario, labels: np.ndarray | None) -> np.ndarray:
    """(n, m) bool: type-1 tasks may go to S servers, type-2 to L, no contract to all."""
    if labels is None:
        return np.ones((sc.image.size, sc.small.size), dtype=bool)
    return np.where((labels == 1)[:, None], sc.small[None, :], ~sc.small[None, :])
