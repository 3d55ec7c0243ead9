"""Privacy area, DP fine-tuning: utility in the public-pretrain / private-fine-tune setting, and
the cost of DP-SGD per step.

    python -m trustgain.bench privacy-finetune [--quick] [--json PATH]
    python -m trustgain.bench.privacy_finetune --prepare SETTING --trainable T  # fill the cache

(a) Utility. trustgain-mini-sd's recipe trained on digits 0-4 only is the public model
(:mod:`trustgain.privacy.finetune_public`, cached under ``$TRUSTGAIN_BENCH_CACHE``, default
``~/.cache/trustgain/privacy``); it is fine-tuned on the train scans of 5-9 (one record per scan)
without DP and with DP at epsilon 1, 4 and 10 (delta 1e-5, PRV accountant), training the
full UNet with one recipe (batch, epochs, learning rate, clipping at about the median
per-sample gradient norm) for every setting (``UTILITY_TRAINABLES``; the attention and LoRA
recipes stay for ``--prepare``). For each model, the digits judge names
the digit in samples prompted for 5-9; accuracy = share named as prompted. Target: at
epsilon 10, at least 80% of the non-private accuracy.

(b) Cost. One optimizer step on the same UNet and batch, with opacus (per-sample gradients,
clipping, noise) and without, interleaved in one process, median of repeats; peak resident
memory of each in its own fresh process (VmHWM from /proc, Linux; tracemalloc does not see
torch's allocator). Target: DP step time under 3x.

(c) Curves (``--only curve``, ``--only sizes``): accuracy against epsilon past the table (30,
100, then noise multipliers 0.1, 0.02 and 0.005, whose epsilon the RDP accountant reports) and the
smallest epsilon on it that meets the target; accuracy against private-set size (182, 364).

``--quick`` uses the shipped mini-sd as base, a 60-record private set and short runs: a
smoke test of the machinery, not a figure.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustgain.bench import Row, cache_root

DELTA = 1e-5
EPSILONS = (1.0, 4.0, 10.0)
# The accuracy-against-epsilon curve goes on past the table's epsilons to find where the
# target is met (the fallback when the private set is too small for epsilon 10).
# Past epsilon 100 the PRV accountant cannot size the noise (it ran 16 min and 10 GB for
# epsilon 1000 without an answer), so the curve's tail is set by noise multiplier instead and
# its epsilon is reported by the RDP accountant.
CURVE_EPSILONS = (30.0, 100.0)
CURVE_SIGMAS = (0.1, 0.02, 0.005)
TARGET_RATIO = 0.8
TARGET_COST = 3.0
# One recipe per trainable part, the same for every epsilon and without DP. C is about the
# median per-sample gradient norm of those weights (attention ~0.10 and LoRA ~0.04 on mini-sd,
# full UNet 0.54 on the 0-4 base), the usual DP-SGD choice (clip about half the samples).
RECIPES: dict[str, dict[str, Any]] = {
    "full": dict(trainable="full", train_tokens=True, batch_size=64, epochs=40, lr=5e-4,
                 max_grad_norm=0.5),
    # the same with noise multiplicity 4 (each record's loss averaged over 4 noise draws)
    "full-k4": dict(trainable="full", train_tokens=True, batch_size=64, epochs=40, lr=5e-4,
                    max_grad_norm=0.5, noise_multiplicity=4),
    "attention": dict(trainable="attention", batch_size=128, epochs=20, lr=1e-3,
                      max_grad_norm=0.1),
    "lora": dict(trainable="lora", train_tokens=True, lora_rank=8, batch_size=64, epochs=40,
                 lr=2e-3, max_grad_norm=0.1),
    "tokens": dict(trainable="none", train_tokens=True, batch_size=64, epochs=40, lr=5e-3,
                   max_grad_norm=0.05),
    "lora-b256": dict(trainable="lora", train_tokens=True, lora_rank=8, batch_size=256,
                      epochs=40, lr=5e-4, max_grad_norm=0.1),
}
# The utility table fine-tunes the full UNet and the word embeddings (``train_tokens``): the
# 0-4 base never saw the words for 5-9 (their embeddings are untrained, norm 0.13-0.16 vs
# 0.37-0.39; "a handwritten five"/"six" states have cosine 0.995), so UNet-only recipes could
# not learn 5-9 even without DP (attention 0.16, full UNet 0.20 on 50 samples, 2026-11-28).
UTILITY_TRAINABLES = ("full",)
QUICK = dict(trainable="attention", batch_size=20, epochs=2, lr=1e-3, max_grad_norm=0.1)
PROMPTS = ("a handwritten {w}", "the digit {d}", "a {d}", "the number {w}")


def cache_dir() -> Path:
    return cache_root("TRUSTGAIN_BENCH_CACHE", "privacy")


def settings(quick: bool, curve: bool = False) -> dict[str, float | None]:
    """Setting name -> target epsilon (None: no DP); ``curve`` adds CURVE_EPSILONS and the
    CURVE_SIGMAS settings (named ``sigma...``, valued by noise multiplier)."""
    eps = EPSILONS[-1:] if quick else EPSILONS + (CURVE_EPSILONS if curve else ())
    sigmas = {f"sigma{v:g}": v for v in CURVE_SIGMAS} if curve else {}
    return {"nodp": None} | {f"eps{e:g}": e for e in eps} | sigmas


def _dp_args(name: str, value: float | None) -> dict[str, Any]:
    if value is None:
        return dict(dp=False)
    if name.startswith("sigma"):
        return dict(dp=True, noise_multiplier=value, accountant="rdp")
    return dict(dp=True, target_epsilon=value, accountant="prv")


def _base(quick: bool, device: str = "cpu") -> Path:
    from trustgain.models import mini_sd_path
    from trustgain.privacy.finetune_public import public_model

    return mini_sd_path() if quick else public_model(cache_dir() / "public-0-4", device=device)


def prepare(name: str, trainable: str = "attention", quick: bool = False,
            device: str = "cpu", size: int | None = None) -> dict[str, Any]:
    """Fine-tune one setting into the cache (reused if there); returns its privacy.json.

    ``size``: fine-tune on a seeded subset of that many private records (the set-size curve).
    """
    from trustgain.privacy.finetune import finetune
    from trustgain.privacy.finetune_public import private_set

    dp_args = _dp_args(name, settings(quick, curve=True)[name])
    tail = f"-n{size}" if size else ""
    out = cache_dir() / ("quick" if quick else "full") / f"ft-{trainable}-{name}{tail}"
    if not (out / "privacy.json").is_file():
        images, captions, _ = private_set(limit=60 if quick else size)
        recipe = QUICK if quick else RECIPES[trainable]
        finetune(_base(quick, device), (images, captions), out, delta=DELTA,
                 progress=not quick, device=device, **dp_args, **recipe)
    return json.loads((out / "privacy.json").read_text()) | {"path": str(out)}


@torch.no_grad()
def judge_accuracy(model: str | Path, digits: tuple[int, ...], *, per_digit: int,
                   steps: int = 20, seed: int = 0, device: str = "cpu") -> float:
    """Share of samples prompted for ``digits`` that the judge names as prompted."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    from trustgain.models import load_judge
    from trustgain.models.data import WORDS
    from trustgain.models.judge import classify

    dlogging.set_verbosity_error()
    pipe = StableDiffusionPipeline.from_pretrained(str(model)).to(device)
    pipe.set_progress_bar_config(disable=True)
    judge = load_judge()
    prompts, want = [], []
    for d in digits:
        for i in range(per_digit):
            prompts.append(PROMPTS[i % len(PROMPTS)].format(w=WORDS[d], d=d))
            want.append(d)
    gen = torch.Generator().manual_seed(seed)
    preds = []
    for i in range(0, len(prompts), 50):
        out = pipe(prompts[i:i + 50], num_inference_steps=steps, guidance_scale=4.0,
                   generator=gen, output_type="np")
        preds.append(classify(judge, out.images)[0])
    return float((torch.cat(preds).numpy() == np.array(want)).mean())


