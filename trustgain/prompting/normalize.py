"""``prompt.normalize``: Unicode normalisation and removal of invisible characters.

Zero-width and other format characters are a known way to slip words past prompt filters
and to smuggle hidden text; NFKC folds look-alike forms. Later PREPARE stages (redaction,
safety filters) therefore see the text the model will effectively read.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import ClassVar

from trustgain import settings
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult

_FORMS = ("NFC", "NFKC")
_SPACE = re.compile(r"\s+")


def normalize_text(text: str, *, form: str = "NFKC", max_chars: int = 1000) -> tuple[str, dict]:
    """Normalise ``text``; returns the new text and what was done (counts, never the text)."""
    normal = unicodedata.normalize(form, text)
    kept = [c for c in normal if not (unicodedata.category(c) in ("Cc", "Cf") and not c.isspace())]
    removed = len(normal) - len(kept)
    out = _SPACE.sub(" ", "".join(kept)).strip()
    truncated = len(out) > max_chars
    out = out[:max_chars]
    return out, {"removed_invisible": removed, "truncated": truncated, "changed": out != text}


@dataclass(frozen=True)
class NormalizePrompt:
    """Normalise the prompt and negative prompt (``form``: NFC or NFKC; ``max_chars`` cap)."""

    name: ClassVar[str] = "prompt.normalize"
    phase: ClassVar[Phase] = Phase.PREPARE
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset()

    form: str = "NFKC"
    max_chars: int = 1000

    def __post_init__(self) -> None:
        if self.form not in _FORMS:
            raise ValueError(f"form must be one of {', '.join(_FORMS)}, not {self.form!r}")
        object.__setattr__(self, "max_chars", settings.integer("max_chars", self.max_chars, 1))

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        request = item.request
        if request.prompt is None and request.negative_prompt is None:
            return StageResult(item, {"form": self.form}, applied=False, reason="no prompt")
        changes: dict[str, object] = {}
        params: dict[str, object] = {"form": self.form, "max_chars": self.max_chars}
        for field in ("prompt", "negative_prompt"):
            text = getattr(request, field)
            if text is None:
                continue
            if isinstance(text, tuple):  # a list of prompts: each normalised, one report each
                done = [normalize_text(t, form=self.form, max_chars=self.max_chars) for t in text]
                changes[field] = tuple(t for t, _ in done)
                params[field] = [r for _, r in done]
            else:
                new, report = normalize_text(text, form=self.form, max_chars=self.max_chars)
                changes[field] = new
                params[field] = report
        return StageResult(item.replace(request=request.replace(**changes)), params)
