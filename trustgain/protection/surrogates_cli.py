"""Command line of :mod:`trustgain.protection.surrogates`: ``python -m
trustgain.protection.surrogates --data DIR -o OUT`` (:func:`main`; see that module's docstring
for what it checks before training and how OUT is written).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from trustgain.argtypes import RATE, device, number, run_command
from trustgain.errors import ConfigError
from trustgain.protection.archs import ARCHS
from trustgain.protection.surrogates_data import folder_dataset
from trustgain.protection.surrogates_files import check_output, save_folder
from trustgain.protection.surrogates_train import predict, train

EPILOG = """\
The data folder: one subfolder per class (data/cats/*.jpg, data/dogs/*.jpg; folders whose
names start with '.' are skipped), or a flat folder of photos of at least 128x128 px, each
its own class of random 32x32 crops. Images are read as 8-bit RGB; 16-bit and float images
are refused, as trustgain protect refuses them.

examples:
  python -m trustgain.protection.surrogates --data photos/ -o surrogates/
  python -m trustgain.protection.surrogates --data photos/ -o surrogates/ \\
      --archs cnn,resnet,vit --epochs 20 --device cuda
  python -m trustgain.protection.surrogates --data photos/ -o surrogates/ --force
                                       # replace surrogates trained before
  TRUSTGAIN_NO_PROGRESS=1 python -m trustgain.protection.surrogates --data photos/ -o s/

then attack them: trustgain protect photos/ -o protected/ --surrogate surrogates/
"""


def _arch_list(text: str) -> tuple[str, ...]:
    names = tuple(a.strip() for a in text.split(","))
    known = ", ".join(ARCHS)
    for i, name in enumerate(names):
        if not name:
            raise argparse.ArgumentTypeError(f"{text!r} has an empty name (e.g. cnn,wide,mlp)")
        if name not in ARCHS:
            raise argparse.ArgumentTypeError(f"unknown architecture {name!r}; known: {known}")
        if name in names[:i]:
            raise argparse.ArgumentTypeError(f"{name!r} is listed twice")
    return names


def _no_progress_env() -> bool:
    """TRUSTGAIN_NO_PROGRESS, read as click reads it for ``trustgain --no-progress``."""
    value = os.environ.get("TRUSTGAIN_NO_PROGRESS", "").strip().lower()
    return value in ("1", "true", "t", "yes", "y", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trustgain.protection.surrogates",
        description="Train small image classifiers (surrogates) on a folder of images,\n"
                    "for trustgain protect --surrogate to attack.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="image folder: one subfolder per class, or a flat folder (one class "
                        "per image)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUT",
                   help="output folder (new or empty; written whole at the end)")
    p.add_argument("--archs", type=_arch_list, default="cnn,wide,mlp", metavar="A,B,...",
                   help=f"architectures, comma-separated, from: {', '.join(ARCHS)} "
                        "[default: %(default)s]")
    p.add_argument("--epochs", type=number(int, 1), default=12,
                   help="passes over the data per architecture [default: %(default)s]")
    p.add_argument("--batch", type=number(int, 1), default=64,
                   help="images per training step [default: %(default)s]")
    p.add_argument("--lr", type=RATE, default=2e-3,
                   help="peak learning rate (one-cycle Adam) [default: %(default)s]")
    p.add_argument("--per-image", type=number(int, 1, high=100_000), default=64, metavar="N",
                   help="random 32x32 crops per image of a flat folder [default: %(default)s]")
    p.add_argument("--seed", type=number(int, 0, high=2**32 - 1), default=0,
                   help="random seed; architecture i trains with seed + i "
                        "[default: %(default)s]")
    p.add_argument("--device", type=device, default="cpu",
                   help="torch device to train on, e.g. cpu, cuda, cuda:1, mps "
                        "[default: %(default)s]")
    p.add_argument("--threads", type=number(int, 1, high=1024), default=1,
                   help="torch CPU threads [default: %(default)s; often fastest for these "
                        "small nets]")
    p.add_argument("--force", "--overwrite", dest="force", action="store_true",
                   help="replace surrogates already in OUT (a folder holding other files is "
                        "never replaced)")
    p.add_argument("--no-progress", action="store_true", default=_no_progress_env(),
                   help="no progress bars (also TRUSTGAIN_NO_PROGRESS=1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args), interrupted=f"interrupted; {args.out} was not written")


def _run(args: argparse.Namespace) -> int:
    out, data = args.out.resolve(), args.data.resolve()
    if out == data or data in out.parents:
        raise ConfigError(f"-o {args.out} is inside --data {args.data}",
                          hint="a later run would take it for a class folder")
    check_output(out, replace=args.force)  # before any work, not after the training
    torch.set_num_threads(args.threads)
    show = not args.no_progress
    x, y, names = folder_dataset(args.data, per_image=args.per_image, seed=args.seed,
                                 progress=show)
    counts = np.bincount(y, minlength=len(names))
    if len(counts) != len(names) or not counts.all():  # the saved classes are those trained
        raise AssertionError(f"labels do not match the {len(names)} classes")
    print(f"{len(x)} training images of {len(names)} classes from {args.data}")
    models = {}
    for i, arch in enumerate(args.archs):
        t0 = time.time()
        models[arch] = train(arch, x, y, epochs=args.epochs, seed=args.seed + i,
                             batch=args.batch, lr=args.lr, device=args.device, progress=show)
        acc = float((predict(models[arch], x) == y).mean())
        print(f"{arch}: train accuracy {acc:.3f} ({time.time() - t0:.1f} s)")
    save_folder(models, out, replace=args.force,
                meta={"n_classes": len(names), "channels": 3, "classes": names})
    print(f"saved {len(models)} surrogates to {args.out}")
    return 0
