"""The SCHEDULE stage: contract of trustgain stages, decisions, and records without secrets."""

from __future__ import annotations

import pytest

from schedulers.online import BackendProfile, choose, default_backends, prompt_category
from trustgain.digest import canonical_json
from trustgain.errors import ConfigError
from trustgain.scheduling.backend_steps import ScheduleBackendSteps
from trustgain.stage import Phase, RunContext, stage_settings
from trustgain.types import GenerationRequest, Item

CTX = RunContext(run_id="0" * 32, stage="schedule.backend_steps", generator=None)


def test_contract_and_settings_round_trip():
    s = ScheduleBackendSteps()
    assert s.phase is Phase.SCHEDULE and s.name == "schedule.backend_steps"
    settings = stage_settings(s)
    canonical_json(settings)
    assert ScheduleBackendSteps(**settings) == s


def test_rewrites_steps_and_leaves_a_note():
    item = Item(GenerationRequest(prompt="a red cube on a blue sphere", seed=1))
    res = ScheduleBackendSteps()(item, CTX)
    steps = res.item.request.num_inference_steps
    assert steps in ScheduleBackendSteps().steps
    assert res.item.notes["schedule"] == {
        "backend": res.params["backend"],
        "num_inference_steps": steps,
    }
    params = canonical_json(dict(res.params)).decode()
    assert "red cube" not in params  # never the prompt
    assert item.request.num_inference_steps is None  # input untouched


def test_deadline_and_latency_weight_change_the_choice():
    slow = ScheduleBackendSteps(latency_weight=0.0)
    fast = ScheduleBackendSteps(latency_weight=0.0, deadline_s=0.5)
    item = Item(GenerationRequest(prompt="bond"))
    a, b = slow(item, CTX).params, fast(item, CTX).params
    assert a["predicted"]["latency_s"] > 0.5 >= b["predicted"]["latency_s"]
    assert b["feasible"] and a["predicted"]["quality"] >= b["predicted"]["quality"]


def test_keep_requested_steps():
    item = Item(GenerationRequest(prompt="bond", num_inference_steps=7))
    res = ScheduleBackendSteps(keep_requested_steps=True)(item, CTX)
    assert res.item.request.num_inference_steps == 7


def test_infeasible_deadline_is_recorded():
    res = ScheduleBackendSteps(deadline_s=1e-4)(Item(GenerationRequest(prompt="x")), CTX)
    assert res.params["feasible"] is False


def test_choose_is_exhaustive():
    backends = default_backends()
    c = choose(backends, 3, (5, 10, 50), latency_weight=0.5)
    for b in backends:
        for s in (5, 10, 50):
            u = float(b.curve(3)(s)) - 0.5 * b.step_latency_s * s
            assert u <= c.utility + 1e-12


def test_prompt_categories():
    assert prompt_category("bond") == (0, "partiprompts")
    assert prompt_category(None)[1] == "default"
    assert prompt_category(" ".join(["word"] * 30)) == (3, "word-count rule")


def test_bad_settings_fail_with_a_hint():
    with pytest.raises(ConfigError, match="at least one backend") as e:
        ScheduleBackendSteps(backends=())
    assert e.value.hint
    with pytest.raises(ConfigError, match="steps"):
        ScheduleBackendSteps(steps=(0,))
    dup = BackendProfile("a", 0.1, ((30.0, 20.0, 5.0),) * 4)
    with pytest.raises(ConfigError, match="unique"):
        ScheduleBackendSteps(backends=(dup, dup))
    with pytest.raises(ConfigError, match="queue"):
        ScheduleBackendSteps(queue="")


def test_choose_batch_is_sequential_choose_with_growing_backlog():
    from schedulers.online import choose_batch

    backends = default_backends()
    cats = [0, 3, 1, 2, 3, 3, 0]
    grid = (5, 10, 20, 50)
    got = choose_batch(backends, cats, grid, latency_weight=1.0)
    busy = [0.0] * len(backends)
    names = [b.name for b in backends]
    for c, g in zip(cats, got, strict=True):
        want = choose(backends, c, grid, latency_weight=1.0, busy_s=busy)
        assert want == g
        busy[names.index(g.backend)] = g.latency_s
    assert len({g.backend for g in got}) >= 2
