"""The mark VAE's second phase: its encoder fine-tuned end to end through the DDIM inversion,
its decoder left as it is (``python -m trustgain.watermark.mark_vae --e2e-minutes M``).

Why: the first phase (:func:`trustgain.watermark.mark_vae.train_mark_vae`) fits the encoder to
the sampler's final latent x0, but detection reads the signs of z_T after a 25-step DDIM
inversion, which weighs x0's errors very unequally: an error the inversion amplifies costs
signs, one it damps costs nothing. Here the loss is the one detection meets: the MSE of the
inverted z_T to the true initial latent, plus the x0 term (relative to var(x0)) that keeps the
encoder near the first phase's solution, over each benchmark condition's real attack of the
mark decoder's 8-bit images (:data:`~trustgain.watermark.mark_vae.CONDITIONS`), each condition
weighted by its share of the moving-average z_T error. The same two-term loss trains the
detector encoder's phase 2 (:func:`trustgain.watermark.detector_train_phases.train_e2e`); here
the inputs are the mark decoder's images under fixed attacks, drawn once, since the decoder
does not change. Only the encoder and ``quant_conv`` move, so generated images, the initial
latents and the detector's exact null are untouched: only how many signs come back changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from trustgain.watermark.detector_train_data import to_uint8
from trustgain.watermark.detector_train_phases import Inverter, encode_mean
from trustgain.watermark.detector_train_setup import DetectorTrainError

#: Default learning rate: at 3e-5 and 24 images a step, 119 steps from the shipped pair lifted
#: every condition's held-out sign accuracy by 0.018 (JPEG 50) to 0.031 (no attack) on 400
#: samples (scratch, twenty-sixth session; BENCHMARKS.md).
E2E_LR = 3e-5


@torch.no_grad()
def decode_u8(vae: Any, x0: torch.Tensor, batch: int = 100) -> np.ndarray:
    """``vae``'s 8-bit images (uint8 NHWC) of final latents ``x0``, decoded in batches."""
    sf = vae.config.scaling_factor
    return torch.cat([to_uint8(vae.decode(x0[i : i + batch].to(vae.device, vae.dtype) / sf)
                               .sample) for i in range(0, len(x0), batch)]).numpy()


@torch.no_grad()
def attacked_views(vae: Any, x0: torch.Tensor, conditions: Sequence[str], *, seed: int,
                   batch: int = 100) -> dict[str, torch.Tensor]:
    """The decoder's 8-bit images of ``x0`` under each condition's real attack (float [-1, 1]
    NCHW on the CPU, a crop un-zoomed as detection does), one draw per image and condition."""
    from trustgain.watermark.mark_vae import real_attack

    u8 = decode_u8(vae, x0, batch)
    rng = np.random.default_rng(seed)
    return {name: torch.cat([real_attack(u8[i : i + batch], name, rng)
                             for i in range(0, len(u8), batch)]) for name in conditions}


def train_encoder_e2e(vae: Any, views: Mapping[str, torch.Tensor], x0: torch.Tensor,
                      z: torch.Tensor, inverter: Callable[[torch.Tensor], torch.Tensor], *,
                      minutes: float, steps: int | None = None, lr: float = E2E_LR,
                      batch: int = 24, seed: int = 0, progress: bool = True,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune the encoder and ``quant_conv`` of ``vae`` (in place; the decoder frozen) for
    ``minutes`` (or ``steps``, whichever ends first) so that ``inverter`` (a differentiable
    z_T from latents, :class:`~trustgain.watermark.detector_train_phases.Inverter`) of the
    encoded ``views[c]`` comes close to the initial latents ``z``; returns the log."""
    params = [p for name, p in vae.named_parameters()
              if name.startswith(("encoder.", "quant_conv."))]
    if not params:
        raise DetectorTrainError("the VAE has no encoder weights to tune")
    tuned = {id(p) for p in params}
    frozen = [p for p in vae.parameters() if id(p) not in tuned and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    names = list(views)
    per = max(1, batch // len(names))
    opt = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    var = float(x0.var())
    running = np.ones(len(names))
    vae.train()
    t0, step, history = time.perf_counter(), 0, []
    bar = tqdm(total=round(minutes * 60), desc="mark encoder (end to end)", unit="s",
               disable=not progress)
    try:
        while time.perf_counter() - t0 < minutes * 60 and (steps is None or step < steps):
            loss = x0.new_zeros(())
            for i, name in enumerate(names):
                idx = torch.randint(0, len(x0), (per,), generator=generator)
                read = encode_mean(vae, views[name][idx])
                err_z = F.mse_loss(inverter(read).float(), z[idx].to(read.device))
                err_x = F.mse_loss(read.float(), x0[idx].to(read.device)) / var
                e = float(err_z.detach())
                running[i] = 0.95 * running[i] + 0.05 * e if step else e
                # the worse a condition reads, the more it weighs: every condition must pass
                loss = loss + (err_z + err_x) * float(running[i] / running.sum())
            if not torch.isfinite(loss):
                raise DetectorTrainError(f"end-to-end training diverged at step {step}",
                                         hint="lower --e2e-lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 20 == 0:
                entry = {"step": step, "seconds": round(time.perf_counter() - t0, 1),
                         "z_error": dict(zip(names, running.round(4).tolist(), strict=True))}
                history.append(entry)
                if log:
                    log(json.dumps(entry))
            bar.n = min(bar.total, round(time.perf_counter() - t0))
            bar.refresh()
    finally:
        bar.close()
        for p in frozen:
            p.requires_grad_(True)
        vae.eval()
    return {"steps": step, "minutes": minutes, "lr": lr, "batch": per * len(names),
            "conditions": names, "history": history}


def run_e2e(pipe: Any, vae: Any, x0: torch.Tensor, z: torch.Tensor, *, minutes: float,
            steps: int | None, lr: float, inversion_steps: int, seed: int, progress: bool,
            log: Callable[[str], None] | None) -> dict[str, Any]:
    """Draw the attacked views of ``x0`` through ``vae``'s decoder and train its encoder end to
    end through ``pipe``'s empty-prompt DDIM inversion of ``inversion_steps``."""
    from trustgain.watermark.mark_vae import CONDITIONS

    views = attacked_views(vae, x0, CONDITIONS, seed=seed)
    inverter = Inverter(pipe, inversion_steps)
    for p in pipe.unet.parameters():  # frozen: the gradient flows through it, not into it
        p.requires_grad_(False)
    return train_encoder_e2e(vae, views, x0, z, inverter, minutes=minutes, steps=steps, lr=lr,
                             seed=seed, progress=progress, log=log)


__all__ = ["E2E_LR", "attacked_views", "decode_u8", "run_e2e", "train_encoder_e2e"]
