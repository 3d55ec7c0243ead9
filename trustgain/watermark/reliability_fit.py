"""Fit the latent detector's per-element reliability for a model (``reliability.json``).

    python -m trustgain.watermark.reliability_fit --model trustgain-mini-sd -o reliability.json

The model draws ``--samples`` images from fresh N(0, 1) initial latents (any Gaussian latent
is a marked latent for some key, so no key is needed), cycling through the prompts; each image
is read back under every condition of :data:`CONDITIONS` (no attack and the benchmark's five:
JPEG 50, resize 0.5, centre crop to half the area (un-zoomed, as the detector does), blur 1,
noise 0.05), encoded with the detector-side encoder where the model has one and DDIM-inverted
(empty prompt, no guidance, ``--steps``; with ``--prompted``, under each sample's prompt at the
generation guidance, as a verifier who knows the prompt inverts: its elements read otherwise);
:func:`trustgain.watermark.latent_reliability.fit` pools all conditions, because the detector
does not know which attack it meets.
About 0.4 s per sample on 2 CPU cores for trustgain-mini-sd (2,000 samples: 14 minutes).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from trustgain.argtypes import COUNT, SEED, OneLineParser, device, run_command
from trustgain.errors import InputError
from trustgain.watermark.latent_reliability import MIN_PAIRS, Reliability, fit

PROG = "python -m trustgain.watermark.reliability_fit"
CONDITIONS = ("none", "jpeg50", "resize0.5_restored", "crop_centre_50", "blur1", "noise0.05")
CROP_SCALE = 0.7071  # the detector's un-zoom for a centre crop to half the area
#: Fewest samples a fit accepts (each gives one row per condition).
MIN_SAMPLES = -(-MIN_PAIRS // len(CONDITIONS))


def check_samples(samples: int, flag: str) -> None:
    """Refuse, before any model loads, a sample count too small to fit (0 means none)."""
    if 0 < samples < MIN_SAMPLES:
        raise InputError(f"{flag} {samples} is too few to fit a reliability "
                         f"(at least {MIN_SAMPLES}, or 0 for none)")


def measure(pipe: object, prompts: Sequence[str], *, samples: int, steps: int,
            guidance: float, encoder: object | None, seed: int = 11, batch: int = 50,
            progress: bool = True, prompted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(true, inverted)``: ``samples`` initial latents repeated once per condition, and
    their inverted estimates, as rows of flattened latents; ``prompted``: inverted under
    each sample's prompt at ``guidance`` (else the empty prompt, unguided)."""
    from tqdm import tqdm

    from trustgain.watermark.attacks import SUITE
    from trustgain.watermark.detector_train_setup import geometry
    from trustgain.watermark.latent_invert import invert_images, unzoom

    shape, size, _ = geometry(pipe)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    true, inverted = [], []
    for start in tqdm(range(0, samples, batch), desc="reliability", disable=not progress,
                      unit="batch"):
        n = min(batch, samples - start)
        z = torch.randn((n, *shape), generator=gen)
        chosen = [prompts[(start + i) % len(prompts)] for i in range(n)]
        with torch.no_grad():
            out = pipe(chosen, num_inference_steps=steps, guidance_scale=guidance,
                       latents=z.to(pipe.device), output_type="pil")  # type: ignore[operator]
        for name in CONDITIONS:
            images = [SUITE[name](im, rng) for im in out.images]
            if name.startswith("crop_centre"):
                images = [unzoom(im, CROP_SCALE, size)[0] for im in images]
            under = {"prompt": chosen, "guidance_scale": guidance} if prompted else {}
            inverted.append(invert_images(pipe, images, num_inference_steps=steps,
                                          encoder=encoder, **under).reshape(n, -1).numpy())
            true.append(z.reshape(n, -1).numpy())
    return np.concatenate(true), np.concatenate(inverted)