def _setting(name: str, trainable: str, quick: bool, device: str, per_digit: int,
             size: int | None = None) -> tuple[float, Row]:
    """Fine-tune one setting (cached) and judge it on 5-9: (accuracy, its row)."""
    from trustgain.privacy.finetune_public import PRIVATE_DIGITS

    facts = prepare(name, trainable, quick, device, size)
    acc = judge_accuracy(facts["path"], PRIVATE_DIGITS, per_digit=per_digit, device=device)
    spent = "no DP" if not facts["dp"] else (
        f"eps={facts['epsilon']:.3g} ({facts['accountant']}) delta={DELTA:g} "
        f"sigma={facts['noise_multiplier']:.3g}")
    return acc, Row(
        metric=f"judge acc, {trainable} fine-tune {name} on 5-9, n={facts['n_records']}",
        value=acc,
        note=f"{spent}; q={facts['sample_rate']:.3g} steps={facts['steps']} "
             f"C={facts['max_grad_norm']:g} lr={facts['lr']:g}; "
             f"{per_digit * len(PRIVATE_DIGITS)} samples")


def _ratio_row(acc: dict[str, float], what: str, quick: bool = False) -> Row:
    top = f"eps{EPSILONS[-1]:g}"
    ratio = acc[top] / acc["nodp"] if acc["nodp"] > 0 else math.nan
    return Row(metric=f"acc ratio {top} / nodp, {what}", value=ratio,
               target=f">= {TARGET_RATIO}", ok=None if quick else bool(ratio >= TARGET_RATIO),
               note="quick: not a figure" if quick else "")


