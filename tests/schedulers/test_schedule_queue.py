"""The SCHEDULE stage reads live queue state, records it, and keeps the queue in step."""

from __future__ import annotations

import uuid

import pytest

from trustgain.digest import canonical_json
from trustgain.errors import ConfigError
from trustgain.scheduling.backend_steps import ScheduleBackendSteps
from trustgain.scheduling.queue import (
    QueuedGenerator,
    QueueState,
    queue_state,
    register_queue,
)
from trustgain.stage import RunContext
from trustgain.types import GenerationRequest, Item

CTX = RunContext(run_id="0" * 32, stage="schedule.backend_steps", generator=None)
ITEM = Item(GenerationRequest(prompt="a red cube on a blue sphere"))


def _name() -> str:
    return f"test-{uuid.uuid4().hex}"


def test_an_idle_queue_changes_nothing_and_is_recorded():
    name = _name()
    plain = ScheduleBackendSteps()(ITEM, CTX).params
    got = ScheduleBackendSteps(queue=name, reserve=False)(ITEM, CTX).params
    assert got["backend"] == plain["backend"]
    assert got["num_inference_steps"] == plain["num_inference_steps"]
    assert got["queue"]["name"] == name and got["queue"]["source"] == "tracked"
    assert set(got["queue"]["pending"].values()) == {0}
    canonical_json(got)


def test_a_busy_backend_loses_to_an_idle_one():
    name = _name()
    stage = ScheduleBackendSteps(queue=name, reserve=False)
    first = stage(ITEM, CTX).params["backend"]
    register_queue(name, QueueState(source=lambda: {first: (3, 60.0)}), replace=True)
    got = stage(ITEM, CTX).params
    assert got["backend"] != first
    assert got["queue"]["source"] == "external"
    assert got["queue"]["pending"][first] == 3 and got["queue"]["busy_s"][first] == 60.0
    # a count alone is priced at median-length runs on that backend
    register_queue(name, QueueState(source=lambda: {first: 50}), replace=True)
    got = stage(ITEM, CTX).params
    assert got["backend"] != first and got["queue"]["busy_s"][first] > 0


def test_reservations_spread_a_burst_and_finish_retires_them():
    name = _name()
    stage = ScheduleBackendSteps(queue=name, latency_weight=2.0)
    chosen = [stage(ITEM, CTX).params for _ in range(12)]
    assert len({c["backend"] for c in chosen}) >= 2  # backlog pushes later jobs elsewhere
    assert chosen[-1]["queue"]["pending"] and sum(chosen[-1]["queue"]["pending"].values()) == 11
    snap = queue_state(name).snapshot()
    assert sum(b.pending for b in snap.values()) == 12

    class Fake:
        kind, default, callback_tensor_inputs = "fake", "sd-small", ("latents",)

        def __call__(self, request, **kw):
            if request.prompt == "boom":
                raise RuntimeError("backend failed")
            return ("image",)

        def supports(self, capability):
            return True

        def describe(self):
            return {"class": "Fake"}

    gen = QueuedGenerator(Fake(), queue=name)
    for c in chosen:
        assert gen(GenerationRequest(prompt="x", backend=c["backend"])) == ("image",)
    assert queue_state(name).snapshot() == {}
    queue_state(name).submit("sd-small", 1.0)
    with pytest.raises(RuntimeError):
        gen(GenerationRequest(prompt="boom"))  # default backend, retired even on failure
    assert queue_state(name).snapshot() == {}


def test_stale_reservations_expire_and_bad_input_fails():
    now = [0.0]
    q = QueueState(stale_after_s=10.0, clock=lambda: now[0])
    q.submit("a", 2.0)
    now[0] = 5.0
    q.submit("a", 3.0)
    assert q.snapshot()["a"].pending == 2 and q.snapshot()["a"].busy_s == 5.0
    now[0] = 12.0
    assert q.snapshot()["a"].pending == 1
    assert not q.finish("b")
    with pytest.raises(ConfigError):
        q.submit("a", -1.0)
    with pytest.raises(ConfigError):
        QueueState(stale_after_s=0)
    with pytest.raises(ConfigError, match="negative"):
        QueueState(source=lambda: {"a": -1}).snapshot()
    name = _name()
    register_queue(name, q)
    with pytest.raises(ConfigError, match="already registered"):
        register_queue(name, QueueState())


def test_pipeline_with_live_queue(sd_pipe, keyring):
    from trustgain.generators import DiffusersGenerator, MultiGenerator
    from trustgain.pipeline import TrustPipeline

    name = _name()
    stage = ScheduleBackendSteps(queue=name, steps=(1, 2))
    names = [b.name for b in stage.backends]
    multi = MultiGenerator(
        {n: DiffusersGenerator(sd_pipe, model_id=n) for n in names}, default=names[0]
    )
    pipe = TrustPipeline(QueuedGenerator(multi, queue=name), [stage], keyring=keyring)
    sd = dict(height=16, width=16, output_type="np")
    first = pipe("a cat", seed=1, **sd).record.record["stages"][0]["params"]
    assert queue_state(name).snapshot() == {}  # the run retired its reservation
    queue_state(name).submit(first["backend"], 1000.0)  # someone else's long job
    second = pipe("a cat", seed=1, **sd).record.record["stages"][0]["params"]
    assert second["queue"]["pending"][first["backend"]] == 1
    assert second["queue"]["busy_s"][first["backend"]] == 1000.0
    assert second["backend"] != first["backend"]
