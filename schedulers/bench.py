"""``python -m schedulers.bench {contract,assignment,offloading} [--quick] [--json P] [--seeds N]``

Prints each paper's comparison next to ours as markdown tables, with the exact optimum as a
reference row where one exists, the seeds used and 95% confidence intervals (normal
approximation over rounds or instances). Published numbers appear only in columns labelled
"paper (published)"; every other figure is computed by this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from schedulers.bench_contract import bench_contract
from schedulers.bench_util import fmt as _fmt
from schedulers.bench_util import table as _table
from schedulers.core import mean_ci


def _instances(make: Callable, per_seed: int, seeds: range):
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for _ in range(per_seed):
            yield make(rng), rng


def _headline(out: dict[str, Any], terms: dict[str, bool]) -> None:
    """Ours against every other method, per term: relative change, positive = ours better."""
    o = out["methods"]["ours"]
    rows = []
    for name, m in out["methods"].items():
        if name in ("ours", "optimum"):
            continue
        cells = [name]
        for term, higher_better in terms.items():
            base = m[term]
            gain = (o[term] - base) / abs(base) if higher_better else (base - o[term]) / abs(base)
            cells.append(f"{100 * gain:+.1f}%")
            out["methods"][name].setdefault("ours_gain", {})[term] = gain
        rows.append(cells)
    print("### Ours against each method (positive: ours better; means over the same instances)\n")
    print(
        _table(
            [
                "method",
                *[f"{t} ({'higher' if h else 'lower'} is better)" for t, h in terms.items()],
            ],
            rows,
        )
        + "\n"
    )


def _compare(
    title: str,
    make: Callable[[np.random.Generator], Any],
    methods: dict[str, Callable],
    optimum: Callable,
    evaluate: Callable,
    key: str,
    maximise: bool,
    instances: int,
    seeds: range,
    terms: tuple[str, ...],
) -> dict[str, Any]:
    vals: dict[str, list[float]] = {m: [] for m in ["optimum", *methods]}
    extra: dict[str, dict[str, list[float]]] = {m: {t: [] for t in terms} for m in vals}
    times: dict[str, list[float]] = {m: [] for m in vals}
    for prob, rng in _instances(make, instances, seeds):
        t = time.perf_counter()
        opt_plan, opt = optimum(prob)
        times["optimum"].append(time.perf_counter() - t)
        vals["optimum"].append(opt)
        opt_ev = evaluate(prob, opt_plan)
        for tm in terms:
            extra["optimum"][tm].append(opt_ev[tm])
        for name, fn in methods.items():
            t = time.perf_counter()
            plan = fn(prob, rng)
            times[name].append(time.perf_counter() - t)
            ev = evaluate(prob, plan)
            vals[name].append(ev[key])
            for tm in terms:
                extra[name][tm].append(ev[tm])
    opt = np.asarray(vals["optimum"])
    rows, out = [], {"instances": instances, "seeds": list(seeds), "methods": {}}
    sa = float(np.mean(times.get("sa (paper)", times.get("simulated annealing", [np.nan]))))
    for name, v in vals.items():
        v = np.asarray(v)
        finite = np.isfinite(v)
        ratio = np.where(finite, opt / v if not maximise else v / opt, 0.0)
        m, h = mean_ci(v[finite]) if finite.any() else (np.nan, 0.0)
        t_ms = 1000 * float(np.mean(times[name]))
        regret = np.where(finite, np.abs(opt - v), np.nan)
        row = [
            name if name != "optimum" else "optimum (MILP, reference)",
            _fmt(m, h, 3),
            f"{100 * ratio.mean():.2f}",
            f"{100 * ratio.min():.2f}",
            f"{np.nanmean(regret):.3f}",
            f"{int((~finite).sum())}",
        ]
        row += [
            f"{np.nanmean(np.asarray(extra[name][tm], dtype=float)[finite]):.4f}" for tm in terms
        ]
        row += [f"{t_ms:.2f}", f"{sa / (t_ms / 1000):.1f}x"]
        rows.append(row)
        out["methods"][name] = {
            key: m,
            "mean": m,
            "ci95": h,
            "ratio_mean": float(ratio.mean()),
            "regret_mean": float(np.nanmean(regret)),
            "ratio_min": float(ratio.min()),
            "infeasible": int((~finite).sum()),
            "ms": t_ms,
            **{tm: float(np.nanmean(extra[name][tm])) for tm in terms},
        }
    print(f"## {title}\n")
    print(
        _table(
            [
                "method",
                f"{key} (95% CI)",
                "% of optimum (mean)",
                "% of optimum (min)",
                "regret (mean)",
                "infeasible",
                *terms,
                "ms / decision",
                "speed-up vs SA",
            ],
            rows,
        )
        + "\n"
    )
    return out


def bench_assignment(quick: bool, seeds: int) -> dict[str, Any]:
    from schedulers import assignment_policies as ap
    from schedulers.assignment import evaluate, make_problem

    n = 10 if quick else 100
    methods = {
        "ours": ap.ours,
        "sa (paper)": ap.gao_sa,
        "best quality": ap.best_quality,
        "largest model": ap.largest_model,
        "smallest model": ap.smallest_model,
        "random model": ap.random_model,
    }
    out = _compare(
        f"Model assignment (Gao et al.), {n} instances x {seeds} seed(s) of 8 "
        "PartiPrompts prompts, 3 models",
        lambda r: make_problem(r, 8),
        methods,
        ap.milp_optimum,
        evaluate,
        "utility",
        True,
        n,
        range(seeds),
        ("quality", "delay_s"),
    )
    _headline(out, {"utility": True, "quality": True, "delay_s": False})
    return out


def bench_offloading(quick: bool, seeds: int) -> dict[str, Any]:
    from schedulers import offloading_policies as op
    from schedulers.offloading import evaluate, make_problem

    n = 10 if quick else 100
    methods = {
        "ours": op.ours,
        "alternating (paper-like)": op.alternating,
        "simulated annealing": op.simulated_annealing,
        "all local": op.all_local,
        "all offload": op.all_offload,
        "random offload": op.random_offload,
        "fixed 20 steps": op.fixed_steps,
    }
    out = _compare(
        f"Offloading and quality control (Wang et al.), {n} instances x {seeds} "
        "seed(s) of 8 users, 10 edge units",
        lambda r: make_problem(r, 8),
        methods,
        op.milp_optimum,
        evaluate,
        "objective",
        False,
        n,
        range(seeds),
        ("latency_s", "energy_j", "avg_error", "offloaded"),
    )
    _headline(out, {"objective": False, "latency_s": False, "energy_j": False, "avg_error": False})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m schedulers.bench", description=__doc__)
    ap.add_argument("scenario", choices=("contract", "assignment", "offloading"))
    ap.add_argument("--quick", action="store_true", help="small version, under a minute")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    ap.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="independent seeds (contract: runs of 30 rounds; others: instance sets)",
    )
    args = ap.parse_args(argv)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU used, "
        f"python {platform.python_version()}, numpy {np.__version__}, quick={args.quick}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}\n"
    )
    fn = {
        "contract": bench_contract,
        "assignment": bench_assignment,
        "offloading": bench_offloading,
    }[args.scenario]
    res = fn(args.quick, args.seeds)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
