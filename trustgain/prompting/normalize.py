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


#: Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt, Unicode 15.1):
#: characters renderers draw as nothing, such as the combining grapheme joiner, variation
#: selectors and the Hangul fillers. Python's unicodedata does not expose the property, so
#: the (stable, short) list is kept here.
_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_ZWJ, _VS15, _VS16 = "\u200d", "\ufe0e", "\ufe0f"
#: The only emoji spelled with tag characters (U+E0020-E007F), the RGI subdivision flags:
#: U+1F3F4, the region's tag letters, U+E007F. Any other tag run is invisible text ("ASCII
#: smuggling") and is removed.
_TAG_FLAGS = frozenset(
    "\U0001F3F4" + "".join(chr(0xE0000 + ord(ch)) for ch in region) + "\U000E007F"
    for region in ("gbeng", "gbsct", "gbwls")
)
_TAG_FLAG_LEN = 7


def _invisible(c: str) -> bool:
    if c.isspace():
        return False
    if unicodedata.category(c) in ("Cc", "Cf"):
        return True
    code = ord(c)
    return any(lo <= code <= hi for lo, hi in _IGNORABLE)


def _emoji(c: str) -> bool:
    """An emoji-like base: a symbol (So), a skin-tone modifier, or a keycap base."""
    return unicodedata.category(c) == "So" or 0x1F3FB <= ord(c) <= 0x1F3FF or c in "#*0123456789"


def _strip_invisible(text: str) -> list[str]:
    """Drop invisible characters, except the joiner and presentation selectors *inside* an
    emoji sequence (family, flag and profession emoji are joined with U+200D, and U+FE0F asks
    for emoji presentation): there they change what the model reads, not hide text. The three
    RGI subdivision flags keep their tag characters; every other tag character goes."""
    kept: list[str] = []
    skip = 0
    for i, c in enumerate(text):
        if skip:
            skip -= 1
            continue
        if text[i:i + _TAG_FLAG_LEN] in _TAG_FLAGS:  # England, Scotland, Wales
            kept.extend(text[i:i + _TAG_FLAG_LEN])
            skip = _TAG_FLAG_LEN - 1
            continue
        after_emoji = bool(kept) and (_emoji(kept[-1]) or kept[-1] == _VS16)
        selector = c in (_VS15, _VS16) and bool(kept) and _emoji(kept[-1])
        joiner = c == _ZWJ and after_emoji and i + 1 < len(text) and _emoji(text[i + 1])
        if not _invisible(c) or selector or joiner:
            kept.append(c)
    return kept


def normalize_text(text: str, *, form: str = "NFKC", max_chars: int = 1000) -> tuple[str, dict]:
    """Normalise ``text``; returns the new text and what was done (counts, never the text)."""
    normal = unicodedata.normalize(form, text)
    kept = _strip_invisible(normal)
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
    version: ClassVar[str] = "3"  # 2: Default_Ignorable too, emoji joiners kept; 3: tag flags
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
