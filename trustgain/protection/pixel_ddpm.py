r"""Train a small pixel-space DDPM on a user's images, digits or natural 32x32 patches.

    python -m trustgain.protection.pixel_ddpm --data DIR|digits|patches -o OUT \
        [--size 32] [--steps N] [--batch 16] [--lr 2e-3] [--width 16] [--max-timestep T] \
        [--checkpoint-every 200] [--device cpu] [--threads 1] [--force]

The model is a diffusers ``UNet2DModel`` (three resolution levels, no attention, ~0.6M
parameters at the default width) with a cosine-schedule ``DDPMScheduler``; both are written
with ``save_pretrained`` as a ``DDPMPipeline`` folder, so ``DDPMPipeline.from_pretrained(OUT)``
samples from it and :func:`load_ddpm` loads it for the ``ddpm`` protection mode and for
DiffPure-like purification (:mod:`trustgain.protection.ddpm`). An exponential moving average of
the weights (diffusers' ``EMAModel``) is what gets saved.

Training is resumable: every ``--checkpoint-every`` steps the weights, the EMA, the optimizer,
the random states and the training settings are written atomically to
``OUT/.ddpm-checkpoint.pt``; a rerun with the same ``-o`` and the same settings (``--steps``
may differ) continues from there, and one with different settings (``--width``, ``--lr``,
other data, ...) is refused, naming them. ``--force`` starts over. The finished model is
written to a sibling temporary folder and renamed into place, so an interrupted run never
leaves a half-written model.

``-o`` must be new, empty, a folder this command wrote (a model, which needs ``--force`` to be
replaced, or an interrupted run's checkpoint) or, with ``--force``, another folder to replace.
A folder holding the training data, the current folder or the home folder is never replaced.
The output is checked (writable, not in the way) before any data loads. Training that
diverges (a loss or weight that is not finite) stops with an error and writes no model.

Folder data: 8-bit images, and 16-bit grayscale ones (scaled to [0, 1] at full precision);
32-bit integer and float images are skipped with the reason (convert them first).

``--max-timestep`` restricts training to the first timesteps: the protection mode and the
purifier only use noise levels up to about 0.3 of the schedule, and a model trained on those
alone learns them several times faster on a CPU (it cannot generate from pure noise then; the
saved config records the limit).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trustgain.devices import device_problem
from trustgain.errors import InputError, OutputExistsError, OutputWriteError, TrustgainError
from trustgain.fileio import write_atomic

CHECKPOINT_NAME = ".ddpm-checkpoint.pt"
TRAINING_NAME = "training.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# what a finished model folder holds (DDPMPipeline.save_pretrained plus training.json)
MODEL_ENTRIES = {"unet", "scheduler", "model_index.json", TRAINING_NAME}
# settings a resumed run must share with its checkpoint, and the option that sets each
RESUME_SETTINGS = {"channels": "--channels", "size": "--size", "width": "--width", "lr": "--lr",
                   "batch": "--batch", "seed": "--seed", "max_timestep": "--max-timestep",
                   "num_train_timesteps": "the schedule length", "data": "--data"}
PACKAGE = Path(__file__).resolve().parents[1]


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
    """The small UNet: widths (w, 2w, 4w), one ResNet block per level, no attention.

    ``size`` must be a positive multiple of 4 (two halvings), ``width`` a positive multiple of
    4 (group norm uses 8 groups when ``width`` is a multiple of 8, else 4)."""
    from diffusers import UNet2DModel

    if size < 4 or size % 4:
        raise TrustgainError(f"size must be a positive multiple of 4, got {size}")
    if width < 4 or width % 4:
        raise TrustgainError(f"width must be a positive multiple of 4, got {width}")
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

# 16-bit grayscale (Pillow opens such a PNG as I;16, an older Pillow as I) is read at full
# precision, 65535 -> 1.0; 32-bit integer and float images are skipped with the reason (as the
# protection inputs refuse them: the conversion is the user's choice).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
REFUSED_MODES = {
    "I": "32-bit integer image: convert it to 8 or 16 bits first",
    "F": "32-bit float image: convert it to 8 or 16 bits first",
}


def image_files(folder: str | Path) -> list[Path]:
    """The files under ``folder`` (recursively) with an image suffix, sorted."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _training_image(path: Path, mode: str) -> Any:
    """``path`` as an 8-bit ``mode`` ('L' or 'RGB') image, or as a float ('F') grey image in
    [0, 1] when it is 16-bit; :class:`InputError` (the reason) for 32-bit images."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in SIXTEEN_BIT_MODES or (im.mode == "I" and im.format == "PNG"):
            return Image.fromarray(np.asarray(im).astype(np.float32) / 65535.0)
        if im.mode in REFUSED_MODES:
            raise InputError(REFUSED_MODES[im.mode])
        return im.convert(mode)


def folder_images(folder: str | Path, *, size: int, channels: int, crops_per_image: int = 64,
                  seed: int = 0) -> np.ndarray:
    """Random ``size``x``size`` crops of every image under ``folder``: float32 (N, C, S, S) in
    [0, 1]. Images are first scaled so their short side is 4x ``size`` (large photos then give
    natural-looking patches rather than flat colour). 16-bit grayscale images are read at full
    precision. Unreadable files and 32-bit images are skipped with a reason on stderr; a folder
    with no readable image is an error."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder", hint="pass --data DIR, digits or patches")
    rng = np.random.default_rng(seed)
    mode = "L" if channels == 1 else "RGB"
    out = []
    for p in image_files(folder):
        try:
            im = _training_image(p, mode)
        except InputError as exc:
            print(f"skipping {p}: {exc}", file=sys.stderr)
            continue
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            print(f"skipping {p}: {exc}", file=sys.stderr)  # UnidentifiedImageError is an OSError
            continue
        scale = 4 * size / min(im.size)
        if scale < 1:
            new = (max(size, round(im.width * scale)), max(size, round(im.height * scale)))
            im = im.resize(new, Image.BICUBIC)
        if im.mode == "F":  # 16-bit grey, already in [0, 1]; bicubic may overshoot a little
            arr = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        else:
            arr = np.asarray(im, dtype=np.float32) / 255.0
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.shape[2] != channels:
            arr = np.repeat(arr, channels, axis=2)
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


