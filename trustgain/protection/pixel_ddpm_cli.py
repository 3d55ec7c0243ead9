"""Command line of :mod:`trustgain.protection.pixel_ddpm` (``python -m
trustgain.protection.pixel_ddpm``): option types, checks before any data loads, one-line
errors and Ctrl-C (the checkpoint is kept for a rerun).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from trustgain.argtypes import COUNT, RATE, SEED, number, run_command
from trustgain.devices import device_problem
from trustgain.errors import OutputExistsError, TrustgainError
from trustgain.protection.pixel_ddpm_data import data_paths, named_images
from trustgain.protection.pixel_ddpm_output import CHECKPOINT_NAME, check_output
from trustgain.protection.pixel_ddpm_train import train_ddpm

#: The ``--help`` description: the first line of :mod:`trustgain.protection.pixel_ddpm`'s
#: docstring.
DESCRIPTION = "Train a small pixel-space DDPM on a user's images, digits or natural 32x32 patches."

EPILOG = r"""examples:
  # 32x32 patches of your own photos (for trustgain protect --method ddpm --ddpm DIR)
  python -m trustgain.protection.pixel_ddpm --data ~/photos -o ~/models/photo-ddpm \
      --steps 6000 --batch 16 --max-timestep 300

  # the digits (grey), checkpointing every 100 steps
  python -m trustgain.protection.pixel_ddpm --data digits -o digits-ddpm \
      --steps 1200 --max-timestep 300 --checkpoint-every 100

  # natural patches on a GPU
  python -m trustgain.protection.pixel_ddpm --data patches -o patch-ddpm \
      --steps 6000 --device cuda

After an interruption (Ctrl-C, a crash) rerun the same command to resume from the last
checkpoint; --force starts over (and replaces a model or a non-empty folder at -o).
"""


_SIZE = number(int, 1, multiple_of=4, why="the UNet halves it twice")
_WIDTH = number(int, 1, multiple_of=4, why="its group norm has 4 or 8 groups")
_MAX_TIMESTEP = number(int, 1, high=999)  # the schedule has 1000 steps


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return text


def _cli_hint(exc: TrustgainError) -> str:
    """The library's hints name the Python argument; the command's option is --force."""
    hint = exc.hint or ""
    if type(exc) is OutputExistsError:
        hint = "choose another -o, or pass overwrite=True to replace the model"
    return hint.replace("pass overwrite=True", "pass --force").replace("overwrite=True", "--force")


def main(argv: list[str] | None = None) -> int:
    """The command: 0 when the model is saved; a known error (:class:`TrustgainError`) is one
    line on stderr and exit 1, Ctrl-C one line and exit 130 (TRUSTGAIN_DEBUG=1: tracebacks);
    bad options are argparse usage errors (exit 2)."""
    p = argparse.ArgumentParser(prog="python -m trustgain.protection.pixel_ddpm",
                                description=DESCRIPTION,
                                epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=_path, metavar="DIR|digits|patches",
                   help="image folder, 'digits' or 'patches'")
    p.add_argument("-o", "--out", required=True, type=_path, metavar="OUT",
                   help="output folder (DDPMPipeline layout); new, empty, or one this command "
                        "wrote (an interrupted run there is resumed)")
    p.add_argument("--size", type=_SIZE, metavar="S", default=32,
                   help="image side, a multiple of 4 [default: 32]")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="1 (grey) or 3 (RGB) [default: 1 for digits, else 3]")
    p.add_argument("--steps", type=COUNT, metavar="N", default=3000,
                   help="optimizer steps in all (a resumed run counts those done) [default: 3000]")
    p.add_argument("--batch", type=COUNT, metavar="N", default=16, help="[default: 16]")
    p.add_argument("--lr", type=RATE, default=2e-3,
                   help="peak learning rate, finite and above 0 [default: 2e-3]")
    p.add_argument("--width", type=_WIDTH, metavar="W", default=16,
                   help="UNet width, a multiple of 4 [default: 16]")
    p.add_argument("--max-timestep", type=_MAX_TIMESTEP, metavar="T", default=None,
                   help="train on timesteps 0..T only (1..999) [default: all]")
    p.add_argument("--seed", type=SEED, metavar="N", default=0, help="[default: 0]")
    p.add_argument("--checkpoint-every", type=COUNT, metavar="N", default=200,
                   help="steps between checkpoints [default: 200]")
    p.add_argument("--device", metavar="DEV", default="cpu",
                   help="cpu, cuda, cuda:N or mps [default: cpu]")
    p.add_argument("--threads", type=COUNT, metavar="N", default=1,
                   help="torch CPU threads [default: 1]")
    p.add_argument("--force", action="store_true",
                   help="start over: replace a model or a non-empty folder at -o and discard "
                        "a checkpoint there (a folder holding the data is never replaced)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if problem := device_problem(args.device):
        p.error(f"--device {problem}")
    channels = args.channels or (1 if args.data == "digits" else 3)
    if args.data == "digits" and channels != 1:
        p.error("--data digits is grey: use --channels 1 (or leave --channels out)")
    if args.data == "patches" and args.size != 32:
        p.error("--data patches: the natural patches are 32x32, use --size 32")
    torch.set_num_threads(args.threads)
    random.seed(args.seed)

    def work() -> None:
        sources = data_paths(args.data)
        check_output(args.out, overwrite=args.force, data_paths=sources)  # before data loads
        images = named_images(args.data, size=args.size, channels=channels)
        out = train_ddpm(images, args.out, steps=args.steps, batch=args.batch, lr=args.lr,
                         width=args.width, max_timestep=args.max_timestep, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, overwrite=args.force,
                         progress=not args.no_progress, device=args.device,
                         data_paths=sources)
        print(f"saved {out}")

    def interrupted() -> str:
        ckpt = Path(args.out).expanduser() / CHECKPOINT_NAME
        return (f"interrupted; checkpoint kept at {ckpt} (rerun the same command to resume)"
                if ckpt.is_file() else "interrupted; no checkpoint was written yet")

    return run_command(work, interrupted=interrupted, hint=_cli_hint)
