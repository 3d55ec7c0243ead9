"""Formatting and timing helpers shared by the benchmark modules."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def fmt(m: float, h: float, nd: int = 4) -> str:
    return f"{m:.{nd}f} ± {h:.{nd}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def timeit(fn: Callable[[], Any], repeat: int = 5) -> float:
    return timeit2(fn, repeat)[0]


def timeit2(fn: Callable[[], Any], repeat: int = 5) -> tuple[float, float]:
    """Best wall-clock and best process CPU seconds over ``repeat`` runs.

    On a shared machine wall time counts the time other jobs hold the cores; CPU time
    (``time.process_time``) counts only this process's own work, so it is the figure to compare
    across loads (single-threaded numpy: set ``OMP_NUM_THREADS=1``).
    """
    wall, cpu = np.inf, np.inf
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return float(wall), float(cpu)