def utility_rows(quick: bool, device: str = "cpu") -> list[Row]:
    from trustgain.privacy.finetune_public import PRIVATE_DIGITS, PUBLIC_DIGITS

    per_digit = 4 if quick else 40
    base = _base(quick, device)
    basis = ("shipped mini-sd base (quick smoke test)" if quick else
             "public base: digits 0-4 only (shipped VAE + tokenizer)")
    rows = [Row(metric="judge acc, base on 5-9", value=judge_accuracy(
        base, PRIVATE_DIGITS, per_digit=per_digit, device=device), note=basis)]
    if not quick:
        rows.append(Row(metric="judge acc, base on 0-4", value=judge_accuracy(
            base, PUBLIC_DIGITS, per_digit=per_digit, device=device), note=basis))
    for trainable in ("attention",) if quick else UTILITY_TRAINABLES:
        acc: dict[str, float] = {}
        for name in settings(quick):
            acc[name], row = _setting(name, trainable, quick, device, per_digit)
            rows.append(row)
        rows.append(_ratio_row(acc, trainable, quick))
    return rows


SIZES = (182, 364)  # a quarter and a half of the 729 private records


def size_rows(device: str = "cpu", trainable: str = UTILITY_TRAINABLES[0]) -> list[Row]:
    """Accuracy against private-set size, without DP and at the largest epsilon (same recipe:
    the same epochs, so smaller sets take fewer steps; DP noise is calibrated per size)."""
    rows: list[Row] = []
    for size in SIZES:  # the full set (729) is the utility table's own row
        acc: dict[str, float] = {}
        for name in ("nodp", f"eps{EPSILONS[-1]:g}"):
            acc[name], row = _setting(name, trainable, False, device, 40, size)
            rows.append(row)
        rows.append(_ratio_row(acc, f"{trainable}, private set of {size}"))
    return rows


def curve_rows(device: str = "cpu", trainable: str = UTILITY_TRAINABLES[0]) -> list[Row]:
    """Accuracy against epsilon past the table (CURVE_EPSILONS, then CURVE_SIGMAS), each as a
    share of the non-private accuracy, and the smallest epsilon on the curve that meets the
    target (as spent by that setting's run)."""
    base, first = _setting("nodp", trainable, False, device, 40)
    rows: list[Row] = [first]
    met = None
    for name in list(settings(False, curve=True))[1:]:
        acc, row = _setting(name, trainable, False, device, 40)
        ratio = acc / base if base > 0 else math.nan
        row.note += f"; {ratio:.3f} of no-DP {base:.3f}"
        rows.append(row)
        if met is None and ratio >= TARGET_RATIO:
            met = prepare(name, trainable)["epsilon"]
    rows.append(Row(metric=f"smallest epsilon on the curve with acc >= {TARGET_RATIO:g} x no DP",
                    value=math.nan if met is None else met,
                    note=f"{trainable}, every private record; curve "
                         f"{', '.join(list(settings(False, curve=True))[1:])}"))
    return rows


def _step_setup(model: Any, trainable: str, batch: int, dp: bool) -> tuple[Any, Any, Any]:
    """A (module, optimizer, batch) ready for one step; DP through make_private."""
    from torch.utils.data import DataLoader, TensorDataset

    from trustgain.privacy import finetune_trainable as tr

    unet = model.train()
    params = [p for _, p in tr.select(unet, trainable)]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, unet.config.in_channels, unet.config.sample_size,
                    unet.config.sample_size, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    s = torch.randn(batch, 32, unet.config.cross_attention_dim, generator=gen)
    if dp:
        import warnings

        from opacus import PrivacyEngine

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant="prv")
        loader = DataLoader(TensorDataset(torch.arange(batch * 10)), batch_size=batch)
        unet, opt, _ = engine.make_private(module=unet, optimizer=opt, data_loader=loader,
                                           noise_multiplier=1.0, max_grad_norm=1.0)
    return unet, opt, (x, t, s)


