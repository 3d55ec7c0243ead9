"""The two training phases of the detector encoder: phase 1 fits the encoder mean to the
sampler's x0, phase 2 fits the z_T recovered through a differentiable DDIM inversion
(:class:`Inverter`); with the time/step budget, the one-cycle learning rate and the check that
stops a diverged phase.

Part of :mod:`trustgain.watermark.detector_train`, which re-exports its public names.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from diffusers import DDIMInverseScheduler
from tqdm.auto import tqdm

from trustgain.watermark.detector_train_data import TrainSet, to_pixels
from trustgain.watermark.detector_train_setup import (
    DetectorTrainError,
    Log,
    Settings,
    non_finite,
)


def encode_mean(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Posterior mean x ``scaling_factor``, as the detector encodes (gradients allowed)."""
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


class Inverter:
    """Plain DDIM inversion with the empty prompt, as :func:`latent_invert.ddim_invert` does
    with ``refine=0`` and no guidance, but differentiable w.r.t. the latents (UNet frozen)."""

    def __init__(self, pipe: Any, steps: int) -> None:
        self.unet = pipe.unet
        self.scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(steps)
        with torch.no_grad():
            self.empty = pipe.encode_prompt([""], self.unet.device, 1, False)[0].to(
                self.unet.dtype)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        x = latents.to(self.unet.dtype)
        embeds = self.empty.expand(len(x), -1, -1)
        for t in self.scheduler.timesteps:
            noise = self.unet(x, t, encoder_hidden_states=embeds).sample
            x = self.scheduler.step(noise, int(t), x).prev_sample
        return x

    @torch.no_grad()
    def latents(self, x0: torch.Tensor, batch: int) -> torch.Tensor:
        """Inverted latents of clean latents ``x0``, batched, on the CPU."""
        dev = self.unet.device
        return torch.cat([self(x0[i : i + batch].to(dev)).float().cpu()
                          for i in range(0, len(x0), batch)])

    @torch.no_grad()
    def images(self, vae: Any, u8: torch.Tensor, batch: int) -> torch.Tensor:
        """Inverted latents of uint8 NHWC images encoded with ``vae``, on the CPU."""
        dev = self.unet.device
        return torch.cat([self(encode_mean(vae, to_pixels(u8[i : i + batch].to(dev))))
                          .float().cpu() for i in range(0, len(u8), batch)])


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the latent elements whose (N, 1, h, w) ``mask`` cell is on."""
    weight = mask.to(pred.dtype)
    count = (weight.sum() * pred.shape[1]).clamp_min(1.0)
    return (((pred - target) ** 2) * weight).sum() / count


def one_cycle_lr(progress: float, max_lr: float, pct_start: float = 0.1, div: float = 25.0,
                 final_div: float = 1e4) -> float:
    """``torch.optim.lr_scheduler.OneCycleLR``'s cosine shape as a function of progress in
    [0, 1], so that a time budget (unknown step count) still runs the whole cycle."""
    start, end = max_lr / div, max_lr / div / final_div
    if progress < pct_start:
        lo, hi, p = start, max_lr, progress / pct_start
        return hi + (lo - hi) * (1 + math.cos(math.pi * p)) / 2
    p = min(1.0, (progress - pct_start) / (1 - pct_start))
    return end + (max_lr - end) * (1 + math.cos(math.pi * p)) / 2


def budget(seconds: float, max_steps: int | None) -> Iterator[tuple[int, float]]:
    """Yield (step, progress) until ``seconds`` have passed or ``max_steps`` were taken;
    progress is the larger of the two fractions used."""
    t0, step = time.perf_counter(), 0
    while True:
        frac_t = (time.perf_counter() - t0) / seconds if seconds > 0 else 1.0
        frac_s = 0.0 if max_steps is None else step / max_steps if max_steps > 0 else 1.0
        progress = max(frac_t, frac_s)
        if progress >= 1.0:
            return
        yield step, progress
        step += 1


def trainable_encoder(vae: Any) -> tuple[Any, list[torch.nn.Parameter]]:
    """A copy of ``vae`` with everything frozen but the encoder and ``quant_conv``."""
    tuned = copy.deepcopy(vae).float()
    tuned.requires_grad_(False)
    params = list(tuned.encoder.parameters())
    if getattr(tuned, "quant_conv", None) is not None:
        params += list(tuned.quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    return tuned, params


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def train_x0(enc: Any, params: list, data: TrainSet, settings: Settings,
             generator: torch.Generator, progress: bool) -> dict[str, Any]:
    """Phase 1: encoder mean x scaling to x0, masked MSE, one-cycle AdamW."""
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    loss, t0 = float("nan"), time.perf_counter()
    bar = tqdm(desc="phase 1 (x0)", disable=not progress, leave=False)
    taken = 0
    for _, prog in budget(settings.x0_seconds, settings.x0_steps):
        for group in opt.param_groups:
            group["lr"] = one_cycle_lr(prog, settings.lr)
        pix, mask, x0, _ = data.batch(settings.batch, generator)
        value = masked_mse(encode_mean(enc, pix), x0, mask)
        _step(opt, value)
        loss, taken = value.item(), taken + 1
        bar.update()
        bar.set_postfix(loss=f"{loss:.5f}")
    bar.close()
    # a phase of 0 steps has no loss: null in training.json (NaN is not JSON)
    return {"steps": taken, "seconds": round(time.perf_counter() - t0, 2),
            "final_loss": loss if taken else None}


def train_e2e(enc: Any, params: list, data: TrainSet, inverter: Inverter, settings: Settings,
              generator: torch.Generator, progress: bool) -> dict[str, Any]:
    """Phase 2: masked MSE of the inverted z_T to the true one, plus the phase-1 loss."""
    opt = torch.optim.AdamW(params, lr=settings.e2e_lr, weight_decay=settings.weight_decay)
    lz = lx = float("nan")
    t0 = time.perf_counter()
    bar = tqdm(desc="phase 2 (end to end)", disable=not progress, leave=False)
    taken = 0
    for _ in budget(settings.e2e_seconds, settings.e2e_steps):
        pix, mask, x0, z = data.batch(settings.e2e_batch, generator)
        pred = encode_mean(enc, pix)
        loss_z = masked_mse(inverter(pred).float(), z, mask)
        loss_x = masked_mse(pred, x0, mask)
        _step(opt, loss_z + loss_x)
        lz, lx, taken = loss_z.item(), loss_x.item(), taken + 1
        bar.update()
        bar.set_postfix(z=f"{lz:.4f}", x0=f"{lx:.5f}")
    bar.close()
    return {"steps": taken, "seconds": round(time.perf_counter() - t0, 2),
            "final_loss_z": lz if taken else None, "final_loss_x0": lx if taken else None}


def _train(vae: Any, data: TrainSet, inverter: Inverter, settings: Settings, progress: bool,
           log: Log) -> tuple[Any, tuple[dict[str, Any], dict[str, Any]]]:
    """Both phases on a trainable copy of ``vae``; the copy (eval mode, frozen) and the
    phases' summaries."""
    enc, params = trainable_encoder(vae)
    enc.train()
    generator = torch.Generator().manual_seed(settings.seed)
    x0_phase = train_x0(enc, params, data, settings, generator, progress)
    log(f"phase 1: {x0_phase}")
    _check_phase(params, "phase 1 (x0)", "lower --lr")
    e2e_phase = train_e2e(enc, params, data, inverter, settings, generator, progress)
    log(f"phase 2: {e2e_phase}")
    _check_phase(params, "phase 2 (end to end)", "lower --e2e-lr")
    enc.eval().requires_grad_(False)
    return enc, (x0_phase, e2e_phase)


def _check_phase(params: list[torch.nn.Parameter], phase: str, hint: str) -> None:
    """Stop a diverged run at once, before the final evaluation and long before a save."""
    bad = non_finite((str(i), p) for i, p in enumerate(params))
    if bad:
        raise DetectorTrainError(
            f"training diverged in {phase}: {len(bad)} of the encoder's {len(params)} weight "
            "tensors are not finite; nothing written", hint=hint)
