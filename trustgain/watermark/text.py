"""``watermark.text``: a keyed green-list mark in generated text (Kirchenbauer et al. 2023).

At each step the previous token and a secret key seed a permutation of the vocabulary; the
first ``greenlist_ratio`` of it is "green" and gets ``bias`` added to its logits, so a marked
text holds more green tokens than chance. Detection re-derives each green list from the text
alone (no model run) and counts: without the key a text's green count is Binomial(n, gamma),
so the p-value is the exact binomial tail (gamma = the green share actually drawn,
``int(vocab x ratio) / vocab``). The mechanism is ``transformers``'
``WatermarkLogitsProcessor`` / ``WatermarkDetector`` (the published algorithm, maintained
there); trustgain adds the key (an HKDF sub-key of the KeyRing instead of the public default
15485863), the exact p-value (transformers reports the normal approximation, which is
optimistic for short texts), the stage and the record.

Limits, as published: the mark is statistical, so it needs length (about 25+ scored tokens
for p < 1e-3 at the defaults); paraphrasing or translating removes it; with context width 1
an adversary who sees many marked texts can estimate green lists (Jovanovic et al. 2024,
"watermark stealing") without the key; tokens are scored once per distinct (previous, next)
pair, which keeps the null exact when a text repeats itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from trustgain import settings
from trustgain.errors import ConfigError, InputError
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult, StepHook

STAGE = "watermark.text"
#: Largest key transformers' generator takes as a seed (``torch.Generator.manual_seed``).
_KEY_BITS = 63


def text_key(keys: Any) -> int:
    """The secret green-list key: an integer from the ``watermark.text`` sub-key of a
    :class:`~trustgain.keys.KeyRing` (or that :class:`~trustgain.keys.DerivedKey` itself)."""
    derived = keys.derive(STAGE, "greenlist") if hasattr(keys, "derive") else keys
    return int.from_bytes(derived.material[:8], "big") >> (64 - _KEY_BITS) or 1


def _config(key: int, greenlist_ratio: float, bias: float, context_width: int) -> dict[str, Any]:
    return {"greenlist_ratio": greenlist_ratio, "bias": bias, "hashing_key": key,
            "seeding_scheme": "lefthash", "context_width": context_width}


@dataclass(frozen=True)
class TextDetection:
    """What :func:`detect_text` found; ``p_value`` is exact under the no-key null."""

    p_value: float
    z_score: float
    green: int
    scored: int
    detected: bool

    def to_dict(self) -> dict[str, Any]:
        return {"p_value": self.p_value, "z_score": self.z_score, "green": self.green,
                "scored": self.scored, "detected": self.detected}


class TextDetector:
    """Tests texts for the mark of one key; build once, call per text (the key's tables are
    made once). ``tokenizer`` and ``model_config`` are the generating model's (the config
    gives the vocabulary size the green lists were drawn over)."""

    def __init__(self, key: int, *, tokenizer: Any, model_config: Any,
                 greenlist_ratio: float = 0.25, context_width: int = 1) -> None:
        from transformers import WatermarkDetector

        _check_ratio(greenlist_ratio)
        self.tokenizer = tokenizer
        self.ratio = greenlist_ratio
        self.context_width = context_width
        config = _config(key, greenlist_ratio, 0.0, context_width)
        self._detector = WatermarkDetector(model_config, "cpu", config,
                                           ignore_repeated_ngrams=True)
        # the green share actually drawn: int(vocab x ratio) of the vocabulary
        processor = self._detector.processor
        self.gamma = processor.greenlist_size / processor.vocab_size

    def __call__(self, text: str | Any, *, alpha: float = 1e-3) -> TextDetection:
        """``text``: a string, or the token ids of one text. ``detected``: p <= ``alpha``.
        A text too short to score has p-value 1."""
        import torch
        from scipy.stats import binom

        if not 0 < alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), not {alpha!r}")
        if isinstance(text, str):
            ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        else:
            ids = torch.as_tensor(text, dtype=torch.long).reshape(1, -1)
        if ids.shape[1] < self.context_width + 1:
            return TextDetection(1.0, 0.0, 0, 0, False)
        out = self._detector(ids.cpu(), return_dict=True)
        scored, green = int(out.num_tokens_scored[0]), int(out.num_green_tokens[0])
        if not scored:
            return TextDetection(1.0, 0.0, 0, 0, False)
        p = float(binom.sf(green - 1, scored, self.gamma))
        return TextDetection(p, float(out.z_score[0]), green, scored, p <= alpha)


def detect_text(text: str | Any, *, key: int, tokenizer: Any, model_config: Any,
                greenlist_ratio: float = 0.25, context_width: int = 1,
                alpha: float = 1e-3) -> TextDetection:
    """Test one ``text`` for the mark of ``key`` (see :class:`TextDetector`)."""
    detector = TextDetector(key, tokenizer=tokenizer, model_config=model_config,
                            greenlist_ratio=greenlist_ratio, context_width=context_width)
    return detector(text, alpha=alpha)


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio < 1:
        raise ConfigError(f"greenlist_ratio must be in (0, 1), not {ratio!r}")


@dataclass(frozen=True)
class TextMark:
    """Mark generated text with a keyed green list (see the module docstring).

    ``bias``: logit boost of green tokens (transformers recommends 0.5-2.0: higher detects on
    shorter texts and changes more words); ``greenlist_ratio``: gamma, the green share of the
    vocabulary; ``context_width``: previous tokens that seed each list.
    """

    name: ClassVar[str] = STAGE
    phase: ClassVar[Phase] = Phase.GENERATE
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"logits_processor"})

    bias: float = 2.0
    greenlist_ratio: float = 0.25
    context_width: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "bias", settings.number("bias", self.bias, 0))
        _check_ratio(self.greenlist_ratio)
        if isinstance(self.context_width, bool) or not isinstance(self.context_width, int) \
                or self.context_width < 1:
            raise ConfigError(f"context_width must be a positive integer, not "
                              f"{self.context_width!r}")

    def processor(self, key: int, vocab_size: int, device: Any = "cpu") -> Any:
        """The transformers ``WatermarkLogitsProcessor`` for ``key``."""
        from transformers.generation.logits_process import WatermarkLogitsProcessor

        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise InputError(f"vocab_size must be an integer >= 2, not {vocab_size!r}")
        return WatermarkLogitsProcessor(
            vocab_size=vocab_size, device=device,
            **_config(key, self.greenlist_ratio, self.bias, self.context_width))

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        model = ctx.generator.model
        vocab_size = int(model.config.vocab_size)
        derived = ctx.key("greenlist")
        processor = self.processor(text_key(derived), vocab_size, getattr(model, "device", "cpu"))
        hook = StepHook(stage=self.name, fn=processor, tensor_inputs=("scores",))
        params = {"bias": self.bias, "greenlist_ratio": self.greenlist_ratio,
                  "context_width": self.context_width, "seeding_scheme": "lefthash",
                  "vocab_size": vocab_size, "key_id": derived.key_id}
        return StageResult(item.replace(step_hooks=(*item.step_hooks, hook)), params)
