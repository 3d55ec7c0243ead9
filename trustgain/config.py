"""trustgain.json: a pipeline's stage list and settings."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustgain.errors import ConfigError
from trustgain.fileio import write_atomic
from trustgain.stage import Stage, build_stage, resolve_stages, stage_settings

FORMAT = "trustgain.config"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PipelineConfig:
    stages: tuple[Stage, ...] = ()
    output_format: str = "png"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if self.output_format not in ("png", "jpeg"):
            raise ConfigError(f"output_format must be \"png\" or \"jpeg\", not "
                              f"{self.output_format!r}")
        q = self.jpeg_quality
        if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100:
            raise ConfigError(f"jpeg_quality must be an integer in 1..100, not {q!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "output_format": self.output_format,
            "jpeg_quality": self.jpeg_quality,
            "stages": [{"name": s.name, "settings": stage_settings(s)} for s in self.stages],
        }

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        return write_atomic(path, text.encode("utf-8"), overwrite=overwrite)

    @classmethod
    def from_dict(cls, doc: Any, *, source: str = "config") -> PipelineConfig:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ConfigError(f"{source} is not a trustgain.json file")
        if type(doc.get("version")) is not int or doc["version"] != FORMAT_VERSION:
            raise ConfigError(
                f"{source} has version {doc.get('version')!r}; "
                f"this trustgain reads version {FORMAT_VERSION}"
            )
        entries = doc.get("stages", [])
        if not isinstance(entries, list):
            raise ConfigError(f"{source}: 'stages' must be a list")
        stages: list[Stage] = []
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"{source}: stage #{n + 1} needs a 'name'")
            settings = entry.get("settings", {})
            if not isinstance(settings, dict):
                raise ConfigError(f"{source}: settings of '{entry['name']}' must be an object")
            stages.append(build_stage(entry["name"], **settings))
        fmt = doc.get("output_format", "png")
        if fmt not in ("png", "jpeg"):
            raise ConfigError(f"{source}: output_format must be \"png\" or \"jpeg\", not "
                              f"{fmt!r}")
        quality = doc.get("jpeg_quality", 95)
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ConfigError(f"{source}: jpeg_quality must be an integer in 1..100")
        return cls(
            stages=tuple(resolve_stages(stages)),
            output_format=fmt,
            jpeg_quality=quality,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PipelineConfig:
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no config file at {path}") from None
        except (OSError, ValueError) as exc:  # bad UTF-8 or JSON, integers past the digit limit
            raise ConfigError(f"cannot read {path}: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{path} is nested too deeply to be a trustgain config") from None
        return cls.from_dict(doc, source=str(path))


def config_from_stages(stages: Sequence[Stage | str], **kw: Any) -> PipelineConfig:
    return PipelineConfig(stages=tuple(resolve_stages(stages)), **kw)
