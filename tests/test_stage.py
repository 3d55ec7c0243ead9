from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from trustgain import Phase, StageResult, build_stage, known_stages, register_stage
from trustgain.errors import ConfigError, StageOrderError, UnknownStageError
from trustgain.stage import resolve_stages


def test_unknown_stage_lists_known_ones():
    with pytest.raises(UnknownStageError) as err:
        build_stage("watermak")
    message = str(err.value)
    assert "unknown stage 'watermak'" in message
    for name in known_stages():
        assert name in message


def test_unknown_setting_lists_valid_ones():
    with pytest.raises(
        ConfigError,
        match=r"no setting 'colour'; settings: form, max_chars",
    ):
        build_stage("prompt.normalize", colour=1)
    with pytest.raises(ConfigError, match="form must be one of"):
        build_stage("prompt.normalize", form="NFD")


def test_phases_must_not_go_backwards():
    with pytest.raises(StageOrderError, match=r"'prompt\.normalize' \(PREPARE\) cannot run after"):
        resolve_stages(["audit.outputs", "prompt.normalize"])
    assert [s.name for s in resolve_stages(["prompt.normalize", "audit.outputs"])] == [
        "prompt.normalize",
        "audit.outputs",
    ]


def test_duplicates_and_non_stages_are_refused():
    with pytest.raises(ConfigError, match="listed twice"):
        resolve_stages(["audit.outputs", "audit.outputs"])
    with pytest.raises(ConfigError, match="is not a stage"):
        resolve_stages([object()])


def test_register_user_stage():
    @dataclass(frozen=True)
    class Tag:
        name: ClassVar[str] = "test.tag"
        phase: ClassVar[Phase] = Phase.PROTECT
        version: ClassVar[str] = "1"
        requires: ClassVar[frozenset[str]] = frozenset()
        label: str = "x"

        def __call__(self, item, ctx):
            return StageResult(item, {"label": self.label})

    register_stage(Tag)
    register_stage(Tag)  # idempotent
    assert "test.tag" in known_stages()
    assert build_stage("test.tag", label="y").label == "y"
    with pytest.raises(ConfigError, match="already registered"):
        register_stage(
            type("Other", (), {"name": "test.tag", "phase": Phase.AUDIT, "version": "1"})
        )
    with pytest.raises(ConfigError, match="already registered"):
        register_stage(
            type("Clash", (), {"name": "audit.outputs", "phase": Phase.AUDIT, "version": "1"})
        )
    with pytest.raises(ConfigError, match="not a Phase"):
        register_stage(type("Bad", (), {"name": "test.bad", "phase": 3, "version": "1"}))
