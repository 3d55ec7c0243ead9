"""Entry point: ``python -m trustgain.bench <area> [--quick] [--json PATH] [--device D]``."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

from trustgain.devices import device_problem
from trustgain.errors import TrustgainError
from trustgain.fileio import write_atomic

from . import AREAS, format_table


def _check_output(p: argparse.ArgumentParser, path: Path, force: bool) -> None:
    """Refuse an output the run could not write, or would replace unasked, before it starts."""
    if path.is_dir():
        p.error(f"--json {path} is a folder")
    if path.exists() and not force:
        p.error(f"--json {path} exists; pass --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        p.error(f"--json {path}: cannot write there ({exc.strerror or exc})")


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark area, print its table; exit 1 if a stated target is missed."""
    p = argparse.ArgumentParser(prog="python -m trustgain.bench")
    p.add_argument("area", choices=sorted(AREAS))
    p.add_argument("--quick", action="store_true", help="small version, under a minute")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--data", type=Path, default=None,
                   help="extra images (a folder) for areas that take them")
    args, unknown = p.parse_known_args(argv)
    module = importlib.import_module(AREAS[args.area])
    if unknown:  # area-specific flags (--only, --kinds, --prepare) live on the area's module
        own = (f"the area's own options: python -m {AREAS[args.area]} --help"
               if 'if __name__ == "__main__"' in inspect.getsource(module)
               else f"{args.area} has no other options")
        p.error(f"unrecognized arguments: {' '.join(unknown)}; {own}")
    if problem := device_problem(args.device):
        p.error(f"--device {problem}")
    if args.data is not None:
        if "data" not in inspect.signature(module.run).parameters:
            p.error(f"{args.area} takes no --data")
        if not args.data.is_dir():
            p.error(f"--data {args.data}: no such folder")
    if args.json is not None:
        _check_output(p, args.json, args.force)  # before the run, not after it
    t0 = time.time()
    extra = {"data": args.data} if args.data is not None else {}
    try:
        rows = module.run(quick=args.quick, device=args.device, **extra)
    except TrustgainError as exc:
        p.exit(1, f"error: {exc}\n")
    seconds = time.time() - t0
    command = "python -m trustgain.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(format_table(rows))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{args.area}: {seconds:.1f} s on {platform.machine()}, {os.cpu_count()} CPUs "
          f"visible (1-min load average at the end {load:.1f}), device {args.device}; "
          f"{dt.date.today().isoformat()}")
    if args.json:
        write_atomic(args.json, (json.dumps({
            "area": args.area, "command": command, "quick": args.quick,
            "device": args.device, "seconds": round(seconds, 1),
            "cpus": os.cpu_count(), "load_average_1m_at_end": round(load, 2),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "rows": [r.as_dict() for r in rows],
        }, indent=2) + "\n").encode(), overwrite=args.force)
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
