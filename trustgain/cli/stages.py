"""``trustgain stages``: list the registered stages and their settings."""

from __future__ import annotations

import dataclasses
import inspect

import click

from trustgain.cli.common import emit, json_option
from trustgain.stage import known_stages, stage_class


@click.command()
@json_option
def stages(as_json: bool) -> None:
    """List the stages that --stage and trustgain.json can name, in phase order.

    \b
    Example:
      trustgain stages --json
    """
    rows = []
    for name in known_stages():
        cls = stage_class(name)
        settings = (
            {f.name: f.default for f in dataclasses.fields(cls)}
            if dataclasses.is_dataclass(cls)
            else {}
        )
        doc = (inspect.getdoc(inspect.getmodule(cls)) or inspect.getdoc(cls) or "").split("\n")[0]
        doc = doc.split(": ", 1)[-1] if doc.startswith("``") else doc
        rows.append(
            {
                "name": name,
                "phase": cls.phase.name,
                "version": cls.version,
                "requires": sorted(cls.requires),
                "settings": settings,
                "summary": doc,
            }
        )
    rows.sort(key=lambda r: (stage_class(r["name"]).phase, r["name"]))
    human = "\n".join(f"{r['phase']:<9} {r['name']:<24} {r['summary']}" for r in rows)
    emit(rows, as_json, human)
