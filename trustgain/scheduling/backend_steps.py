"""``schedule.backend_steps``: pick the backend and the number of inference steps per request.

The stage holds *profiles* of the wrapped pipelines (name, per-step latency, quality-versus-steps
curve per prompt category, price per step), never the pipelines themselves, so its settings stay
JSON and it can be rebuilt from trustgain.json. It asks :func:`schedulers.online.choose` for the
best (backend, steps) for the request's prompt category, rewrites ``num_inference_steps`` and
sets ``request.backend`` (also left in ``item.notes["schedule"]``), which
:class:`trustgain.generators.MultiGenerator` uses to run that pipeline. The provenance
record gets the decision and its predicted latency, quality and cost; never the prompt text,
never a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from schedulers.online import CATEGORIES, BackendProfile, choose, default_backends, prompt_category
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult


def _profile(value: BackendProfile | Mapping[str, Any]) -> BackendProfile:
    if isinstance(value, BackendProfile):
        return value
    d = dict(value)
    d["quality"] = tuple(tuple(float(x) for x in q) for q in d["quality"])
    return BackendProfile(**d)


@dataclass(frozen=True)
class ScheduleBackendSteps:
    """Choose backend and steps maximising quality - latency_weight x latency - cost_weight x price.

    ``backends``: profiles (or their dicts, as saved in trustgain.json); ``steps``: the grid of
    step counts tried; ``latency_weight`` in quality points (CLIPScore x100) per second;
    ``deadline_s``: optional latency bound; ``keep_requested_steps``: if the
    caller set ``num_inference_steps``, only the backend is chosen.
    """

    name: ClassVar[str] = "schedule.backend_steps"
    phase: ClassVar[Phase] = Phase.SCHEDULE
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset()

    backends: tuple[BackendProfile, ...] = field(default_factory=default_backends)
    steps: tuple[int, ...] = (4, 8, 12, 16, 20, 25, 30, 40, 50)
    latency_weight: float = 0.5
    cost_weight: float = 0.0
    deadline_s: float | None = None
    keep_requested_steps: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "backends", tuple(_profile(b) for b in self.backends))
        object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
        if not self.backends:
            raise ValueError("at least one backend profile is needed")
        if len({b.name for b in self.backends}) != len(self.backends):
            raise ValueError("backend names must be unique")
        if not self.steps or min(self.steps) < 1:
            raise ValueError("steps must be a non-empty grid of positive integers")
        if self.latency_weight < 0 or self.cost_weight < 0:
            raise ValueError("weights must be non-negative")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline_s must be positive")

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        request = item.request
        category, source = prompt_category(request.prompt)
        requested = request.num_inference_steps
        grid = (requested,) if self.keep_requested_steps and requested else self.steps
        c = choose(
            self.backends, category, grid, self.latency_weight, self.cost_weight, self.deadline_s
        )
        decision = {"backend": c.backend, "num_inference_steps": c.steps}
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
        return StageResult(new.with_note("schedule", decision), params)
