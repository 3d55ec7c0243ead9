"""``schedule.backend_steps``: pick the backend and the number of inference steps per request.

The stage holds *profiles* of the wrapped pipelines (name, per-step latency, quality-versus-steps
curve per prompt category, price per step), never the pipelines themselves, so its settings stay
JSON and it can be rebuilt from trustgain.json. It asks :func:`schedulers.online.choose` for the
best (backend, steps) for the request's prompt category, rewrites ``num_inference_steps`` and
sets ``request.backend`` (also left in ``item.notes["schedule"]``), which
:class:`trustgain.generators.MultiGenerator` uses to run that pipeline. The provenance
record gets the decision and its predicted latency, quality and cost; never the prompt text,
never a key.

Live queues: with ``queue`` set to the name of a shared
:class:`trustgain.scheduling.queue.QueueState`, the decision sees each backend's current backlog
(pending jobs and predicted seconds until free) and predicts latency as backlog plus run time,
so a busy backend loses to an idle one when the wait outweighs the quality gain. The snapshot it
used goes into the provenance params. With ``reserve`` (default), the stage also enqueues the job
it decided on; wrap the generator in :class:`trustgain.scheduling.queue.QueuedGenerator` so that
each finished run dequeues it. A backlog known only as a count is priced at that many runs of the
step grid's median length on that backend ([INF], a plain estimate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from schedulers.online import CATEGORIES, BackendProfile, choose, default_backends, prompt_category
from trustgain import settings
from trustgain.errors import ConfigError, SettingError
from trustgain.scheduling.queue import queue_state
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult


def _profile(value: BackendProfile | Mapping[str, Any]) -> BackendProfile:
    if isinstance(value, BackendProfile):
        return value
    if not isinstance(value, Mapping):
        raise SettingError(f"a backend profile must be an object, not {value!r}")
    d = dict(value)
    fields = {f.name for f in dataclasses.fields(BackendProfile)}
    required = {f.name for f in dataclasses.fields(BackendProfile)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if missing := required - set(d):
        raise SettingError(f"backend profile {d.get('name', '?')!r} lacks "
                           f"{', '.join(sorted(missing))}")
    if unknown := set(d) - fields:
        raise SettingError(f"backend profile {d.get('name', '?')!r} has no "
                           f"{', '.join(sorted(unknown))}; fields: {', '.join(sorted(fields))}")
    try:
        d["quality"] = tuple(tuple(float(x) for x in q) for q in d["quality"])
    except (TypeError, ValueError):
        raise SettingError(f"backend profile {d.get('name', '?')!r}: quality must be a list "
                           "of number triples") from None
    return BackendProfile(**d)


@dataclass(frozen=True)
class ScheduleBackendSteps:
    """Choose backend and steps maximising quality - latency_weight x latency - cost_weight x price.

    ``backends``: profiles (or their dicts, as saved in trustgain.json); ``steps``: the grid of
    step counts tried; ``latency_weight`` in quality points (CLIPScore x100) per second;
    ``deadline_s``: optional latency bound; ``keep_requested_steps``: if the
    caller set ``num_inference_steps``, only the backend is chosen; ``queue``: name of a shared
    queue state whose backlog enters the decision; ``reserve``: enqueue the decided job there.
    """

    name: ClassVar[str] = "schedule.backend_steps"
    phase: ClassVar[Phase] = Phase.SCHEDULE
    version: ClassVar[str] = "2"
    requires: ClassVar[frozenset[str]] = frozenset()

    backends: tuple[BackendProfile, ...] = field(default_factory=default_backends)
    steps: tuple[int, ...] = (4, 8, 12, 16, 20, 25, 30, 40, 50)
    latency_weight: float = 0.5
    cost_weight: float = 0.0
    deadline_s: float | None = None
    keep_requested_steps: bool = False
    queue: str | None = None
    reserve: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.backends, str | bytes | dict) or isinstance(self.steps, str | bytes):
            raise SettingError("backends and steps must be lists")
        object.__setattr__(self, "backends", tuple(_profile(b) for b in self.backends))
        object.__setattr__(self, "steps",
                           tuple(settings.integer("steps", s, 1) for s in self.steps))
        for name in ("latency_weight", "cost_weight"):
            object.__setattr__(self, name, settings.number(name, getattr(self, name), 0))
        object.__setattr__(self, "deadline_s", settings.number(
            "deadline_s", self.deadline_s, 0, lo_open=True, optional=True))
        object.__setattr__(self, "queue", settings.text("queue", self.queue, optional=True))
        for name in ("keep_requested_steps", "reserve"):
            object.__setattr__(self, name, settings.flag(name, getattr(self, name)))
        bad = _check(self)
        if bad:
            raise ConfigError(f"schedule.backend_steps: {bad[0]}", hint=bad[1])

    def check_generator(self, generator: Any) -> None:
        """Refuse, when the pipeline is built, profiles naming backends the generator lacks:
        otherwise every call would fail after the decision."""
        while getattr(generator, "inner", None) is not None:  # e.g. a QueuedGenerator
            generator = generator.inner
        served = set(getattr(generator, "backends", None) or ()) or {
            getattr(generator, "model_id", None)}
        missing = [b.name for b in self.backends if b.name not in served]
        if missing:
            raise ConfigError(
                f"schedule.backend_steps may choose {', '.join(missing)}, which the generator "
                f"does not serve (it serves {', '.join(sorted(map(str, served)))})",
                hint="wrap the pipelines in MultiGenerator({name: DiffusersGenerator(pipe)}) "
                "with the profiles' names, or pass profiles named after the generator")

    def _backlog(self) -> tuple[list[float], dict[str, Any]] | None:
        """Seconds until each backend is free, and the snapshot as recorded."""
        if self.queue is None:
            return None
        snap = queue_state(self.queue).snapshot()
        median = float(np.median(self.steps))
        busy, pending, busy_rec = [], {}, {}
        for b in self.backends:
            q = snap.get(b.name)
            n = q.pending if q else 0
            s = (q.busy_s if q.busy_s is not None else n * b.step_latency_s * median) if q else 0.0
            busy.append(s)
            pending[b.name] = n
            busy_rec[b.name] = round(s, 6)
        source = "external" if queue_state(self.queue).source is not None else "tracked"
        return busy, {"name": self.queue, "source": source, "pending": pending, "busy_s": busy_rec}

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        request = item.request
        prompt = request.prompt
        if isinstance(prompt, tuple):  # one backend serves the whole batch: the first prompt
            prompt = prompt[0]        # decides its category
        category, source = prompt_category(prompt)
        requested = request.num_inference_steps
        grid = (requested,) if self.keep_requested_steps and requested else self.steps
        backlog = self._backlog()
        c = choose(
            self.backends,
            category,
            grid,
            self.latency_weight,
            self.cost_weight,
            self.deadline_s,
            busy_s=None if backlog is None else backlog[0],
        )
        decision = {"backend": c.backend, "num_inference_steps": c.steps}
        if backlog is not None and self.reserve and self.queue is not None:
            k = [b.name for b in self.backends].index(c.backend)
            queue_state(self.queue).submit(c.backend, max(c.latency_s - backlog[0][k], 0.0))
        new = item.replace(request=request.replace(num_inference_steps=c.steps, backend=c.backend))
        params = {
            "policy": "schedulers.online.choose",
            **decision,
            "requested_steps": requested,
            "category": CATEGORIES[category],
            "category_source": source,
            "predicted": {
                "latency_s": round(c.latency_s, 6),
                "quality": round(c.quality, 6),
                "cost": round(c.cost, 6),
                "utility": round(c.utility, 6),
            },
            "feasible": c.feasible,
            "weights": {"latency": self.latency_weight, "cost": self.cost_weight},
            "deadline_s": self.deadline_s,
            "candidates": [b.name for b in self.backends],
        }
        if backlog is not None:
            params["queue"] = {**backlog[1], "reserved": self.reserve}
        return StageResult(new.with_note("schedule", decision), params)


def _check(s: ScheduleBackendSteps) -> tuple[str, str] | None:
    """What is wrong with the settings, and the hint; None if they are fine."""
    if not s.backends:
        return "at least one backend profile is needed", "list the wrapped pipelines' profiles"
    if len({b.name for b in s.backends}) != len(s.backends):
        return "backend names must be unique", "give each wrapped pipeline its own name"
    if not s.steps or min(s.steps) < 1:
        return "steps must be a non-empty grid of positive integers", "e.g. steps=[10, 20, 30]"
    if s.latency_weight < 0 or s.cost_weight < 0:
        return "weights must be non-negative", "use 0 to ignore latency or price"
    if s.deadline_s is not None and s.deadline_s <= 0:
        return "deadline_s must be positive", "leave it unset for no deadline"
    if s.queue is not None and not s.queue:
        return "queue must be a non-empty name", "leave it unset to ignore queues"
    return None
