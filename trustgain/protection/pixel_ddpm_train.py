"""Training the pixel DDPM: :func:`train_ddpm` (the loop, EMA, divergence checks, the saved
``DDPMPipeline`` folder) and its checkpoints: written every few steps, checked against the
run's settings and resumed.

Part of :mod:`trustgain.protection.pixel_ddpm`, which re-exports its public names.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trustgain.devices import device_problem
from trustgain.errors import InputError, TrustgainError
from trustgain.fileio import write_atomic
from trustgain.protection.pixel_ddpm_model import build_scheduler, build_unet
from trustgain.protection.pixel_ddpm_output import (
    CHECKPOINT_NAME,
    TRAINING_NAME,
    _write_folder,
    check_output,
)

# settings a resumed run must share with its checkpoint, and the option that sets each
RESUME_SETTINGS = {"channels": "--channels", "size": "--size", "width": "--width", "lr": "--lr",
                   "batch": "--batch", "seed": "--seed", "max_timestep": "--max-timestep",
                   "num_train_timesteps": "the schedule length", "data": "--data"}


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