def data_paths(data: str) -> list[Path]:
    """The files and folders ``data`` (as :func:`named_images` takes it) is read from: an output
    folder must never hold one of them."""
    if data == "digits":
        return []
    if data == "patches":
        from trustgain.protection.patches import photos_dir

        folder = photos_dir()
        return [] if folder is None else [folder]
    folder = Path(data).expanduser()
    return [folder, *image_files(folder)] if folder.is_dir() else [folder]


# --------------------------------------------------------------------------------- output

def _ours(name: str) -> bool:
    """A name this command writes into ``-o``: the model, the checkpoint, or a checkpoint's
    temporary file left by a killed run (fileio.write_atomic names them ``.NAME.*.tmp``)."""
    return (name in MODEL_ENTRIES or name == CHECKPOINT_NAME
            or (name.startswith(f".{CHECKPOINT_NAME}.") and name.endswith(".tmp")))


class OutputInUseError(OutputExistsError):
    """``-o`` is a non-empty folder this command did not write (``overwrite`` replaces it)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        TrustgainError.__init__(self, message, hint=hint)


def check_output(out: str | Path, *, overwrite: bool = False,
                 data_paths: Iterable[str | Path] = ()) -> Path:
    """``out`` resolved, once it is safe for :func:`train_ddpm` to write there, else a
    one-line :class:`TrustgainError`. Checked before any training (and before the data loads,
    from the command line):

    * never replaced, even with ``overwrite``: a folder that is or holds one of
      ``data_paths``, the current folder, the home folder or the trustgain package; a file;
    * a finished model needs ``overwrite`` (:class:`OutputExistsError`), and so does any other
      non-empty folder except one holding only an interrupted run's checkpoint
      (:class:`OutputInUseError`);
    * ``out`` (when it exists) and the folder beside it must be writable: a read-only ``-o``
      fails now, not at the first checkpoint (:class:`OutputWriteError`).
    """
    if not str(out).strip():
        raise TrustgainError("the output path is empty")
    given = Path(out).expanduser()
    try:
        return _check_output(given, overwrite, data_paths)
    except OSError as exc:  # e.g. a parent that cannot be searched
        if isinstance(exc, TrustgainError):
            raise
        raise OutputWriteError(given, exc) from None


def _check_output(given: Path, overwrite: bool, data_paths: Iterable[str | Path]) -> Path:
    resolved = given.resolve()
    guarded = {Path.cwd().resolve(), PACKAGE}
    with contextlib.suppress(RuntimeError):  # no home folder known
        guarded.add(Path.home().resolve())
    if any(g.is_relative_to(resolved) for g in guarded):
        raise TrustgainError(f"refusing to replace {given}: it holds the current folder, the "
                             "home folder or the trustgain package",
                             hint="choose a new or empty output folder")
    for path in data_paths:
        path = Path(path).expanduser().resolve()
        if path.is_relative_to(resolved):
            raise TrustgainError(f"refusing to replace {given}: it holds the training data "
                                 f"({path})", hint="choose an output folder outside the data")
    blocker = next((p for p in resolved.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise TrustgainError(f"cannot write {given}: {blocker} is a file, not a folder")
    if resolved.exists() and not resolved.is_dir():
        raise TrustgainError(f"{given} is a file, not a folder",
                             hint="choose a new or empty output folder")
    if resolved.is_dir():
        try:
            names = {entry.name for entry in os.scandir(resolved)}
        except OSError as exc:
            raise OutputWriteError(given, exc) from None
        if not overwrite and any(not _ours(name) for name in names):
            raise OutputInUseError(
                f"{given} is not empty and holds no pixel_ddpm model or checkpoint; the model "
                "would replace everything in it",
                hint="choose a new or empty folder, or pass overwrite=True to replace it")
        if not overwrite and names & MODEL_ENTRIES:
            raise OutputExistsError(given)
    # the checkpoint goes into out, the finished model into a folder beside it
    nearest = next(p for p in (resolved.parent, *resolved.parent.parents) if p.exists())
    for folder in ([resolved] if resolved.is_dir() else []) + [nearest]:
        try:
            fd, probe = tempfile.mkstemp(prefix=".pixel_ddpm-probe.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputWriteError(given, exc) from None
    return resolved


def _write_folder(out: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a new folder beside ``out`` and rename it into place; the old
    ``out``, if any, is removed only once the new one is there (and put back if the swap
    fails). A failed write raises :class:`OutputWriteError` naming ``out``."""
    token = secrets.token_hex(4)
    tmp = out.parent / f".{out.name}.{token}.tmp"
    old = out.parent / f".{out.name}.{token}.old"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise OutputWriteError(out, exc) from None
    try:
        write(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException as exc:
        if old.exists() and not out.exists():
            with contextlib.suppress(OSError):
                old.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, TrustgainError):
            raise OutputWriteError(out, exc) from None
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------- training

