"""What every command shares: the error funnel, output, passphrases, progress bars."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from tqdm import tqdm

from trustgain.errors import InputError
from trustgain.keys import KeyRing, default_keyring_path, is_encrypted, permission_problem

T = TypeVar("T")

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


def _quiet_libraries(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """--no-progress also silences diffusers' and transformers' own bars (model loading,
    "Writing model shards"), which trustgain's progress helper does not draw."""
    if value:
        import diffusers.utils.logging
        import transformers.utils.logging

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    return value


progress_option = click.option(
    "--no-progress",
    is_flag=True,
    envvar="TRUSTGAIN_NO_PROGRESS",
    callback=_quiet_libraries,
    help="No progress bars (also TRUSTGAIN_NO_PROGRESS=1).",
)


class FiniteFloat(click.ParamType):
    """A float in [lo, hi] that is neither NaN nor infinite (click.FloatRange lets NaN by)."""

    name = "float"

    def __init__(self, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False) -> None:
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low_bad = self.lo is not None and (number <= self.lo if self.lo_open else number < self.lo)
        if low_bad or (self.hi is not None and number > self.hi):
            lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
            hi = "" if self.hi is None else f"<= {self.hi:g}"
            bounds = " and ".join(x for x in (lo, hi) if x)
            self.fail(f"{number:g} is out of range (must be {bounds})", param, ctx)
        return number


def _check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A torch device this machine has, or a one-line usage error (never a CUDA traceback)."""
    from trustgain.devices import device_problem

    if value is not None and (problem := device_problem(value)):
        raise click.BadParameter(problem.replace("use cpu", "use --device cpu"), ctx, param)
    return value


def device_option(default: str | None = "cpu") -> Any:
    """``--device``: checked against what this machine has before any model is loaded."""
    shown = "[default: cuda when available, else cpu]" if default is None else "torch device."
    return click.option("--device", default=default, show_default=default is not None,
                        callback=_check_device, help=f"{shown} e.g. cpu, cuda, cuda:1, mps.")
keyring_option = click.option(
    "--keyring",
    "keyring_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Key file [default: $TRUSTGAIN_HOME/keyring.json, TRUSTGAIN_HOME=~/.trustgain].",
)


def emit(data: Any, as_json: bool, human: str) -> None:
    """Results to stdout: JSON for machines, a line for humans."""
    click.echo(json.dumps(data, indent=2) if as_json else human)


def note(message: str) -> None:
    """Notes and warnings to stderr, so stdout stays parseable."""
    click.echo(message, err=True)


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str = "", disable: bool = False
) -> Iterator[T]:
    """One progress helper for every long command (stderr, off with --no-progress)."""
    yield from tqdm(
        items,
        total=total,
        desc=desc,
        disable=disable,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


def passphrase_for_reading(path: str | os.PathLike[str]) -> str | None:
    """TRUSTGAIN_PASSPHRASE, else a hidden prompt on a terminal, for encrypted files only."""
    if not os.path.isfile(path) or not is_encrypted(path):
        return None
    env = os.environ.get("TRUSTGAIN_PASSPHRASE")
    if env:
        return env
    if sys.stdin.isatty():
        return click.prompt(f"Passphrase for {path}", hide_input=True)
    return None  # KeyRing.load then says the file is passphrase-protected, with a hint


def load_keyring(path: str | None) -> KeyRing:
    path = path or str(default_keyring_path())
    ring = KeyRing.load(path, passphrase=passphrase_for_reading(path))
    problem = permission_problem(path)  # others can read the secret, or swap in their keys
    if problem:
        note(problem)
    return ring


def collect_images(inputs: Iterable[str], suffixes: set[str]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for each file and each image under a folder.

    Files named directly are kept whatever their suffix (the command then says what is wrong
    with them); a folder without any matching image is an error, never a silent no-op. Image
    files of other types found in a folder (``.gif``, ``.heic``, ...) are named on stderr, not
    silently passed over; other files (sidecars, manifests, notes) are left alone quietly.
    """
    found: list[tuple[Path, Path]] = []
    for raw in inputs:
        root = Path(raw)
        if root.is_dir():
            every = [p for p in root.rglob("*") if p.is_file()]
            files = sorted(p for p in every if p.suffix.lower() in suffixes)
            _note_unsupported(root, every, suffixes)
            if not files:
                raise InputError(f"{root} holds no images ({', '.join(sorted(suffixes))})")
            found.extend((p, p.relative_to(root)) for p in files)
        elif root.exists():
            found.append((root, Path(root.name)))
        else:
            raise InputError(f"{root}: no such file or folder")
    return found


#: Image types a folder may hold that some command does not take (named, never passed over).
IMAGE_TYPES = frozenset({
    ".apng", ".avif", ".bmp", ".cr2", ".dng", ".gif", ".heic", ".heif", ".ico", ".j2k", ".jfif",
    ".jp2", ".jpe", ".jpeg", ".jpg", ".jxl", ".nef", ".pbm", ".pgm", ".png", ".pnm", ".ppm",
    ".psd", ".qoi", ".raw", ".svg", ".tga", ".tif", ".tiff", ".webp",
})


def _note_unsupported(root: Path, files: list[Path], suffixes: set[str]) -> None:
    """Say which image files of a type the command does not take were found under ``root``."""
    other = sorted(p for p in files if p.suffix.lower() in IMAGE_TYPES - suffixes)
    if other:
        names = ", ".join(str(p.relative_to(root)) for p in other[:3])
        more = f" and {len(other) - 3} more" if len(other) > 3 else ""
        note(f"{root}: skipped {len(other)} image file(s) of a type this command does not take "
             f"({names}{more}); it takes {', '.join(sorted(suffixes))}")
