"""Odd inputs to the schedulers fail early with one-line errors naming the bad argument."""

from __future__ import annotations

import dataclasses
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import ResetNeeded

from schedulers import assignment, contract, offloading
from schedulers.assignment_policies import largest_model, threshold_assignment
from schedulers.contract_alloc import exact, greedy
from schedulers.core import Job, earliest_finish
from schedulers.envs import ENV_IDS
from schedulers.online import BackendProfile, choose, choose_batch, default_backends
from trustgain.errors import ConfigError
from trustgain.scheduling.queue import QueueState

Q = ((30.0, 20.0, 8.0),) * 4


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(step_latency_s=-1.0), "step_latency_s"),
        (dict(step_latency_s=float("nan")), "step_latency_s"),
        (dict(price_per_step=-5.0), "price_per_step"),
        (dict(max_steps=0), "max_steps"),
        (dict(quality=Q[:2]), "quality must hold 4"),
        (dict(quality=((30.0, 20.0),) * 4), "triple"),
        (dict(quality=((30.0, float("inf"), 8.0),) * 4), "quality for Basic"),
        (dict(quality=((30.0, 20.0, -1.0),) * 4), "s0"),
        (dict(name=None), "name"),
        (dict(name=""), "name"),
    ],
)
def test_backend_profile_is_checked(kw, match):
    args = dict(name="a", step_latency_s=0.1, quality=Q) | kw
    with pytest.raises(ValueError, match=match):
        BackendProfile(**args)


def test_choose_respects_max_steps_and_checks_its_arguments():
    b = default_backends()
    with pytest.raises(ValueError, match="max_steps"):
        choose(b, 0, (60,))
    with pytest.raises(ValueError, match="max_steps"):
        choose(b, 0, (500,), deadline_s=1.0)
    capped = (BackendProfile("a", 0.01, Q, max_steps=20), BackendProfile("b", 1.0, Q))
    assert choose(capped, 0, (40,), deadline_s=1e-3).backend == "b"  # a may not run 40
    for bad in (-1, 4, 1.5):
        with pytest.raises(ValueError, match="category"):
            choose(b, bad, (20,))
    with pytest.raises(ValueError, match="category"):
        choose_batch(b, [0, -1], (20,))
    with pytest.raises(ValueError, match="busy_s"):
        choose(b, 0, (20,), busy_s=[1.0])
    with pytest.raises(ValueError, match="busy_s"):
        choose(b, 0, (20,), busy_s=[0.0, float("nan"), 0.0])
    with pytest.raises(ValueError, match="steps"):
        choose(b, 0, ())


def test_saturated_curve_gives_no_warning():
    flat = (BackendProfile("z", 0.1, ((30.0, 20.0, 0.0),) * 4),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose(flat, 0, (20,)).quality == 30.0


def test_queue_refuses_nan_and_stays_bounded():
    q = QueueState()
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ConfigError, match="predicted run time"):
            q.submit("sd-small", bad)
    now = [0.0]
    ext = QueueState(source=lambda: {}, stale_after_s=1.0, clock=lambda: now[0])
    tracked = QueueState(stale_after_s=1.0, clock=lambda: now[0])
    for i in range(10_000):
        now[0] = float(i)
        ext.submit("a", 1.0)
        tracked.submit("a", 1.0)  # no snapshot in between: submit expires too
    assert sum(map(len, ext._jobs.values())) == 0
    assert sum(map(len, tracked._jobs.values())) <= 2


def test_offloading_problem_and_job_are_checked():
    rng = np.random.default_rng(0)
    p = offloading.make_problem(rng, 4)
    for kw, match in [
        (dict(deadline_s=np.full(4, -1.0)), "deadline_s"),
        (dict(deadline_s=np.zeros(4)), "deadline_s"),
        (dict(battery_j=np.array([5.0])), "battery_j must be a 1-D array of 4"),
        (dict(battery_j=np.full(4, np.nan)), "battery_j"),
        (dict(units=0), "units"),
        (dict(t_max=0), "t_max"),
        (dict(w_e=0.0), "w_e"),
    ]:
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(p, **kw)
    with pytest.raises(ValueError, match="rate_mbps"):
        Job(0, rate_mbps=0.0)
    with pytest.raises(ValueError, match="size_mb"):
        Job(0, size_mb=-1.0)
    with pytest.raises(ValueError, match="task_size_mb"):
        contract.make_scenario(rng, 6, task_size_mb=-1.0)
    for kw, match in [(dict(units=0), "units"), (dict(delay_weight=float("nan")), "delay")]:
        with pytest.raises(ValueError, match=match):
            assignment.make_problem(rng, 4, **kw)


def test_contract_classes_always_have_servers():
    rng = np.random.default_rng(0)
    sc = contract.make_scenario(rng, 6, n_servers=2)
    assert sc.small.sum() == 1 and (~sc.small).sum() == 1
    allowed = contract.eligible(sc, sc.labels("vlm", rng))
    for alloc in (greedy, exact):
        choice = alloc(sc, allowed)
        assert allowed[np.arange(6), choice].all()
    for n in (0, 1):
        with pytest.raises(ValueError, match="n_servers"):
            contract.make_scenario(rng, 6, n_servers=n)
    blocked = allowed.copy()
    blocked[2] = False
    for alloc in (greedy, exact):
        with pytest.raises(ValueError, match="task 2 has no eligible server"):
            alloc(sc, blocked)
    with pytest.raises(ValueError, match="job 1 has no allowed server"):
        earliest_finish(np.array([[1.0, np.inf], [np.inf, np.inf]]))


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_env_refuses_bad_actions_and_finished_episodes(env_id):
    env = gym.make(env_id).unwrapped
    with pytest.raises(ResetNeeded):
        env.step(0)
    env.reset(seed=0)
    n = env.action_space.n
    for bad in (-1, -5, n):
        with pytest.raises(ValueError, match="action space"):
            env.step(bad)
    done = False
    while not done:
        _, _, done, _, _ = env.step(env.action_space.sample())
    with pytest.raises(ResetNeeded, match="reset"):
        env.step(0)


def test_offloading_env_never_grows_its_units():
    env = gym.make("schedulers/Offloading-v0").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(-5)
    assert env.left == env.units


@pytest.mark.parametrize(
    "argv",
    [
        ["assignment", "--quick", "--seeds", "0"],
        ["assignment", "--quick", "--seeds", "-2"],
        ["offloading", "--quick", "--sb3-steps", "-5"],
    ],
)
def test_bench_flags_are_checked(argv, capsys):
    from schedulers.bench import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "must be >=" in capsys.readouterr().err


def test_simulators_refuse_degenerate_sizes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="categories must be a non-empty"):
        assignment.make_problem(rng, 0)
    p = assignment.make_problem(rng, 4, steps=(5, 10))
    for policy in (largest_model, threshold_assignment):
        with pytest.raises(ValueError, match="must include 50"):
            policy(p)
    with pytest.raises(ValueError, match="t_max"):
        offloading.make_problem(rng, 4, t_max=0)
    with pytest.raises(ValueError, match="n_servers"):
        contract.make_scenario(rng, 4, n_servers=0)
    with pytest.raises(ValueError, match="n_tasks"):
        contract.make_scenario(rng, 0)
