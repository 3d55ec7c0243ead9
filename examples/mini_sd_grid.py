"""Sample grid of the embedded trustgain-mini-sd: one row per digit, one column per caption style.

    python examples/mini_sd_grid.py [--out examples/mini_sd_grid.png] [--steps 25]

Columns: plain, small in the top left corner, red, large blue, thick strokes, thin strokes,
tilted left, green tilted right. Fixed seed, so reruns give the same picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trustgain.models import load_mini_sd
from trustgain.models.data import WORDS

STYLES = (
    "a handwritten {w}",
    "a small {w} in the top left corner",
    "a red handwritten {w}",
    "a large blue {w}",
    "the digit {n} in thick strokes",
    "the digit {n} in thin strokes",
    "a handwritten {w} tilted to the left",
    "a green {n} tilted to the right",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("mini_sd_grid.png"))
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    pipe = load_mini_sd("cpu")
    prompts = [s.format(w=WORDS[d], n=d) for d in range(10) for s in STYLES]
    gen = torch.Generator().manual_seed(args.seed)
    latents = torch.randn((len(prompts), 4, 8, 8), generator=gen)
    with torch.no_grad():
        images = pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      latents=latents, output_type="np").images
    tiles = (images * 255).round().astype(np.uint8)  # (80, 32, 32, 3)
    rows = [np.concatenate(list(tiles[d * len(STYLES):(d + 1) * len(STYLES)]), axis=1)
            for d in range(10)]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    print(f"wrote {args.out} ({grid.width}x{grid.height}); columns: " + " | ".join(STYLES))


if __name__ == "__main__":
    main()
