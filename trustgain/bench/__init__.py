"""Benchmark harness: ``python -m trustgain.bench <area> [--quick] [--json PATH] [--device D]``.

Each area is a module with ``run(quick, device) -> list[Row]`` registered in ``AREAS``; the
harness prints the rows as a table, optionally writes them as JSON, and exits non-zero when a
row with a stated target misses it. See the project's BENCHMARKS.md for the rules.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

AREAS: dict[str, str] = {
    "models": "trustgain.bench.models",
    "watermark": "trustgain.bench.watermark",
    "watermark-security": "trustgain.bench.watermark_security",
    "watermark-latent": "trustgain.bench.watermark_latent",
    "watermark-text": "trustgain.bench.watermark_text",
    "c2pa": "trustgain.bench.c2pa",
    "prompting": "trustgain.bench.prompting",
    "prompt-policy": "trustgain.bench.prompt_policy",
    "balance": "trustgain.bench.balance",
    "privacy": "trustgain.bench.privacy",
    "privacy-finetune": "trustgain.bench.privacy_finetune",
    "privacy-audit": "trustgain.bench.privacy_audit",
    "protection": "trustgain.bench.protection",
    "protection-modes": "trustgain.bench.protection_modes",
    "protection-ray": "trustgain.bench.protection_ray",
}


def cache_root(variable: str, name: str) -> Path:
    """Where a benchmark keeps what it trains: ``$variable`` when set, else
    ``$XDG_CACHE_HOME/trustgain/NAME`` (``~/.cache/trustgain/NAME``)."""
    if os.environ.get(variable):
        return Path(os.environ[variable]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "trustgain" / name


@dataclass
class Row:
    """One measured figure; ``ok`` is None where the figure has no target."""

    metric: str
    value: float
    unit: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_table(rows: list[Row]) -> str:
    """Plain fixed-width table of ``rows``."""
    head = ("metric", "value", "unit", "target", "ok", "note")
    cells = [head] + [
        (r.metric, f"{r.value:.4g}", r.unit, r.target,
         "" if r.ok is None else ("yes" if r.ok else "NO"), r.note)
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


__all__ = ["AREAS", "Row", "format_table"]
