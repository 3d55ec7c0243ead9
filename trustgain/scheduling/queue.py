"""Live queue state for the SCHEDULE stage: pending jobs and predicted backlog per backend.

A :class:`QueueState` is shared, by name, between the stage that decides and the code that runs
the jobs. Two ways to feed it:

- *tracked*: the stage ``submit``\\ s each job it sends to a backend (with its predicted run
  time) and :class:`QueuedGenerator`, wrapped around the pipeline's generator, calls ``finish``
  when the backend has run it. Jobs on one backend run first come, first served, so ``finish``
  retires the oldest. Reservations older than ``stale_after_s`` are dropped, so a job whose
  run never came (a later stage failed before generation) cannot block a backend for ever.
- *external*: ``source`` is a callable returning ``{backend: pending}`` or
  ``{backend: (pending, busy_seconds)}`` from whatever serves the jobs (a serving frontend,
  a Ray actor's queue length); it then overrides the tracked figures, so ``submit`` tracks
  nothing (a reservation would never be read, and nothing would ever retire it).

Names live in a process-wide registry (:func:`queue_state`), so the stage's settings stay a
plain string in trustgain.json. Hand-written: a lock, a dict and deques are all it needs.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trustgain.errors import ConfigError

Source = Callable[[], Mapping[str, "int | tuple[int, float]"]]


@dataclass(frozen=True)
class Backlog:
    """One backend's queue: jobs waiting or running, and predicted seconds until it is free
    (``None`` when only the count is known)."""

    pending: int
    busy_s: float | None


class QueueState:
    """Thread-safe per-backend queues (see the module docstring)."""

    def __init__(
        self,
        *,
        source: Source | None = None,
        stale_after_s: float | None = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stale_after_s is not None and stale_after_s <= 0:
            raise ConfigError("stale_after_s must be positive or None")
        self.source = source
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, deque[tuple[float, float]]] = {}

    def submit(self, backend: str, predicted_s: float) -> None:
        """A job was sent to ``backend``; it will take about ``predicted_s`` seconds.

        Not tracked when an external ``source`` decides the backlog."""
        if not isinstance(backend, str) or not backend:
            raise ConfigError(f"backend must be a non-empty name, not {backend!r}")
        try:
            seconds = float(predicted_s)
        except (TypeError, ValueError):
            seconds = math.nan
        if isinstance(predicted_s, bool) or not math.isfinite(seconds) or seconds < 0:
            raise ConfigError(f"predicted run time must be a finite number >= 0, not "
                              f"{predicted_s!r}")
        if self.source is not None:
            return
        with self._lock:
            self._expire()
            self._jobs.setdefault(backend, deque()).append((self._clock(), seconds))

    def finish(self, backend: str) -> bool:
        """The oldest job on ``backend`` is done; False if none was tracked there."""
        with self._lock:
            q = self._jobs.get(backend)
            if not q:
                return False
            q.popleft()
            return True

    def _expire(self) -> None:
        if self.stale_after_s is None:
            return
        cutoff = self._clock() - self.stale_after_s
        for q in self._jobs.values():
            while q and q[0][0] < cutoff:
                q.popleft()

    def snapshot(self) -> dict[str, Backlog]:
        """Current backlog per backend (backends with nothing queued may be absent)."""
        if self.source is not None:
            return {str(k): _backlog(k, v) for k, v in dict(self.source()).items()}
        with self._lock:
            self._expire()
            return {k: Backlog(len(q), sum(p for _, p in q)) for k, q in self._jobs.items() if q}


def _backlog(name: object, value: Any) -> Backlog:
    pending, busy = (value, None) if isinstance(value, int | float) else value
    if not math.isfinite(pending) or pending < 0 or (
        busy is not None and (not math.isfinite(busy) or busy < 0)
    ):
        raise ConfigError(f"queue source gave a negative or non-finite backlog for backend "
                          f"'{name}'")
    return Backlog(int(pending), None if busy is None else float(busy))


_REGISTRY: dict[str, QueueState] = {}
_REGISTRY_LOCK = threading.Lock()


def queue_state(name: str) -> QueueState:
    """The shared queue called ``name`` (created, tracked, on first use)."""
    with _REGISTRY_LOCK:
        return _REGISTRY.setdefault(name, QueueState())


def register_queue(name: str, state: QueueState, *, replace: bool = False) -> QueueState:
    """Share ``state`` under ``name`` (e.g. one fed by an external ``source``)."""
    with _REGISTRY_LOCK:
        if name in _REGISTRY and _REGISTRY[name] is not state and not replace:
            raise ConfigError(
                f"queue '{name}' is already registered", hint="pass replace=True to swap it"
            )
        _REGISTRY[name] = state
    return state


class QueuedGenerator:
    """Wraps a generator (e.g. :class:`trustgain.generators.MultiGenerator`) so that each run
    retires its job from the named queue once the backend has produced it (or failed)."""

    def __init__(self, generator: Any, *, queue: str) -> None:
        self.inner = generator
        self.queue = queue
        self.kind = getattr(generator, "kind", "queued")
        self.callback_tensor_inputs: Sequence[str] = generator.callback_tensor_inputs

    def supports(self, capability: str) -> bool:
        return bool(self.inner.supports(capability))

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def latent_shape(self, request: Any) -> tuple[int, ...]:
        return self.inner.latent_shape(request)

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        try:
            return self.inner(request, **kwargs)
        finally:
            backend = request.backend or getattr(self.inner, "default", None)
            if backend is not None:
                queue_state(self.queue).finish(backend)