def _one_step(unet: Any, opt: Any, batch: tuple[torch.Tensor, ...]) -> float:
    import warnings

    from trustgain.privacy.finetune import per_sample_mse

    x, t, s = batch
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = per_sample_mse(unet(x, t, s).sample, x).mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss.backward()
    opt.step()
    return time.perf_counter() - t0


def _load_unet(base: Path) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_child(base: str, trainable: str, batch: int, dp: bool, steps: int, q: Any) -> None:
    """Peak RSS during the steps, from /proc (Linux): VmHWM after resetting it.

    ``getrusage``'s ``ru_maxrss`` survives ``exec``, so a spawned child would report its
    parent's peak; VmHWM belongs to the new address space and is reset by writing 5 to
    ``/proc/self/clear_refs``.
    """
    torch.set_num_threads(1)
    unet, opt, b = _step_setup(_load_unet(Path(base)), trainable, batch, dp)
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(steps):
        _one_step(unet, opt, b)
    q.put((before, _status_kb("VmHWM")))


def peak_memory_mb(base: Path, trainable: str, batch: int, dp: bool, steps: int = 2,
                   ) -> tuple[float, float]:
    """(peak RSS during the steps, MB; its rise over the RSS before them, MB), fresh process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(str(base), trainable, batch, dp, steps, q))
    p.start()
    before, peak = q.get(timeout=1800)
    p.join()
    return peak / 1024, (peak - before) / 1024


def cost_rows(quick: bool) -> list[Row]:
    import copy

    from trustgain.models import mini_sd_path

    base = mini_sd_path()  # the weights do not matter for cost; the architecture does
    batch, reps = (16, 2) if quick else (64, 5)
    rows = []
    for trainable in ("attention",) if quick else ("full", "attention", "lora"):
        plain = _step_setup(_load_unet(base), trainable, batch, dp=False)
        private = _step_setup(copy.deepcopy(_load_unet(base)), trainable, batch, dp=True)
        _one_step(*plain), _one_step(*private)  # warm-up
        tp, td = [], []
        for _ in range(reps):  # interleaved: load on the shared machine hits both alike
            tp.append(_one_step(*plain))
            td.append(_one_step(*private))
        ratio = float(np.median(td) / np.median(tp))
        rows.append(Row(metric=f"DP/non-DP step time, {trainable}", value=ratio, unit="x",
                        target=f"< {TARGET_COST:g}", ok=None if quick else ratio < TARGET_COST,
                        note=f"median of {reps}: {np.median(td):.3f} s vs {np.median(tp):.3f}"
                             f" s, batch {batch}, CPU 1 thread, shared machine (load)"))
        if not quick:
            (pk_p, rise_p), (pk_d, rise_d) = (peak_memory_mb(base, trainable, batch, dp)
                                              for dp in (False, True))
            rows.append(Row(metric=f"peak RSS rise DP / non-DP, {trainable}",
                            value=rise_d / rise_p if rise_p > 0 else math.nan, unit="x",
                            note=f"rise over RSS before the steps: {rise_d:.0f} MB vs "
                                 f"{rise_p:.0f} MB; peak {pk_d:.0f} vs {pk_p:.0f} MB, "
                                 f"batch {batch}"))
    return rows


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    """Utility rows (training and sampling on ``device``), then cost rows (CPU, 1 thread)."""
    torch.set_num_threads(1)
    return utility_rows(quick, device) + cost_rows(quick)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m trustgain.bench.privacy_finetune")
    p.add_argument("--prepare", choices=sorted(settings(False, curve=True)), default=None,
                   help="fine-tune one setting into the cache (run several in parallel)")
    p.add_argument("--size", type=int, default=None,
                   help="with --prepare: a seeded subset of this many private records")
    p.add_argument("--trainable", choices=sorted(RECIPES), default="attention",
                   help="a recipe name (RECIPES)")
    p.add_argument("--public", action="store_true", help="train the public 0-4 model only")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", choices=["utility", "cost", "sizes", "curve"], default=None,
                   help="run one half of the area")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.public:
        print(_base(False, args.device))
    elif args.prepare:
        print(json.dumps(prepare(args.prepare, args.trainable, args.quick, args.device,
                                 args.size), indent=2))
    else:
        from trustgain.bench import format_table

        rows = (utility_rows(args.quick, args.device) if args.only == "utility" else
                cost_rows(args.quick) if args.only == "cost" else
                size_rows(args.device) if args.only == "sizes" else
                curve_rows(args.device) if args.only == "curve" else run(args.quick, args.device))
        print(format_table(rows))
        if args.json:
            args.json.write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
