r"""Reproducible training of the embedded models.

    python -m trustgain.models.train mini-sd [--steps N] [--device cpu|cuda] [--out DIR]
    python -m trustgain.models.train judge   [--steps N] [--device cpu|cuda] [--out DIR]

Without ``--out`` the model is written over the shipped folder inside the package, which
exists, so that (like any existing non-empty ``--out``, or a file there) needs ``--force``.

A variant with 4x16x16 latents, on a CPU in about 75 minutes (a new VAE, then the shipped
text encoder and UNet fine-tuned on its latents; BENCHMARKS.md, latent mark, tenth pass):

    python -m trustgain.models.train mini-sd --latent-factor 2 --steps 0 --out VAE_DIR
    python -m trustgain.models.train mini-sd --vae-from VAE_DIR --unet-from trustgain-mini-sd \
        --copies 10 --batch 64 --lr 0.0003 --warmup 50 --steps 100000 --max-minutes 40 --out DIR

Seeds, the data split and the augmentations are fixed (see ``data``), so a rerun on the same
hardware and library versions reproduces the shipped weights up to floating-point
non-determinism. Output is written to a temporary folder beside ``--out`` and renamed into
place, so an interrupted run never leaves a half-written model in the package; the output
is checked before training starts, not after. Needs scikit-learn (the digits) and
tokenizers (the BPE merges); loading the results needs neither.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from trustgain.argtypes import CAP, COUNT, RATE, run_command
from trustgain.devices import device_problem
from trustgain.errors import TrustgainError
from trustgain.fileio import occupied, write_atomic, write_folder

from . import data

HERE = Path(__file__).resolve().parent
JUDGE_STEPS = 1500
# options that only mean something for mini-sd (their argparse dest names)
MINI_SD_ONLY = ("vae_steps", "copies", "batch", "lr", "max_minutes", "vae_from", "warmup",
                "unet_from")


def atomic_dir(out: Path, write, replace: bool = True) -> Path:
    """Call ``write(tmp)`` on a fresh sibling folder of ``out``, then swap it into place
    (:func:`trustgain.fileio.write_folder`; ``replace=False`` keeps whatever appeared at
    ``out`` meanwhile and leaves the new folder beside it)."""
    return write_folder(out, write, replace=replace)


def check_out(out: Path, force: bool, shipped: bool = False) -> Path:
    """``out`` resolved, once it is safe to write there; a one-line TrustgainError if not.

    An existing file or non-empty folder needs ``force``; a folder holding the current
    folder, the package or the home folder is never replaced; a file among the parents
    cannot hold a folder. ``shipped``: ``out`` is the package's own model (no ``--out``).
    """
    out = Path(out).expanduser()
    resolved = out.resolve()
    guarded = {Path.cwd().resolve(), HERE}
    with contextlib.suppress(RuntimeError):  # no home folder known
        guarded.add(Path.home().resolve())
    if resolved in guarded or any(g.is_relative_to(resolved) for g in guarded):
        raise TrustgainError(f"refusing to replace {out}: it holds the current folder, the "
                             "home folder or the trustgain package; choose another --out")
    blocker = next((p for p in resolved.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise TrustgainError(f"cannot write {out}: {blocker} is a file, not a folder")
    if occupied(resolved) and not force:
        what = "the shipped model " if shipped else ""
        extra = " (or give --out DIR)" if shipped else ""
        raise TrustgainError(f"{what}{out} exists; pass --force to replace it{extra}")
    return resolved


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"), overwrite=True)


def _public_modes(folder: Path) -> None:
    """Weights are not secrets: every file 0644 (safetensors' save_file writes 0600)."""
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            p.chmod(0o644)


def hardware(device: str) -> str:
    """One line naming where training ran."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    threads = torch.get_num_threads()
    return f"CPU {platform.processor() or platform.machine()}, {threads} threads " \
           f"(torch {torch.__version__})"


def judge_batch(ink: torch.Tensor, labels: np.ndarray, batch: int, rng: np.random.Generator,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Half plain scans (centred, white), half full augmentation; ink maps in [0, 1].

    Random ink strength, a mild blur and pixel noise make the judge tolerant of the softer
    pictures a VAE decodes; none of this changes which digit an image shows.
    """
    idx = torch.from_numpy(rng.integers(0, len(ink), batch)).to(ink.device)
    looks = data.draw_looks(batch, rng)
    plain = data.Look("normal", "", "", "normal", "white")
    looks = [plain if i < batch // 2 else lk for i, lk in enumerate(looks)]
    rgb = (data.render(ink[idx], looks, rng) + 1) / 2
    x = rgb.amax(dim=1, keepdim=True)
    dev = ink.device
    x = x * torch.from_numpy(rng.uniform(0.6, 1.0, (batch, 1, 1, 1)).astype(np.float32)).to(dev)
    blur = torch.from_numpy(rng.random(batch) < 0.3).to(dev)
    x = torch.where(blur[:, None, None, None], F.avg_pool2d(x, 3, 1, 1), x)
    x = x + 0.03 * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32)).to(dev)
    return x.clamp(0, 1), torch.as_tensor(labels)[idx.cpu()].to(dev)


