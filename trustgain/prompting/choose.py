"""``prompt.policy``: the chat model proposes several prompts, a learned policy picks one.

:class:`RewritePrompt` takes the chat model's one greedy rewrite; this stage asks it for a
small corpus per prompt (the prompt itself, the greedy rewrite and ``samples`` sampled
rewrites; :func:`trustgain.prompting.policy.propose`) and keeps the candidate the policy's
reward ranks first (without a policy file: the one the chat model itself finds most likely).
The policy is a JSON file fitted from expert choices
(:func:`trustgain.prompting.policy.fit`; ``python -m trustgain.bench.prompt_policy --save
FILE`` fits one for trustgain-mini-sd from judged images). Sampling is seeded by the prompt
and ``seed``, so the same request gives the same prompt. The record holds the policy's
SHA-256, the chat model's id and config digest, the steering digest, and per prompt the
number of candidates and the sources of the one chosen; never a text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from trustgain.errors import ConfigError
from trustgain.prompting.rewrite import RewritePrompt, image_tokenizer, known_words_only
from trustgain.stage import RunContext
from trustgain.types import Item, StageResult


@dataclass(frozen=True)
class PolicyPrompt(RewritePrompt):
    """Choose the prompt among the chat model's proposals with a learned policy.

    ``policy``: the policy file; empty (the default): the candidate the chat model finds
    most likely as the rewrite (the best fixed rule in the benchmark); ``samples``,
    ``temperature``, ``top_p``: the sampled rewrites; ``seed``: mixed with each prompt into
    the sampling seed. The other settings are
    :class:`~trustgain.prompting.rewrite.RewritePrompt`'s (``known_words`` reduces every
    candidate to the words the image model's tokenizer reads whole, as the policy's
    benchmark does; candidates over ``max_chars`` are not considered).
    """

    name: ClassVar[str] = "prompt.policy"
    version: ClassVar[str] = "1"

    policy: str = ""
    samples: int = 6
    temperature: float = 0.9
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.policy, str):
            raise ConfigError("policy must be a policy file's path, or empty for the most "
                              "likely candidate")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or not (
                1 <= self.samples <= 64):
            raise ConfigError(f"samples must be an integer from 1 to 64, not {self.samples!r}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, not {value!r}")
        if self.top_p > 1:
            raise ConfigError(f"top_p must be at most 1, not {self.top_p}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, not {self.seed!r}")
        self._load()  # a missing or malformed policy is refused when the stage is built

    def _load(self) -> Any:
        from trustgain.prompting.policy import PromptPolicy

        if not self.policy:
            return PromptPolicy.most_likely()
        return PromptPolicy.load(Path(self.policy).expanduser())

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        from trustgain.generators.text import cached_generator
        from trustgain.prompting.policy import propose, request_seed

        policy = self._load()
        request = item.request
        llm_name = Path(self.model).name if Path(self.model).expanduser().exists() else self.model
        params: dict[str, Any] = {
            "policy": "file" if self.policy else "most likely",
            "policy_sha256": policy.sha256(), "model": llm_name,
            "steering_sha256": self.steering_sha256(), "examples": len(self.examples),
            "samples": self.samples, "temperature": self.temperature, "top_p": self.top_p,
            "seed": self.seed, "known_words": self.known_words}
        prompts = request.prompt if isinstance(request.prompt, tuple) else (request.prompt,)
        if all(p is None or not p.strip() for p in prompts):
            return StageResult(item, params, applied=False, reason="no prompt")
        llm = cached_generator(self.model, self.device)
        params["model_config_sha256"] = llm.config_sha256()
        tokenizer = image_tokenizer(ctx.generator) if self.known_words else None

        def keep(text: str) -> str:
            text = (known_words_only(text, tokenizer) if tokenizer is not None
                    else " ".join(text.split()))
            return text if len(text) <= self.max_chars else ""

        new, chosen, counts = [], [], []
        for prompt in prompts:
            if not prompt.strip():  # nothing to rewrite: never invent a prompt
                new.append(prompt)
                chosen.append([])
                counts.append(0)
                continue
            cands = propose(llm, prompt, instruction=self.instruction, examples=self.examples,
                            samples=self.samples, temperature=self.temperature,
                            top_p=self.top_p, seed=request_seed(prompt, self.seed), keep=keep,
                            max_new_tokens=self.max_new_tokens)
            counts.append(len(cands))
            if not cands:
                new.append(prompt)
                chosen.append([])
                continue
            best = cands[policy.rank(cands)[0]]
            new.append(best.text)
            chosen.append(list(best.sources))
        params.update(candidates=counts, chosen_sources=chosen)
        changed = sum(a != b for a, b in zip(new, prompts, strict=True))
        params["rewritten"] = changed
        if not changed:
            return StageResult(item, params, applied=False,
                               reason="the policy kept every prompt as it was")
        value = tuple(new) if isinstance(request.prompt, tuple) else new[0]
        return StageResult(item.replace(request=request.replace(prompt=value)), params)
