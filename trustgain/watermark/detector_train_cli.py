"""Command line of :mod:`trustgain.watermark.detector_train`.

``python -m trustgain.watermark.detector_train`` (and this module's own ``python -m``) runs
:func:`main`. Flags are checked before any model loads: numbers by their argparse types (finite,
in range), ``--device`` against what this machine has (:func:`trustgain.devices.device_problem`),
the model folder, prompts file, ``--init`` and the output by
:func:`~trustgain.watermark.detector_train.run` before the long part. A usage error is one line
and exit code 2; a :class:`~trustgain.errors.TrustgainError` (including a training run that
diverged: nothing is written then) one line and exit code 1; Ctrl-C one line and exit code 130.
``TRUSTGAIN_DEBUG=1`` keeps the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from collections.abc import Sequence

import torch

from trustgain.argtypes import (
    CAP,
    COUNT,
    NON_NEGATIVE,
    RATE,
    SEED,
    OneLineParser,
    device,
    run_command,
)
from trustgain.watermark import detector_train as dt

PROG = "python -m trustgain.watermark.detector_train"

EPILOG = """\
example (the shipped digits model, on a GPU, the measured defaults):
  python -m trustgain.watermark.detector_train --model trustgain-mini-sd -o detector-vae \\
      --device cuda
continue training the shipped detector encoder (phase 2 only, 400 s):
  python -m trustgain.watermark.detector_train --model trustgain-mini-sd -o detector-vae-2 \\
      --init detector --x0-seconds 0 --e2e-seconds 400
other models need --prompts FILE (one prompt a line). Use the result for detection with
AutoencoderKL.from_pretrained(OUT) passed as encoder= to trustgain.watermark.latent_invert.
"""


def build_parser() -> argparse.ArgumentParser:
    d = dt.Settings()
    p = OneLineParser(
        prog=PROG,
        description="Fine-tune only the VAE encoder of a latent text-to-image pipeline so that "
        "VAE encoding + DDIM inversion recovers the initial latent better (watermark "
        "detection); the decoder, hence generation, is unchanged.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--model", required=True, help="diffusers pipeline folder or hub id ('trustgain-mini-sd': "
      "the shipped model)")
    a("-o", "--output", required=True, metavar="OUT_DIR", help="folder for the tuned "
      "AutoencoderKL and training.json")
    a("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu",
      help="torch device (default: cuda when available, else cpu)")
    a("--prompts", metavar="FILE", help="prompts, one a line (default: the digits model's own)")
    a("--init", metavar="FROM", help="start from this encoder instead of the pipeline's: "
      "'detector' (the model's shipped detector encoder) or a folder this tool wrote; with "
      "--x0-seconds 0 only phase 2 runs (continue training)")
    a("--samples", type=COUNT, default=d.samples, help="training samples (default %(default)s)")
    a("--eval-samples", type=COUNT, default=d.eval_samples,
      help="held-out samples (%(default)s)")
    a("--x0-seconds", type=NON_NEGATIVE, default=d.x0_seconds, help="phase 1 time (%(default)s)")
    a("--e2e-seconds", type=NON_NEGATIVE, default=d.e2e_seconds, help="phase 2 time (%(default)s)")
    a("--x0-steps", type=CAP, default=None, help="phase 1 step cap (default: time only)")
    a("--e2e-steps", type=CAP, default=None, help="phase 2 step cap (default: time only)")
    a("--batch", type=COUNT, default=d.batch, help="phase 1 batch, eval batch (%(default)s)")
    a("--e2e-batch", type=COUNT, default=d.e2e_batch, help="phase 2 batch (%(default)s)")
    a("--gen-batch", type=COUNT, default=d.gen_batch, help="sampling batch (%(default)s)")
    a("--lr", type=RATE, default=d.lr, help="phase 1 peak learning rate (%(default)s)")
    a("--e2e-lr", type=RATE, default=d.e2e_lr, help="phase 2 learning rate (%(default)s)")
    a("--steps", type=COUNT, default=d.steps, help="sampling = inversion steps (%(default)s)")
    a("--guidance", type=NON_NEGATIVE, default=d.guidance, help="sampling guidance (%(default)s)")
    a("--seed", type=SEED, default=d.seed, help="training seed (%(default)s)")
    a("--eval-seed", type=SEED, default=d.eval_seed, help="held-out seed (%(default)s)")
    a("--workers", type=CAP, default=d.workers, help="attack processes (0: min(16, CPUs))")
    a("--reliability-samples", type=CAP, default=d.reliability_samples,
      help="samples for the new encoder's reliability.json, the detector's per-element "
      "weights (%(default)s; 0: none; about 0.4 s each on 2 CPU cores); fitted after "
      "OUT_DIR is written and not counted in --deadline")
    a("--deadline", type=float, default=None, metavar="SECONDS", help="finish (and write "
      "OUT_DIR) within this many seconds of the start of data generation: both phases' "
      "budgets shrink to fit; use it under an outside time limit, which would leave nothing")
    a("--overwrite", "--force", dest="overwrite", action="store_true",
      help="replace a non-empty OUT_DIR")
    a("--no-progress", action="store_true", help="no progress bars (log lines only)")
    return p


def settings_from_args(args: argparse.Namespace) -> dt.Settings:
    names = {f.name for f in dataclasses.fields(dt.Settings)}
    return dt.Settings(**{k: v for k, v in vars(args).items() if k in names})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    command = shlex.join([sys.executable, "-m", "trustgain.watermark.detector_train",
                          *(sys.argv[1:] if argv is None else argv)])
    def work() -> None:
        try:
            report = dt.run(args.model, args.output, settings_from_args(args),
                            device=args.device, prompts_file=args.prompts,
                            overwrite=args.overwrite, progress=not args.no_progress,
                            command=command, log=log, init=args.init)
        except torch.cuda.OutOfMemoryError:
            raise dt.DetectorTrainError(
                f"out of GPU memory on {args.device}; nothing written",
                hint="lower --batch, --e2e-batch or --gen-batch") from None
        log(f"wrote {args.output}: clean sign accuracy "
            f"{report['eval']['base']['none']['sign_accuracy']} -> "
            f"{report['eval']['tuned']['none']['sign_accuracy']}")

    return run_command(work)


if __name__ == "__main__":
    sys.exit(main())