def train_judge(steps: int, device: str, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Train the digits judge on the train split; returns (model, log with test accuracy)."""
    from .judge import DigitsJudge, classify

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 10)
    images, labels = data.load_split("train")
    ink = data.upsample(images).to(device)
    model = DigitsJudge().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps,
                                                pct_start=0.1)
    t0 = time.time()
    bar = tqdm(range(steps), desc="judge", mininterval=2.0)
    for _ in bar:
        x, y = judge_batch(ink, labels, 128, rng)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model = model.cpu().eval()
    test_x, test_y = data.load_split("test")
    pred, _ = classify(model, data.upsample(test_x))
    log = {"steps": steps, "seconds": round(time.time() - t0, 1),
           "test_accuracy": round(float((pred.numpy() == test_y).mean()), 4),
           "n_test": len(test_y)}
    return model, log


def _run_judge(args: argparse.Namespace) -> None:
    from .cards import judge_card

    steps = JUDGE_STEPS if args.steps is None else args.steps
    shipped = not args.out
    out = HERE / "trustgain-digits-judge" if shipped else Path(args.out)
    out = check_out(out, args.force, shipped)
    model, log = train_judge(steps, args.device, args.seed)
    log.update(hardware=hardware(args.device), command=_command(args, steps))

    def write(tmp: Path) -> None:
        model.save(tmp)
        _write_text(tmp / "training.json", json.dumps(log, indent=2) + "\n")
        _write_text(tmp / "README.md", judge_card(log, None))
        _public_modes(tmp)
    atomic_dir(out, write, replace=args.force)
    print(json.dumps(log, indent=2))
    print(f"judge written to {out}")


def _run_mini_sd(args: argparse.Namespace) -> None:
    from . import MINI_SD_ID, mini_sd_path
    from .build import write_vocab_files
    from .cards import mini_sd_card
    from .train_sd import SDRecipe, train_mini_sd

    recipe = SDRecipe(seed=args.seed)
    if args.steps is not None:
        recipe.steps = args.steps
    if args.vae_steps is not None:
        recipe.vae_steps = args.vae_steps
    if args.copies is not None:
        recipe.copies = args.copies
    if args.batch is not None:
        recipe.batch = args.batch
    if args.lr is not None:
        recipe.lr = args.lr
    if args.warmup is not None:
        recipe.warmup = args.warmup
    recipe.max_minutes = args.max_minutes
    if args.unet_from and not args.out:
        raise SystemExit("error: --unet-from makes a new model and needs --out DIR (the "
                         "shipped trustgain-mini-sd is never overwritten by a fine-tune)")
    if args.unet_from == MINI_SD_ID and not Path(args.unet_from).exists():
        args.unet_from = str(mini_sd_path())  # the shipped model, by its id
    if args.unet_from and not Path(args.unet_from, "unet").is_dir():
        raise SystemExit(f"error: --unet-from {args.unet_from}: no unet/ folder there")
    recipe.unet_from = args.unet_from
    if args.latent_factor != 4 and (args.vae_from or not args.out):
        raise SystemExit("error: --latent-factor 2 trains a new VAE and needs --out DIR (the "
                         "shipped trustgain-mini-sd keeps factor 4); drop --vae-from")
    if args.vae_from and not Path(args.vae_from, "vae", "config.json").is_file():
        raise SystemExit(f"error: --vae-from {args.vae_from}: no vae/config.json there")
    if args.vae_from and not args.out:
        cfg_path = Path(args.vae_from, "vae", "config.json")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SystemExit(f"error: --vae-from {args.vae_from}: cannot read {cfg_path}: "
                             f"{exc}") from None
        if not isinstance(cfg, dict) or len(cfg.get("block_out_channels", ())) != 3:
            raise SystemExit(f"error: the VAE of {args.vae_from} is not the shipped factor 4; "
                             "give --out DIR")
    recipe.latent_factor = args.latent_factor
    shipped = not args.out
    out = HERE / "trustgain-mini-sd" if shipped else Path(args.out)
    out = check_out(out, args.force, shipped)
    pipe = train_mini_sd(recipe, args.device, args.vae_from)
    log = dict(recipe.log, hardware=hardware(args.device), command=_command(args, None),
               recipe={k: v for k, v in vars(recipe).items() if k != "log"})

    def write(tmp: Path) -> None:
        # UNet and VAE are stored in float16 to halve the files; from_pretrained loads them
        # as float32 by default. The text encoder stays float32 (it is tiny).
        pipe.unet.to(torch.float16)
        pipe.vae.to(torch.float16)
        pipe.save_pretrained(tmp, safe_serialization=True)
        write_vocab_files(tmp / "tokenizer")
        pipe.unet.to(torch.float32)
        pipe.vae.to(torch.float32)
        _write_text(tmp / "training.json", json.dumps(log, indent=2) + "\n")
        _write_text(tmp / "README.md", mini_sd_card(log, None))
        _public_modes(tmp)
    had_detector = (out / "vae_detector").is_dir()
    atomic_dir(out, write, replace=args.force)
    print(json.dumps(log, indent=2))
    print(f"mini-sd written to {out}")
    if had_detector:  # tuned for the replaced weights; kept, it would quietly weaken detection
        print(f"note: the replaced folder's vae_detector/ (tuned for the old weights) was not "
              f"kept; retrain it: python -m trustgain.watermark.detector_train --model {out} "
              f"-o {out / 'vae_detector'}")


def _command(args: argparse.Namespace, steps: int | None) -> str:
    parts = ["python -m trustgain.models.train", args.model, f"--device {args.device}"]
    if steps is not None or args.steps is not None:
        parts.append(f"--steps {steps if steps is not None else args.steps}")
    if getattr(args, "latent_factor", 4) != 4:
        parts.append(f"--latent-factor {args.latent_factor}")
    for name in ("vae_steps", "copies", "batch", "lr", "warmup", "max_minutes", "vae_from",
                 "unet_from"):
        if getattr(args, name, None) is not None:
            parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: a known error (bad input, an output that exists, a failed
    write) or Ctrl-C ends as one line on stderr and a non-zero exit (SystemExit)."""
    p = argparse.ArgumentParser(prog="python -m trustgain.models.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["mini-sd", "judge"])
    p.add_argument("--steps", type=CAP, default=None,
                   help="optimizer steps (mini-sd: UNet steps, default 1800, 0 trains the VAE "
                        "only; judge: 1500, at least 1)")
    p.add_argument("--vae-steps", type=COUNT, default=None,
                   help="mini-sd VAE steps (1500)")
    p.add_argument("--copies", type=COUNT, default=None,
                   help="mini-sd: augmented renderings per train scan (30)")
    p.add_argument("--batch", type=COUNT, default=None,
                   help="mini-sd: UNet batch size (512)")
    p.add_argument("--lr", type=RATE, default=None,
                   help="mini-sd: UNet learning rate (7e-4)")
    p.add_argument("--max-minutes", type=RATE, default=None,
                   help="mini-sd: stop the UNet loop after this long (steps done are logged)")
    p.add_argument("--vae-from", default=None,
                   help="mini-sd: reuse tokenizer and VAE of this mini-sd folder")
    p.add_argument("--warmup", type=CAP, default=None,
                   help="mini-sd: UNet learning-rate warm-up steps (300; 0: none)")
    p.add_argument("--unet-from", default=None,
                   help="mini-sd: fine-tune the tokenizer, text encoder and UNet of this mini-sd "
                        "folder instead of training them from scratch (needs --out)")
    p.add_argument("--latent-factor", type=int, choices=(4, 2), default=4,
                   help="mini-sd: VAE down-sampling, 4 (4x8x8 latents, shipped) or 2 (4x16x16)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--out", default=None,
                   help="output folder (default: the package's shipped model, which then "
                        "needs --force)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out (a file or a non-empty folder)")
    p.add_argument("--seed", type=CAP, default=0)
    args = p.parse_args(argv)
    if args.model == "judge":
        given = [n for n in MINI_SD_ONLY if getattr(args, n) is not None]
        if args.latent_factor != 4:
            given.append("latent_factor")
        if given:
            p.error("for mini-sd only, not judge: "
                    + ", ".join("--" + n.replace("_", "-") for n in given))
        if args.steps == 0:
            p.error("argument --steps: the judge needs at least 1 step")
    if args.out is not None and not args.out.strip():
        p.error("--out: empty path")
    problem = device_problem(args.device)
    if problem:
        p.error(f"--device {problem}")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    code = run_command(lambda: (_run_judge if args.model == "judge" else _run_mini_sd)(args))
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
