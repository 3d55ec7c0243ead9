"""``trustgain stages``: list the registered stages and their settings."""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any

import click

from trustgain.cli.common import emit, json_option
from trustgain.errors import TrustgainError
from trustgain.stage import build_stage, known_stages, stage_class, stage_settings


def _settings(name: str, cls: type) -> dict[str, Any]:
    """The defaults as trustgain.json would hold them (from a default-built stage), else per
    field, with "(required)" for settings that have no default."""
    try:
        built = stage_settings(build_stage(name))
    except (TrustgainError, TypeError, ValueError):  # needs arguments: list its fields
        if not dataclasses.is_dataclass(cls):
            return {}
        built = {f.name: _default(f) for f in dataclasses.fields(cls) if f.init}
    return json.loads(json.dumps(built, default=str))


def _short(value: Any) -> str:
    """A setting's default on one line (long values, such as backend profiles, cut)."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _default(field: dataclasses.Field) -> Any:
    """A setting's default as JSON can hold it: ``"(required)"`` when there is none, the
    factory's value for ``default_factory``, and the text of anything else (paths, enums)."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return str(value)
    return value


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
        settings = _settings(name, cls)
        doc = (inspect.getdoc(inspect.getmodule(cls)) or "").split("\n")[0]
        if doc.startswith("``") and not doc.startswith(f"``{cls.name}``"):
            doc = ""  # the module is about another of its stages: the class says it
        doc = doc or (inspect.getdoc(cls) or "").split("\n")[0]
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
    human = "\n".join(
        f"{r['phase']:<9} {r['name']:<24} {r['summary']}"
        + "".join(f"\n{'':<35}{k}={_short(v)}" for k, v in r["settings"].items())
        for r in rows)
    emit(rows, as_json, human)
