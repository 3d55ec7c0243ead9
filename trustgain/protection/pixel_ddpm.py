"""Train a small pixel-space DDPM on a user's images, digits or natural 32x32 patches.

    python -m trustgain.protection.pixel_ddpm --data DIR|digits|patches -o OUT \
        [--size 32] [--steps N] [--batch 16] [--threads 1] [--force]

The model is a diffusers ``UNet2DModel`` (three resolution levels, no attention, ~0.6M
parameters at the default width) with a cosine-schedule ``DDPMScheduler``; both are written
with ``save_pretrained`` as a ``DDPMPipeline`` folder, so ``DDPMPipeline.from_pretrained(OUT)``
samples from it and :func:`load_ddpm` loads it for the ``ddpm`` protection mode and for
DiffPure-like purification (:mod:`trustgain.protection.ddpm`). An exponential moving average of
the weights (diffusers' ``EMAModel``) is what gets saved.

Training is resumable: every ``--checkpoint-every`` steps the weights, the EMA, the optimizer
and the random states are written atomically to ``OUT/.ddpm-checkpoint.pt``; a rerun with the
same ``-o`` continues from there. The finished model is written to a sibling temporary folder
and renamed into place, so an interrupted run never leaves a half-written model.

``--max-timestep`` restricts training to the first timesteps: the protection mode and the
purifier only use noise levels up to about 0.3 of the schedule, and a model trained on those
alone learns them several times faster on a CPU (it cannot generate from pure noise then; the
saved config records the limit).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trustgain.errors import InputError, OutputExistsError, TrustgainError
from trustgain.fileio import write_atomic

CHECKPOINT_NAME = ".ddpm-checkpoint.pt"
TRAINING_NAME = "training.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class PixelDDPM:
    """A loaded pixel DDPM: the noise predictor, the cumulative alphas and the training limit."""

    unet: Any  # diffusers.UNet2DModel, eval mode, no grad on its parameters
    alphas_cumprod: torch.Tensor  # (T,) float64
    max_timestep: int  # highest timestep seen in training (T - 1 for a full model)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def size(self) -> int:
        return int(self.unet.config.sample_size)


def build_unet(*, channels: int, size: int, width: int = 16) -> Any:
    """The small UNet: widths (w, 2w, 4w), one ResNet block per level, no attention."""
    from diffusers import UNet2DModel

    if size % 4:
        raise TrustgainError(f"--size must be a multiple of 4, got {size}")
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(width, 2 * width, 4 * width),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=8 if width % 8 == 0 else 4,
    )


def build_scheduler(num_train_timesteps: int = 1000) -> Any:
    """Cosine (squaredcos_cap_v2) DDPM schedule, epsilon prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps,
                         beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


