"""``watermark.text``: a keyed green-list mark in generated text (Kirchenbauer et al. 2023).

At each step the previous token and a secret key seed a permutation of the vocabulary; the
first ``greenlist_ratio`` of it is "green" and gets ``bias`` added to its logits, so a marked
text holds more green tokens than chance. Detection re-derives each green list from the text
alone (no model run) and counts: without the key a text's green count is Binomial(n, gamma),
so the p-value is the exact binomial tail (gamma = the green share actually drawn,
``int(vocab x ratio) / vocab``).

The scoring and the logits step are ``transformers``' ``WatermarkLogitsProcessor`` /
``WatermarkDetector`` (the published "left-hash" algorithm, maintained there). Two parts are
replaced, in :class:`KeyedGreenlist`: the seed of each green list is HMAC-SHA256(key,
previous token) instead of ``key x previous token`` (torch's CPU generator keeps only 32 bits
of a seed, so the product made any 64-bit key a 32-bit one, and token 0's list did not depend
on the key at all), and the list is always drawn by the CPU generator and moved to the scores'
device (CUDA's generator draws other permutations, so a text marked on a GPU would not be
detected on a CPU). The key is a 32-byte HKDF sub-key of the KeyRing; each per-token seed is
32 bits, and learning one reveals one green list, not the key.

Limits, as published: the mark is statistical, so it needs length (about 50+ scored tokens for
p < 1e-3 at the defaults); paraphrasing or translating removes it; with one token of context an
adversary who sees many marked texts can estimate green lists (Jovanovic et al. 2024,
"watermark stealing") without the key. Tokens are scored once per distinct (previous, next)
pair, which keeps the null exact when a text repeats itself; that is why the context is one
token (transformers' left-hash seeds from the last token whatever its ``context_width``, and
its n-gram de-duplication is exact only at width 1).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, ClassVar

from trustgain import settings
from trustgain.errors import ConfigError, InputError
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult, StepHook

STAGE = "watermark.text"


def text_key(keys: Any) -> bytes:
    """The secret green-list key: the ``watermark.text`` sub-key of a
    :class:`~trustgain.keys.KeyRing` (or that :class:`~trustgain.keys.DerivedKey` itself)."""
    derived = keys.derive(STAGE, "greenlist") if hasattr(keys, "derive") else keys
    return bytes(derived.material)


def _check_key(key: Any) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) < 16:
        raise ConfigError("the text mark's key must be at least 16 bytes (use text_key())")
    return bytes(key)


def _processor_class() -> type:
    """:class:`KeyedGreenlist`, made on first use (transformers is imported lazily)."""
    global KeyedGreenlist
    if KeyedGreenlist is None:
        import torch
        from transformers.generation.logits_process import WatermarkLogitsProcessor

        class _KeyedGreenlist(WatermarkLogitsProcessor):
            """transformers' left-hash processor, seeded by HMAC-SHA256(key, previous token)
            on the CPU generator (see the module docstring)."""

            def __init__(self, key: bytes, vocab_size: int, greenlist_ratio: float,
                         bias: float) -> None:
                super().__init__(vocab_size=vocab_size, device="cpu",
                                 greenlist_ratio=greenlist_ratio, bias=bias, hashing_key=0,
                                 seeding_scheme="lefthash", context_width=1)
                self._key = key

            def __repr__(self) -> str:  # never the key
                return f"KeyedGreenlist(vocab_size={self.vocab_size}, bias={self.bias})"

            def set_seed(self, input_seq: torch.LongTensor) -> None:
                previous = int(input_seq[-1])
                digest = hmac.new(self._key, previous.to_bytes(8, "big", signed=True),
                                  "sha256").digest()
                self.rng.manual_seed(int.from_bytes(digest[:8], "big"))

            def _get_greenlist_ids(self, input_seq: torch.LongTensor) -> torch.LongTensor:
                self.set_seed(input_seq)
                permutation = torch.randperm(self.vocab_size, generator=self.rng)
                return permutation[: self.greenlist_size].to(input_seq.device)

        KeyedGreenlist = _KeyedGreenlist
    return KeyedGreenlist


#: The processor class (a ``WatermarkLogitsProcessor``); built by :func:`_processor_class`.
KeyedGreenlist: Any = None


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

    def __init__(self, key: bytes, *, tokenizer: Any, model_config: Any,
                 greenlist_ratio: float = 0.25) -> None:
        from transformers import WatermarkDetector

        _check_ratio(greenlist_ratio)
        key = _check_key(key)
        self.tokenizer = tokenizer
        config = {"greenlist_ratio": greenlist_ratio, "bias": 0.0, "hashing_key": 0,
                  "seeding_scheme": "lefthash", "context_width": 1}
        self._detector = WatermarkDetector(model_config, "cpu", config,
                                           ignore_repeated_ngrams=True)
        processor = _processor_class()(key, int(model_config.vocab_size), greenlist_ratio, 0.0)
        self._detector.processor = processor  # transformers' scoring, our green lists
        self.bos_token_id = getattr(model_config, "bos_token_id", None)
        self._detector.bos_token_id = -1  # a leading BOS is dropped here, before counting
        # the green share actually drawn: int(vocab x ratio) of the vocabulary
        self.gamma = processor.greenlist_size / processor.vocab_size

    def __repr__(self) -> str:
        return f"TextDetector(gamma={self.gamma:.4f})"

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
        if ids.shape[1] and int(ids[0, 0]) == self.bos_token_id:
            ids = ids[:, 1:]
        if ids.shape[1] < 2:
            return TextDetection(1.0, 0.0, 0, 0, False)
        out = self._detector(ids.cpu(), return_dict=True)
        scored, green = int(out.num_tokens_scored[0]), int(out.num_green_tokens[0])
        if not scored:
            return TextDetection(1.0, 0.0, 0, 0, False)
        p = float(binom.sf(green - 1, scored, self.gamma))
        return TextDetection(p, float(out.z_score[0]), green, scored, p <= alpha)


def detect_text(text: str | Any, *, key: bytes, tokenizer: Any, model_config: Any,
                greenlist_ratio: float = 0.25, alpha: float = 1e-3) -> TextDetection:
    """Test one ``text`` for the mark of ``key`` (see :class:`TextDetector`)."""
    detector = TextDetector(key, tokenizer=tokenizer, model_config=model_config,
                            greenlist_ratio=greenlist_ratio)
    return detector(text, alpha=alpha)


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio < 1:
        raise ConfigError(f"greenlist_ratio must be in (0, 1), not {ratio!r}")


@dataclass(frozen=True)
class TextMark:
    """Mark generated text with a keyed green list (see the module docstring).

    ``bias``: logit boost of green tokens (transformers recommends 0.5-2.0: higher detects on
    shorter texts and changes more words); ``greenlist_ratio``: gamma, the green share of the
    vocabulary. Each list is seeded by the one previous token.
    """

    name: ClassVar[str] = STAGE
    phase: ClassVar[Phase] = Phase.GENERATE
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"logits_processor"})

    bias: float = 2.0
    greenlist_ratio: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "bias", settings.number("bias", self.bias, 0))
        _check_ratio(self.greenlist_ratio)

    def processor(self, key: bytes, vocab_size: int) -> Any:
        """The logits processor (:class:`KeyedGreenlist`) for ``key``; any device."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise InputError(f"vocab_size must be an integer >= 2, not {vocab_size!r}")
        return _processor_class()(_check_key(key), vocab_size, self.greenlist_ratio, self.bias)

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        model = ctx.generator.model
        vocab_size = int(model.config.vocab_size)
        derived = ctx.key("greenlist")
        processor = self.processor(text_key(derived), vocab_size)
        hook = StepHook(stage=self.name, fn=processor, tensor_inputs=("scores",))
        params = {"bias": self.bias, "greenlist_ratio": self.greenlist_ratio,
                  "seeding": "hmac-sha256(key, previous token)", "vocab_size": vocab_size,
                  "key_id": derived.key_id}
        return StageResult(item.replace(step_hooks=(*item.step_hooks, hook)), params)