def _checkpoint_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _digest(x: torch.Tensor) -> str:
    """sha256 of the training array (shape and float32 bytes): same data, same digest."""
    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    h.update(x.contiguous().numpy().tobytes())
    return h.hexdigest()


def _finite(*tensor_lists: Iterable[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for ts in tensor_lists for t in ts)


def _diverged(step: int, why: str, lr: float, ckpt: Path) -> TrustgainError:
    keep = (f", and pass overwrite=True to discard the checkpoint at {ckpt}"
            if ckpt.is_file() else "")
    return TrustgainError(f"training diverged at step {step} ({why}); no model was written",
                          hint=f"start over with a learning rate below {lr:g}{keep}")


def _load_checkpoint(ckpt: Path) -> dict[str, Any]:
    start_over = "pass overwrite=True to start over"
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or corrupt: many exception types
        raise TrustgainError(f"{ckpt} is not a readable checkpoint ({type(exc).__name__})",
                             hint=start_over) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise TrustgainError(f"{ckpt} is not a pixel_ddpm checkpoint", hint=start_over)
    return state


def _check_resume(state: dict[str, Any], settings: dict[str, Any], steps: int,
                  ckpt: Path) -> None:
    """Refuse a checkpoint written with other settings, naming each that differs."""
    start_over = "pass overwrite=True to start over"
    saved = state.get("settings")
    if isinstance(saved, dict):
        differ = []
        for key, flag in RESUME_SETTINGS.items():
            if saved.get(key) == settings[key]:
                continue
            if key == "data":
                differ.append("the training data (--data: other images or crops)")
            else:
                differ.append(f"{flag} {saved.get(key)} (this run: {settings[key]})")
        if differ:
            raise TrustgainError(f"{ckpt} was written with other settings: " + "; ".join(differ),
                                 hint=f"rerun with the checkpoint's settings to resume, or "
                                      f"{start_over}")
    elif state.get("shape") != [settings["channels"], settings["size"]]:  # an older checkpoint
        raise TrustgainError(f"{ckpt} is from a run with another image shape "
                             f"({state.get('shape')})", hint=start_over)
    if state["step"] > steps:
        raise TrustgainError(f"{ckpt} is already at step {state['step']}, past the {steps} "
                             "steps asked for",
                             hint=f"ask for more steps to continue it, or {start_over}")


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
    device: str = "cpu",
    data_paths: Iterable[str | Path] = (),
) -> Path:
    """Train on ``images`` (N, C, S, S) in [0, 1] and save a DDPMPipeline folder at ``out``.

    ``out`` is checked first (:func:`check_output`; ``data_paths``: the files and folders the
    images came from, which ``out`` may never hold). Resumes from ``out/.ddpm-checkpoint.pt``
    when present and written with the same settings (width, size, channels, lr, batch, seed,
    max_timestep and the data itself; ``steps`` may differ from the interrupted run's: the
    learning-rate schedule follows the new total); other settings are refused, naming them.
    ``overwrite`` replaces an existing model or folder and starts over (an old checkpoint is
    discarded). Random horizontal flips augment the data. A loss or weight that is not finite
    stops training with a :class:`TrustgainError` and no model is written. ``stop_after``
    stops (after checkpointing) at that step without saving the model: used by the resume
    test. Returns ``out``.
    """
    from diffusers import DDPMPipeline
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    for name, value in (("steps", steps), ("batch", batch), ("checkpoint_every", checkpoint_every),
                        ("num_train_timesteps", num_train_timesteps), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrustgainError(f"{name} must be a whole number of at least 1, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) \
            or lr <= 0:
        raise TrustgainError(f"lr must be a finite number above 0, got {lr!r}")
    if problem := device_problem(str(device)):
        raise TrustgainError(f"device {problem}")
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise InputError(f"expected square images (N, C, S, S), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError("no images to train on")
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise InputError("images must be in [0, 1]")
    t_max = num_train_timesteps - 1 if max_timestep is None else int(max_timestep)
    if not 0 < t_max < num_train_timesteps:
        raise TrustgainError(f"max_timestep must be in 1..{num_train_timesteps - 1}")
    n, c, s, _ = x.shape
    if s < 4 or s % 4:  # as build_unet does, but before the output is checked
        raise TrustgainError(f"size must be a positive multiple of 4, got {s}")
    if width % 4:
        raise TrustgainError(f"width must be a positive multiple of 4, got {width}")
    where = check_output(out, overwrite=overwrite, data_paths=data_paths)
    settings = {"channels": c, "size": s, "width": width, "lr": float(lr), "batch": batch,
                "seed": int(seed), "max_timestep": t_max,
                "num_train_timesteps": num_train_timesteps, "data": _digest(x)}
    torch.manual_seed(seed)
    unet = build_unet(channels=c, size=s, width=width).to(device)
    sched = build_scheduler(num_train_timesteps)
    ema = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    lr_at = lambda i: lr * min(1.0, (i + 1) / 100) * (0.1 + 0.9 * (1 - i / steps))  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    start = 0
    ckpt = where / CHECKPOINT_NAME
    if overwrite:
        ckpt.unlink(missing_ok=True)  # --force starts over
    elif ckpt.is_file():
        state = _load_checkpoint(ckpt)
        _check_resume(state, settings, steps, ckpt)
        try:
            unet.load_state_dict(state["unet"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            g.set_state(state["gen"])
            torch.set_rng_state(state["torch"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TrustgainError(f"{ckpt} does not fit this model ({first})",
                                 hint="pass overwrite=True to start over") from None
        ema.to(device)
        start = state["step"]
    acp = sched.alphas_cumprod.float().to(device)
    t0 = time.time()
    unet.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="ddpm", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        for i in bar:
            idx = torch.randint(0, n, (batch,), generator=g)
            x0 = x[idx] * 2 - 1
            flip = torch.rand(batch, generator=g) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            t = torch.randint(0, t_max + 1, (batch,), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            x0, t, noise = x0.to(device), t.to(device), noise.to(device)
            a = acp[t][:, None, None, None]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            loss = F.mse_loss(unet(xt, t).sample, noise)
            value = loss.item()
            if not math.isfinite(value):
                raise _diverged(i + 1, f"the loss is {value}", lr, ckpt)
            for group in opt.param_groups:
                group["lr"] = lr_at(i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            ema.step(unet.parameters())
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            done = i + 1
            if done % checkpoint_every == 0 or done in (steps, stop_after):
                if not _finite(unet.parameters(), ema.shadow_params):
                    raise _diverged(done, "a weight is not finite", lr, ckpt)
                state = {"unet": unet.state_dict(), "ema": ema.state_dict(),
                         "opt": opt.state_dict(), "gen": g.get_state(),
                         "torch": torch.get_rng_state(), "step": done, "shape": [c, s],
                         "steps": steps, "settings": settings}
                write_atomic(ckpt, _checkpoint_bytes(state), overwrite=True)
            if done == stop_after:
                return Path(out)
    finally:
        bar.close()
    ema.copy_to(unet.parameters())
    if not _finite(unet.parameters()):
        raise _diverged(steps, "an averaged weight is not finite", lr, ckpt)
    unet.eval()
    info = {"steps": steps, "batch": batch, "lr": lr, "width": width, "seed": seed,
            "images": n, "channels": c, "size": s, "max_timestep": t_max,
            "seconds_this_run": round(time.time() - t0, 1), "device": str(device),
            "threads": torch.get_num_threads(), "torch": torch.__version__}

    def write(tmp: Path) -> None:
        DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp)
        write_atomic(tmp / TRAINING_NAME, (json.dumps(info, indent=2) + "\n").encode())
        for f in tmp.rglob("*"):  # weights are not secrets; safetensors writes them 0600
            if f.is_file() and not f.is_symlink():
                f.chmod(0o644)

    _write_folder(where, write)  # the old folder, checkpoint included, goes once this is in
    return Path(out)


# ---------------------------------------------------------------------------- command line

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


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _seed(text: str) -> int:
    value = _whole(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in 0..2**63-1, got {text!r}")
    return value


def _size(text: str) -> int:
    value = _positive_int(text)
    if value % 4:
        raise argparse.ArgumentTypeError(
            f"must be a multiple of 4 (the UNet halves it twice), got {value}")
    return value


def _width(text: str) -> int:
    value = _positive_int(text)
    if value % 4:
        raise argparse.ArgumentTypeError(
            f"must be a multiple of 4 (its group norm has 4 or 8 groups), got {value}")
    return value


def _max_timestep(text: str) -> int:
    value = _whole(text)
    if not 0 < value < 1000:
        raise argparse.ArgumentTypeError(f"must be in 1..999 (the schedule has 1000), got {text!r}")
    return value


def _lr(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text!r}")
    return value


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
                                description=__doc__.split("\n\n")[0],
                                epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=_path, metavar="DIR|digits|patches",
                   help="image folder, 'digits' or 'patches'")
    p.add_argument("-o", "--out", required=True, type=_path, metavar="OUT",
                   help="output folder (DDPMPipeline layout); new, empty, or one this command "
                        "wrote (an interrupted run there is resumed)")
    p.add_argument("--size", type=_size, metavar="S", default=32,
                   help="image side, a multiple of 4 [default: 32]")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="1 (grey) or 3 (RGB) [default: 1 for digits, else 3]")
    p.add_argument("--steps", type=_positive_int, metavar="N", default=3000,
                   help="optimizer steps in all (a resumed run counts those done) [default: 3000]")
    p.add_argument("--batch", type=_positive_int, metavar="N", default=16, help="[default: 16]")
    p.add_argument("--lr", type=_lr, default=2e-3,
                   help="peak learning rate, finite and above 0 [default: 2e-3]")
    p.add_argument("--width", type=_width, metavar="W", default=16,
                   help="UNet width, a multiple of 4 [default: 16]")
    p.add_argument("--max-timestep", type=_max_timestep, metavar="T", default=None,
                   help="train on timesteps 0..T only (1..999) [default: all]")
    p.add_argument("--seed", type=_seed, metavar="N", default=0, help="[default: 0]")
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="N", default=200,
                   help="steps between checkpoints [default: 200]")
    p.add_argument("--device", metavar="DEV", default="cpu",
                   help="cpu, cuda, cuda:N or mps [default: cpu]")
    p.add_argument("--threads", type=_positive_int, metavar="N", default=1,
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
    debug = os.environ.get("TRUSTGAIN_DEBUG") == "1"
    try:
        sources = data_paths(args.data)
        check_output(args.out, overwrite=args.force, data_paths=sources)  # before data loads
        images = named_images(args.data, size=args.size, channels=channels)
        out = train_ddpm(images, args.out, steps=args.steps, batch=args.batch, lr=args.lr,
                         width=args.width, max_timestep=args.max_timestep, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, overwrite=args.force,
                         progress=not args.no_progress, device=args.device,
                         data_paths=sources)
    except TrustgainError as exc:
        if debug:
            raise
        hint = _cli_hint(exc)
        print(f"error: {exc}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        ckpt = Path(args.out).expanduser() / CHECKPOINT_NAME
        print(f"interrupted; checkpoint kept at {ckpt} (rerun the same command to resume)"
              if ckpt.is_file() else "interrupted; no checkpoint was written yet",
              file=sys.stderr)
        return 130
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
