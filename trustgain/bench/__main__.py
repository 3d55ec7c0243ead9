"""Entry point: ``python -m trustgain.bench <area> [--quick] [--json PATH] [--device D]``."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from . import AREAS, format_table


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark area, print its table; exit 1 if a stated target is missed."""
    p = argparse.ArgumentParser(prog="python -m trustgain.bench")
    p.add_argument("area", choices=sorted(AREAS))
    p.add_argument("--quick", action="store_true", help="small version, under a minute")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--data", type=Path, default=None,
                   help="extra images (a folder) for areas that take them")
    args, unknown = p.parse_known_args(argv)
    if unknown:  # area-specific flags (--only, --kinds, --prepare) live on the area's module
        p.error(f"unrecognized arguments: {' '.join(unknown)}; the area's own options: "
                f"python -m {AREAS[args.area]} --help")
    module = importlib.import_module(AREAS[args.area])
    t0 = time.time()
    extra = {"data": args.data} if args.data is not None else {}
    rows = module.run(quick=args.quick, device=args.device, **extra)
    seconds = time.time() - t0
    command = "python -m trustgain.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(format_table(rows))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{args.area}: {seconds:.1f} s on {platform.machine()}, {os.cpu_count()} CPUs "
          f"visible (1-min load average at the end {load:.1f}), device {args.device}; "
          f"{dt.date.today().isoformat()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "area": args.area, "command": command, "quick": args.quick,
            "device": args.device, "seconds": round(seconds, 1),
            "cpus": os.cpu_count(), "load_average_1m_at_end": round(load, 2),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "rows": [r.as_dict() for r in rows],
        }, indent=2) + "\n")
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
