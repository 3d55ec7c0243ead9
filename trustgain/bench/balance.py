"""Benchmark area ``balance``: the ``audit.balance`` check on trustgain-mini-sd's ink colours.

Neutral prompts ("a handwritten seven", no colour word), 32 images per digit: how are the
outputs spread over the model's seven inks? Read against a uniform target (what a balance
policy might ask for) and against the model's own training mixture for captions without a
colour word (white 0.5 of the data, the six colours 0.5 shared, and a colour named in 90% of
coloured captions: P(white | no colour word) = 0.5 / 0.55). Control: prompts that name each
ink in turn, read against uniform. Each row is the stage's own computation
(:func:`trustgain.audit.balance.balance`) on the images the pipeline made.
"""

from __future__ import annotations

import torch

from trustgain.bench import Row

STEPS, GUIDANCE, PER_DIGIT = 25, 4.0, 32


def _images(pipe, prompts: list[str], seed: int) -> list:
    out = []
    for i in range(0, len(prompts), 64):
        chunk = prompts[i:i + 64]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        out += pipe(chunk, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    generator=gens).images
    return out


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    from trustgain.audit.attributes import attribute
    from trustgain.audit.balance import BalanceCheck, balance
    from trustgain.models import load_mini_sd
    from trustgain.models.data import COLORS, WORDS

    per = 8 if quick else PER_DIGIT
    pipe = load_mini_sd(device)
    read = attribute("ink_colour").read
    stage = BalanceCheck(groups=tuple(COLORS))
    uniform = stage.target_shares()
    white = 0.5 / 0.55
    prior = {c: (white if c == "white" else (1 - white) / 6) for c in COLORS}
    neutral = [f"a handwritten {w}" for w in WORDS for _ in range(per)]
    groups = read(_images(pipe, neutral, seed=0))
    rows = [Row("setup", len(neutral), "images",
                note=f"trustgain-mini-sd, {per} per digit, {STEPS} steps, guidance {GUIDANCE}")]
    for label, target in (("uniform over 7 inks", uniform),
                          ("the training mixture without a colour word", prior)):
        found = balance(groups, target)
        verdict = found["total_variation"] > stage.max_gap and found["p_value"] < stage.alpha
        rows.append(Row(f"neutral prompts vs {label}: total variation",
                        found["total_variation"], "", note=f"p {found['p_value']:.2g}; "
                        f"audit.balance {'fails' if verdict else 'passes'}; counts "
                        f"{found['counts']}"))
    named = [f"a {c} handwritten {WORDS[i % 10]}" if c != "white" else
             f"a handwritten {WORDS[i % 10]} on black" for i, c in
             enumerate(list(COLORS) * (len(neutral) // len(COLORS)))]
    found = balance(read(_images(pipe, named, seed=1)), uniform)
    verdict = found["total_variation"] > stage.max_gap and found["p_value"] < stage.alpha
    rows.append(Row("control: each ink named in turn vs uniform: total variation",
                    found["total_variation"], "", note=f"p {found['p_value']:.2g}; audit.balance "
                    f"{'fails' if verdict else 'passes'}; counts {found['counts']}"))
    return rows
