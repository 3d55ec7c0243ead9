"""Sample grid of the embedded trustgain-mini-sd: one row per digit, one column per caption style.

    python examples/mini_sd_grid.py [--out examples/mini_sd_grid.png] [--steps 25]

Columns: plain, small in the top left corner, red, large blue, thick strokes, thin strokes,
tilted left, green tilted right. Fixed seed, so reruns give the same picture.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trustgain.fileio import write_atomic
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
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        p.error("--guidance must be a finite number >= 0")
    if args.out.suffix.lower() != ".png" or args.out.is_dir():
        p.error(f"--out {args.out}: give a .png file name")
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
    buf = io.BytesIO()
    grid.save(buf, format="PNG", optimize=True)
    write_atomic(args.out, buf.getvalue(), overwrite=True)  # the grid is meant to be redrawn
    print(f"wrote {args.out} ({grid.width}x{grid.height}); columns: " + " | ".join(STYLES))


if __name__ == "__main__":
    main()
