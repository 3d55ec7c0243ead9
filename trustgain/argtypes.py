"""argparse types, parser and error ending shared by the ``python -m`` training commands
(models.train, models.cards, protection.pixel_ddpm, protection.surrogates,
privacy.finetune_public, watermark.detector_train), so every one of them refuses a bad number
the same way (one line, exit code 2, before anything loads) and ends a known error or Ctrl-C
the same way (:func:`run_command`). The ``trustgain`` CLI itself is click
(:mod:`trustgain.cli.common` and :mod:`trustgain.cli.main` have the click counterparts)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from trustgain.errors import TrustgainError


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (the usage itself is what ``--help`` is for)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def number(kind: type, low: float, *, above: bool = False, high: float | None = None,
           multiple_of: int | None = None, why: str = "") -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int or float), finite, >= ``low`` (> with ``above``),
    <= ``high``, and (ints) a multiple of ``multiple_of`` (``why`` says the reason)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < low or (above and value == low) or (high is not None and value > high):
            bounds = f"{'>' if above else '>='} {low:g}" + (
                "" if high is None else f" and <= {high:g}")
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {bounds})")
        if multiple_of and value % multiple_of:
            reason = f" ({why})" if why else ""
            raise argparse.ArgumentTypeError(
                f"{text} is not a multiple of {multiple_of}{reason}")
        return value

    parse.__name__ = kind.__name__
    return parse


def device(value: str) -> str:
    """An argparse type: a torch device this machine has (one line, never torch's traceback)."""
    from trustgain.devices import device_problem

    if problem := device_problem(value):
        raise argparse.ArgumentTypeError(problem.replace("use cpu", "use --device cpu"))
    return value


COUNT = number(int, 1)  #: 1, 2, ...
CAP = number(int, 0)  #: 0, 1, ... (0 often means "none")
SEED = number(int, 0, high=2**63 - 1)
NON_NEGATIVE = number(float, 0.0)
RATE = number(float, 0.0, above=True)  #: finite and > 0 (learning rates, minutes)


def run_command(work: Callable[[], int | None], *, interrupted: str | Callable[[], str] =
                "interrupted", hint: Callable[[TrustgainError], str] | None = None) -> int:
    """Run ``work`` and return its exit code (None: 0). A :class:`TrustgainError` ends as
    ``error: MESSAGE (HINT)`` on stderr and exit code 1, Ctrl-C as the line ``interrupted``
    (a string or a function giving it) and exit code 130; ``TRUSTGAIN_DEBUG=1`` keeps the
    traceback. ``hint`` rewrites a library hint for the command line (e.g. ``--force`` for
    ``overwrite=True``)."""
    debug = os.environ.get("TRUSTGAIN_DEBUG") == "1"
    try:
        code = work()
    except TrustgainError as exc:
        if debug:
            raise
        text = hint(exc) if hint is not None else exc.hint
        print(f"error: {exc}" + (f" ({text})" if text else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(interrupted() if callable(interrupted) else interrupted, file=sys.stderr)
        return 130
    return 0 if code is None else code