def load_ddpm(path: str | Path, device: str = "cpu") -> PixelDDPM:
    """Load a folder written by :func:`train_ddpm` (or any DDPMPipeline folder with an
    epsilon-predicting ``UNet2DModel``)."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(path)
    if not (path / "unet").is_dir() or not (path / "scheduler").is_dir():
        raise InputError(f"{path} is not a DDPM folder (no unet/ and scheduler/)",
                         hint="train one with `python -m trustgain.protection.pixel_ddpm`")
    unet = UNet2DModel.from_pretrained(path / "unet").to(device).eval()
    unet.requires_grad_(False)
    sched = DDPMScheduler.from_pretrained(path / "scheduler")
    if sched.config.prediction_type != "epsilon":
        raise InputError(f"{path}: prediction_type {sched.config.prediction_type!r} is not "
                         "supported; the protection mode needs 'epsilon'")
    info = {}
    if (path / TRAINING_NAME).is_file():
        info = json.loads((path / TRAINING_NAME).read_text())
    acp = sched.alphas_cumprod.to(torch.float64)
    return PixelDDPM(unet, acp, int(info.get("max_timestep", len(acp) - 1)))


# ----------------------------------------------------------------------------------- data

def folder_images(folder: str | Path, *, size: int, channels: int, crops_per_image: int = 64,
                  seed: int = 0) -> np.ndarray:
    """Random ``size``x``size`` crops of every image under ``folder``: float32 (N, C, S, S) in
    [0, 1]. Images are first scaled so their short side is 4x ``size`` (large photos then give
    natural-looking patches rather than flat colour). Unreadable files are refused with a
    reason; a folder with no readable image is an error."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder", hint="pass --data DIR, digits or patches")
    rng = np.random.default_rng(seed)
    mode = "L" if channels == 1 else "RGB"
    out = []
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
        except (OSError, UnidentifiedImageError) as exc:
            print(f"skipping {p}: {exc}", file=sys.stderr)
            continue
        scale = 4 * size / min(im.size)
        if scale < 1:
            new = (max(size, round(im.width * scale)), max(size, round(im.height * scale)))
            im = im.resize(new, Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        if arr.ndim == 2:
            arr = arr[:, :, None]
        h, w = arr.shape[:2]
        if h < size or w < size:
            print(f"skipping {p}: smaller than {size}x{size}", file=sys.stderr)
            continue
        ys = rng.integers(0, h - size + 1, crops_per_image)
        xs = rng.integers(0, w - size + 1, crops_per_image)
        out += [arr[y:y + size, x:x + size].transpose(2, 0, 1) for y, x in zip(ys, xs, strict=True)]
    if not out:
        raise InputError(f"no readable image of at least {size}x{size} under {folder}")
    return np.stack(out).astype(np.float32)


def digits_images(size: int = 32) -> np.ndarray:
    """The digits' fixed train split (trustgain.models.data), upsampled ink maps (N,1,S,S)."""
    from trustgain.models.data import load_split, upsample

    images, _ = load_split("train")
    x = upsample(images)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.numpy()


def named_images(data: str, *, size: int, channels: int) -> np.ndarray:
    """``digits``, ``patches`` (natural 32x32 training patches) or a folder."""
    if data == "digits":
        if channels != 1:
            raise TrustgainError("the digits domain is grey: use --channels 1")
        return digits_images(size)
    if data == "patches":
        from trustgain.protection.patches import load

        if size != 32:
            raise TrustgainError("natural patches are 32x32: use --size 32")
        imgs, _, _ = load("train", 400)
        x = imgs.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return x if channels == 3 else x.mean(1, keepdims=True)
    return folder_images(data, size=size, channels=channels)


# ------------------------------------------------------------------------------- training

def _checkpoint_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def train_ddpm(
    images: np.ndarray | torch.Tensor,
    out: str | Path,
    *,
    steps: int = 3000,
    batch: int = 16,
    lr: float = 2e-3,
    width: int = 16,
    max_timestep: int | None = None,
    num_train_timesteps: int = 1000,
    seed: int = 0,
    checkpoint_every: int = 200,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train on ``images`` (N, C, S, S) in [0, 1] and save a DDPMPipeline folder at ``out``.

    Resumes from ``out/.ddpm-checkpoint.pt`` when present (``steps`` may differ from the
    interrupted run's: the learning-rate schedule follows the new total). Random horizontal
    flips augment the data. ``stop_after`` stops (after checkpointing) at that step without
    saving the model: used by the resume test. Returns ``out``.
    """
    from diffusers import DDPMPipeline
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    from trustgain.models.train import atomic_dir

    out = Path(out)
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise InputError(f"expected square images (N, C, S, S), got {tuple(x.shape)}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise InputError("images must be in [0, 1]")
    if (out / "unet").exists() and not overwrite:
        raise OutputExistsError(out)
    t_max = num_train_timesteps - 1 if max_timestep is None else int(max_timestep)
    if not 0 < t_max < num_train_timesteps:
        raise TrustgainError(f"max_timestep must be in 1..{num_train_timesteps - 1}")
    n, c, s, _ = x.shape
    torch.manual_seed(seed)
    unet = build_unet(channels=c, size=s, width=width)
    sched = build_scheduler(num_train_timesteps)
    ema = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    lr_at = lambda i: lr * min(1.0, (i + 1) / 100) * (0.1 + 0.9 * (1 - i / steps))  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    start = 0
    ckpt = out / CHECKPOINT_NAME
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        if state["shape"] != [c, s] or state["step"] >= steps:
            raise TrustgainError(f"{ckpt} is from a different run (image shape differs or it "
                                 "is already past --steps)", hint="delete it or choose another -o")
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["gen"])
        torch.set_rng_state(state["torch"])
        start = state["step"]
    acp = sched.alphas_cumprod.float()
    t0 = time.time()
    unet.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="ddpm", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    for i in bar:
        idx = torch.randint(0, n, (batch,), generator=g)
        x0 = x[idx] * 2 - 1
        flip = torch.rand(batch, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, t_max + 1, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = acp[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t).sample, noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        done = i + 1
        if done % checkpoint_every == 0 or done in (steps, stop_after):
            state = {"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "gen": g.get_state(), "torch": torch.get_rng_state(), "step": done,
                     "shape": [c, s], "steps": steps}
            write_atomic(ckpt, _checkpoint_bytes(state), overwrite=True)
        if done == stop_after:
            bar.close()
            return out
    bar.close()
    ema.copy_to(unet.parameters())
    unet.eval()
    info = {"steps": steps, "batch": batch, "lr": lr, "width": width, "seed": seed,
            "images": n, "channels": c, "size": s, "max_timestep": t_max,
            "seconds_this_run": round(time.time() - t0, 1),
            "threads": torch.get_num_threads(), "torch": torch.__version__}

    def write(tmp: Path) -> None:
        DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp)
        (tmp / TRAINING_NAME).write_text(json.dumps(info, indent=2) + "\n")
        if ckpt.is_file():
            ckpt.replace(tmp / CHECKPOINT_NAME)

    atomic_dir(out, write)
    (out / CHECKPOINT_NAME).unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trustgain.protection.pixel_ddpm",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="image folder, 'digits' or 'patches'")
    p.add_argument("-o", "--out", required=True, help="output folder (DDPMPipeline layout)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="1 (grey) or 3 (RGB) [default: 1 for digits, else 3]")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--max-timestep", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--force", action="store_true", help="replace an existing model at -o")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    channels = args.channels or (1 if args.data == "digits" else 3)
    try:
        images = named_images(args.data, size=args.size, channels=channels)
        out = train_ddpm(images, args.out, steps=args.steps, batch=args.batch, lr=args.lr,
                         width=args.width, max_timestep=args.max_timestep, seed=args.seed,
                         overwrite=args.force, progress=not args.no_progress)
    except TrustgainError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 1
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