def fit_model(pipe: object, prompts: Sequence[str], *, model: str, samples: int, steps: int,
              guidance: float, encoder: object | None, seed: int = 11,
              progress: bool = True, prompted: bool = False,
              encoder_name: str | None = None) -> Reliability:
    """:func:`measure`, then :func:`~trustgain.watermark.latent_reliability.fit`, with the
    settings recorded in the result's ``meta``; its ``"encoder"`` is ``encoder_name`` where
    given (``"mark"`` for the mark VAE), else ``"pipeline"`` or ``"detector"``."""
    true, inverted = measure(pipe, prompts, samples=samples, steps=steps, guidance=guidance,
                             encoder=encoder, seed=seed, progress=progress, prompted=prompted)
    return fit(true, inverted, {
        "model": model,
        "encoder": encoder_name or ("pipeline" if encoder is None else "detector"),
        "steps": steps, "guidance": guidance, "samples": samples,
        "conditions": list(CONDITIONS), "seed": seed, "prompts": len(prompts),
        "inversion": "prompt, generation guidance" if prompted else "empty prompt, unguided",
    })


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog="examples (the shipped digits model, the shipped files' settings):\n"
               f"  {PROG} --model trustgain-mini-sd -o reliability.json --samples 2000\n"
               f"  {PROG} --model trustgain-mini-sd --mark-vae --prompted --samples 1000 \\\n"
               "      -o reliability_prompted.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="trustgain-mini-sd",
                   help="trustgain-mini-sd or a diffusers folder (default: %(default)s)")
    p.add_argument("-o", "--output", required=True, help="the reliability file to write (JSON)")
    p.add_argument("--samples", type=COUNT, default=2000, help="images to draw (%(default)s)")
    p.add_argument("--steps", type=COUNT, default=25,
                   help="generation and inversion steps (%(default)s)")
    p.add_argument("--guidance", type=float, default=4.0, help="generation guidance (%(default)s)")
    p.add_argument("--prompts", help="prompts file, one a line (required for other models)")
    p.add_argument("--pipeline-encoder", action="store_true",
                   help="encode with the pipeline's VAE even where a detector encoder ships")
    p.add_argument("--mark-vae", action="store_true",
                   help="generate with the model's mark VAE (vae_mark) and encode with it")
    p.add_argument("--prompted", action="store_true",
                   help="invert under each sample's prompt at --guidance, as a verifier who "
                        "knows the prompt does (detect-latent --prompt reads with this fit "
                        "where the VAE's folder holds it as reliability_prompted.json)")
    p.add_argument("--seed", type=SEED, default=11, help="latent and attack seed (%(default)s)")
    p.add_argument("--threads", type=COUNT, default=2, help="torch CPU threads (%(default)s)")
    p.add_argument("--device", type=device, default="cpu", help="torch device (%(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        from pathlib import Path

        from trustgain.errors import OutputExistsError
        from trustgain.models import detector_vae_for, mark_vae_folder, mark_vae_for
        from trustgain.watermark.detector_train_setup import load_pipeline, load_prompts

        if Path(args.output).exists() and not args.force:
            raise OutputExistsError(Path(args.output))
        check_samples(args.samples, "--samples")
        if args.mark_vae and args.pipeline_encoder:
            raise InputError("--mark-vae and --pipeline-encoder exclude each other")
        if args.mark_vae and mark_vae_folder(args.model) is None:  # before the slow load
            raise InputError(f"{args.model} has no vae_mark folder (make one with "
                             "python -m trustgain.watermark.mark_vae)")
        torch.set_num_threads(args.threads)
        prompts = load_prompts(args.model, args.prompts)
        pipe = load_pipeline(args.model, args.device, progress=False)
        if args.mark_vae:
            from trustgain.watermark.mark_vae import latent_mismatch

            encoder = mark_vae_for(args.model, args.device)
            problem = latent_mismatch(encoder, pipe.vae)
            if problem:
                raise InputError(f"the vae_mark of {args.model} does not fit its pipeline: "
                                 f"{problem}")
            pipe.vae = encoder  # generated with the mark decoder, read with its encoder
        else:
            encoder = (None if args.pipeline_encoder
                       else detector_vae_for(args.model, args.device))
        t0 = time.perf_counter()
        rel = fit_model(pipe, prompts, model=args.model, samples=args.samples,
                        steps=args.steps, guidance=args.guidance, encoder=encoder,
                        seed=args.seed, progress=not args.no_progress, prompted=args.prompted,
                        encoder_name="mark" if args.mark_vae else None)
        rel.save(args.output, overwrite=args.force)
        r = rel.rho
        print(f"wrote {args.output}: {rel.size} elements, rho median {np.median(r):.3f} "
              f"(min {r.min():.3f}, max {r.max():.3f}), {time.perf_counter() - t0:.0f} s")
        return 0

    return run_command(work, hint=lambda e: (e.hint or "").replace("overwrite=True", "--force"))


__all__ = ["CONDITIONS", "MIN_SAMPLES", "Reliability", "build_parser", "check_samples",
           "fit_model", "main", "measure"]

if __name__ == "__main__":
    sys.exit(main())
