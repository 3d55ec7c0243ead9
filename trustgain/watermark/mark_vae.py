"""A mark VAE: a decoder fine-tuned so that its images keep their final latents through attacks,
paired with the encoder that reads them back (``vae_mark``).

    python -m trustgain.watermark.mark_vae --model trustgain-mini-sd -o vae_mark --minutes 30
    python -m trustgain.watermark.mark_vae -o vae_mark2 --init vae_mark --minutes 0 --e2e-minutes 20

Why: the latent mark lives in the signs of the initial latent z_T, and the detector gets z_T
back by VAE-encoding the image and DDIM-inverting. On trustgain-mini-sd the sampler's own final
latent x0 gives back 0.80 of the signs, but x0 after decode, an 8-bit file and encode only about
0.61, whatever the encoder and weights: many latents decode to nearly the same 32x32 image, so
the image does not hold x0 (BENCHMARKS.md, "Latent mark"). This tool changes the decoder, not
the detector: decoder and encoder are fine-tuned together to minimise

    |E(attack(quantise(D(x0)))) - x0|^2 / var(x0)  +  fidelity * |D(x0) - D_0(x0)|^2

over the sampler's x0 (``D_0``: the pipeline's decoder; pixels in [-1, 1]), one share of each
batch under each condition the benchmark attacks with (:data:`CONDITIONS`) and one under an
averaging shift (:func:`averaging_shifts`: the kind of change the averaging attack adds, the
mean of 20 images minus the mean of 20 others, about 8-20/255 RMS), each condition's term
weighted by its share of the moving-average error (the detector must pass all of them, so the
worst-read condition gets the most weight). The forward pass
uses the real attacks (PIL's JPEG, resize, blur, crop undone by
:func:`~trustgain.watermark.latent_invert.unzoom`, noise) and the 8-bit rounding; gradients
flow through differentiable stand-ins (identity for noise and rounding, kornia's
differentiable JPEG codec, bicubic resize, a Gaussian kernel, the kept centre box), i.e. a
straight-through estimator, so training sees exactly what detection will meet. Continuing
from ``--init``, the learning rate warms up linearly over ``--warmup`` steps, so that the
fresh Adam moments do not undo the starting point.

A second phase (``--e2e-minutes``, :mod:`trustgain.watermark.mark_vae_e2e`) then tunes the
encoder alone on the loss detection meets, the error of z_T after the DDIM inversion.

Generation uses the new decoder (``pipe.vae = mark VAE``), detection its encoder
(:func:`trustgain.models.mark_vae_for`). The initial latents, the key stream and so the exact
null of the detector are untouched; the images change by the fidelity term only (report: PSNR to
the pipeline decoder's images, and the judge's agreement where there is one). This is the
project's own method, written here: the nearest published tool, Stable Signature, fine-tunes a
decoder to carry a fixed message, not to make the latent invertible, and no library trains one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from trustgain.watermark.attacks import SUITE
from trustgain.watermark.detector_train_data import generate, to_pixels, to_uint8
from trustgain.watermark.detector_train_phases import encode_mean
from trustgain.watermark.detector_train_setup import DetectorTrainError, Settings
from trustgain.watermark.latent_invert import unzoom
from trustgain.watermark.mark_vae_e2e import E2E_LR, decode_u8

PROG = "python -m trustgain.watermark.mark_vae"
#: The benchmark's conditions, each trained on one share of every batch.
CONDITIONS = ("none", "jpeg50", "resize0.5_restored", "crop_centre_50", "blur1", "noise0.05")
#: Trained besides: the mark must outlive an averaging estimate added to the image.
SHIFT = "averaging_shift"
TRAINED = (*CONDITIONS, SHIFT)
CROP_SCALE = 0.7071  # the detector's un-zoom for a centre crop to half the area
#: Learning-rate warm-up steps when continuing from ``--init``: without it each restart raised
#: every condition's error by 0.005-0.01 over the first hundred steps (sessions 21 and 22).
WARMUP = 200
#: The factor on the gradient of kornia's JPEG: 1 / E[3u^2] for a uniform rounding residual u.
JPEG_GAIN = 4.0


def _gauss(sigma: float, channels: int) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    return (k[:, None] * k[None, :]).expand(channels, 1, -1, -1).contiguous()


def stand_in(pixels: torch.Tensor, name: str) -> torch.Tensor:
    """A differentiable stand-in for attack ``name`` (its gradient path; the forward value
    comes from :func:`real_attack`)."""
    h, w = pixels.shape[-2:]
    if name.startswith("resize"):
        factor = float(name.removeprefix("resize").split("_")[0])
        small = F.interpolate(pixels, size=(max(1, round(h * factor)), max(1, round(w * factor))),
                              mode="bicubic", antialias=True, align_corners=False)
        return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    if name.startswith("blur"):
        k = _gauss(float(name.removeprefix("blur")), pixels.shape[1]).to(pixels)
        r = k.shape[-1] // 2
        return F.conv2d(F.pad(pixels, (r, r, r, r), mode="replicate"), k,
                        groups=pixels.shape[1])
    if name.startswith("crop_centre"):
        sh, sw = round(h * CROP_SCALE), round(w * CROP_SCALE)
        top, left = (h - sh) // 2, (w - sw) // 2
        kept = torch.zeros_like(pixels)  # the fill colour comes from the real attack
        kept[..., top : top + sh, left : left + sw] = pixels[..., top : top + sh, left : left + sw]
        return kept
    if name.startswith("jpeg"):
        return differentiable_jpeg(pixels, int(name.removeprefix("jpeg")))
    return pixels  # none, noise: identity


def differentiable_jpeg(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG at ``quality`` with gradients, on [-1, 1] NCHW pixels: kornia's differentiable codec
    (libjpeg's tables, 4:2:0 chroma), its gradient scaled by :data:`JPEG_GAIN`.

    kornia rounds each DCT coefficient with Shin and Song's cubic, whose slope 3u^2 (u: the
    rounding residual) is near 0 in the dead zone around 0, which is what JPEG drops, and 1/4 on
    average elsewhere; the factor 4 brings the kept coefficients to the identity's unit gain, so
    the JPEG condition is not down-weighted against the others. Against PIL's JPEG 50 on 32x32
    photo patches the codec reads 39.7 dB from PIL's output, where both lie 27.4 dB from the
    input."""
    try:
        from kornia.enhance import jpeg_codec_differentiable
    except ImportError as exc:
        raise DetectorTrainError("training through JPEG needs kornia: pip install "
                                 "'trustgain[train]'") from exc

    unit = ((pixels + 1) / 2).clamp(0, 1)
    q = torch.full((pixels.shape[0],), float(quality), device=pixels.device, dtype=pixels.dtype)
    out = jpeg_codec_differentiable(unit, q) * 2 - 1
    return out.detach() + JPEG_GAIN * (out - out.detach())


def real_attack(u8: np.ndarray, name: str, rng: np.random.Generator) -> torch.Tensor:
    """uint8 NHWC images under the suite's attack ``name`` (a centre crop un-zoomed as the
    detector does), back at their size, as float [-1, 1] NCHW."""
    h, w = u8.shape[1:3]
    out = []
    for array in u8:
        image = SUITE[name](Image.fromarray(array), rng)
        if name.startswith("crop_centre"):
            image = unzoom(image, CROP_SCALE, (h, w))[0]
        out.append(np.asarray(image.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)))
    return to_pixels(torch.from_numpy(np.stack(out)))


def through_channel(pixels: torch.Tensor, name: str, rng: np.random.Generator) -> torch.Tensor:
    """Decoded ``pixels`` as detection sees them after attack ``name``: the real 8-bit file and
    attack forward, the stand-in's gradient backward."""
    u8 = to_uint8(pixels.detach())
    rounded = pixels + (to_pixels(u8).to(pixels) - pixels).detach()
    soft = stand_in(rounded, name)
    return soft + (real_attack(u8.numpy(), name, rng).to(pixels) - soft).detach()


def averaging_shifts(reference: torch.Tensor, count: int, rng: np.random.Generator, *,
                     n_avg: int = 20, scale: tuple[float, float] = (0.6, 1.0)) -> torch.Tensor:
    """``count`` changes of the kind an averaging attack adds to an image: the mean of ``n_avg``
    random ``reference`` images minus the mean of ``n_avg`` others, each scaled by a factor
    drawn from ``scale``. Random images differ more than the attack's sets of the same prompts:
    unscaled 13-22/255 RMS (10th-90th percentile) on trustgain-mini-sd, scaled about 8-20,
    where the benchmark's estimates measure 7-15."""
    idx = torch.from_numpy(rng.integers(0, len(reference), (count, 2, n_avg)))
    means = reference[idx].float().mean(dim=2)
    factor = torch.from_numpy(rng.uniform(*scale, count)).float().view(-1, 1, 1, 1)
    return (means[:, 0] - means[:, 1]) * factor


def latent_mismatch(vae: Any, reference: Any) -> str | None:
    """Why ``vae`` cannot stand in for the pipeline's ``reference`` VAE (a different latent
    space: channels, scaling factor or downsampling), or ``None`` when it can."""
    mine, theirs = vae.config, reference.config
    for key in ("in_channels", "latent_channels", "scaling_factor"):
        if getattr(mine, key, None) != getattr(theirs, key, None):
            return f"{key} {getattr(mine, key, None)} where the pipeline's VAE has " \
                   f"{getattr(theirs, key, None)}"
    down = len(mine.block_out_channels), len(theirs.block_out_channels)
    if down[0] != down[1]:
        return f"{down[0] - 1} downsampling steps where the pipeline's VAE has {down[1] - 1}"
    return None


def initial_vae(pipe: Any, model: str, init: str | None) -> Any:
    """The starting pair: ``init`` (a ``vae_mark`` folder this tool wrote) or the pipeline's
    decoder with the model's detector encoder (its own where it has none)."""
    from diffusers import AutoencoderKL

    from trustgain.models import detector_vae_for

    if init is not None:
        if not (Path(init) / "config.json").is_file():
            raise DetectorTrainError(f"--init {init} is not a VAE folder (no config.json)")
        vae = AutoencoderKL.from_pretrained(init).to(pipe.vae.device)
        problem = latent_mismatch(vae, pipe.vae)
        if problem:
            raise DetectorTrainError(f"--init {init} does not fit {model}: {problem}")
        return vae
    vae = copy.deepcopy(pipe.vae)
    detector = detector_vae_for(model, str(pipe.vae.device))
    if detector is not None:
        parts = {k: v for k, v in detector.state_dict().items()
                 if k.startswith(("encoder.", "quant_conv."))}
        vae.load_state_dict(parts, strict=False)
    return vae


def train_mark_vae(vae: Any, x0: torch.Tensor, reference: torch.Tensor, *,
                   minutes: float, steps: int | None = None, fidelity: float = 1.0,
                   lr: float = 3e-4, batch: int = 60, seed: int = 0, warmup: int = 0,
                   focus: float = 0.0, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``vae`` (decoder and encoder, in place) for ``minutes`` (or ``steps``, whichever
    ends first) on final latents ``x0`` whose pipeline-decoded images are ``reference`` (float
    [-1, 1] NCHW); returns the log. ``warmup``: steps over which the learning rate rises
    linearly from ``lr / warmup`` to ``lr``. ``focus``: within each condition, each sample's
    error weighs ``(its error / the batch mean) ** focus`` (0: a plain mean), since a mark is
    missed on the images read worst (digit one, thin strokes), not on the average one."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sf = vae.config.scaling_factor
    params = [p for name, p in vae.named_parameters()
              if name.startswith(("encoder.", "quant_conv.", "decoder.", "post_quant_conv."))]
    opt = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) if warmup > 0 else 1.0)
    var = float(x0.var())
    per = max(1, batch // len(TRAINED))
    running = np.ones(len(TRAINED))  # moving average of each condition's error
    vae.train()
    t0, step, history = time.perf_counter(), 0, []
    bar = tqdm(total=round(minutes * 60), desc="mark vae", unit="s", disable=not progress)
    while time.perf_counter() - t0 < minutes * 60 and (steps is None or step < steps):
        idx = torch.randint(0, len(x0), (per * len(TRAINED),))
        target = x0[idx].to(vae.device)
        decoded = vae.decode(target / sf).sample
        rec = decoded.new_zeros(())
        for i, name in enumerate(TRAINED):
            part = slice(i * per, (i + 1) * per)
            if name == SHIFT:  # added, then the 8-bit file: the gradient passes unchanged
                shift = averaging_shifts(reference, per, rng).to(decoded)
                seen = through_channel(decoded[part] + shift, "none", rng)
            else:
                seen = through_channel(decoded[part], name, rng)
            read = encode_mean(vae, seen)
            each = (read - target[part]).pow(2).flatten(1).mean(1) / var
            # hard samples weigh more (``focus`` > 0): detection fails on the worst images
            hard = (each.detach() / each.detach().mean().clamp_min(1e-12)) ** focus
            err = (each * hard / hard.mean()).mean()
            e = float(err.detach())
            running[i] = 0.98 * running[i] + 0.02 * e if step else e
            # the worse a condition reads, the more it weighs: every condition must pass
            rec = rec + err * float(running[i] / running.sum())
        fid = F.mse_loss(decoded, reference[idx].to(decoded))
        loss = rec + fidelity * fid
        if not torch.isfinite(loss):
            raise DetectorTrainError(f"training diverged at step {step} (loss {float(loss)})")
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        step += 1
        if step % 50 == 0:
            entry = {"step": step, "seconds": round(time.perf_counter() - t0, 1),
                     "relative_error": dict(zip(TRAINED, np.sqrt(running).round(4).tolist(),
                                                strict=True)),
                     "psnr_db": round(10 * math.log10(4 / max(float(fid.detach()), 1e-12)), 2)}
            history.append(entry)
            if log:
                log(json.dumps(entry))
        bar.n = min(bar.total, round(time.perf_counter() - t0))
        bar.refresh()
    bar.close()
    vae.eval()
    return {"steps": step, "minutes": minutes, "fidelity": fidelity, "lr": lr, "batch": batch,
            "warmup": warmup, "focus": focus, "history": history}


@torch.no_grad()
def fidelity_report(vae: Any, x0: torch.Tensor, reference: np.ndarray, *, digits: bool,
                    batch: int = 100) -> dict[str, float]:
    """PSNR of the mark decoder's 8-bit images to the pipeline decoder's (``reference``, uint8
    NHWC) on the same final latents and, for the digits model (``digits``), the judge's
    agreement on the digit."""
    u8 = decode_u8(vae, x0, batch)
    mse = float(((u8.astype(np.float64) - reference.astype(np.float64)) ** 2).mean())
    report = {"psnr_db": round(10 * math.log10(255**2 / max(mse, 1e-12)), 2)}
    if digits:
        from trustgain.models import classify_digits

        new, _ = classify_digits(torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255)
        old, _ = classify_digits(torch.from_numpy(reference).permute(0, 3, 1, 2).float() / 255)
        report["judge_agreement"] = round(float((new == old).float().mean()), 4)
    return report


def run(model: str, out: str | os.PathLike, *, samples: int = 6000, minutes: float = 30.0,
        steps: int | None = None, fidelity: float = 1.0, lr: float = 3e-4, init: str | None = None,
        warmup: int | None = None, focus: float = 0.0, e2e_minutes: float = 0.0,
        e2e_steps: int | None = None, e2e_lr: float | None = None,
        reliability_samples: int = 1000, prompts_file: str | None = None, device: str = "cpu",
        overwrite: bool = False, progress: bool = True, seed: int = 1,
        command: str | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Draw ``samples`` of ``model``, train its mark VAE, write ``out`` (the ``AutoencoderKL``,
    ``training.json`` and, unless ``reliability_samples`` is 0, the detector's
    ``reliability.json`` fitted with this pair); returns the report. ``warmup``: learning-rate
    warm-up steps, by default :data:`WARMUP` when continuing from ``init`` and none otherwise.
    ``e2e_minutes`` > 0: then fine-tune the encoder alone end to end through the DDIM inversion
    (:mod:`trustgain.watermark.mark_vae_e2e`) for that long or ``e2e_steps`` steps, at
    ``e2e_lr``."""
    from trustgain.fileio import write_atomic
    from trustgain.models import MINI_SD_ID
    from trustgain.watermark.detector_train_output import check_output, save_output
    from trustgain.watermark.detector_train_setup import check_model, load_pipeline, load_prompts
    from trustgain.watermark.reliability_fit import check_samples, fit_model

    t0 = time.perf_counter()
    check_output(Path(out), overwrite)
    check_samples(reliability_samples, "--reliability-samples")
    check_model(model)
    prompts = load_prompts(model, prompts_file)
    pipe = load_pipeline(model, device, progress=False)
    vae = initial_vae(pipe, model, init)
    settings = Settings(gen_batch=100)  # 25 sampler steps, guidance 4, as the benchmark draws
    data = generate(pipe, prompts, samples, seed, settings, progress=progress)
    held = generate(pipe, prompts, min(500, samples), seed + 10**6, settings, desc="held-out",
                    progress=progress)
    trained = train_mark_vae(vae, data.x0, to_pixels(torch.from_numpy(data.images)),
                             minutes=minutes, steps=steps, fidelity=fidelity, lr=lr, seed=seed,
                             warmup=(WARMUP if init else 0) if warmup is None else warmup,
                             focus=focus,
                             progress=progress, log=log)
    if e2e_minutes > 0 and e2e_steps != 0:
        from trustgain.watermark.mark_vae_e2e import run_e2e

        trained["end_to_end"] = run_e2e(
            pipe, vae, data.x0, data.z, minutes=e2e_minutes, steps=e2e_steps,
            lr=E2E_LR if e2e_lr is None else e2e_lr, inversion_steps=settings.steps,
            seed=seed, progress=progress, log=log)
    report = {"command": command, "model": model, "init": init, "samples": samples,
              "training": trained, "held_out": fidelity_report(vae, held.x0, held.images,
                                                 digits=model == MINI_SD_ID)}
    out = save_output(vae, report, out, overwrite)
    if reliability_samples:
        decoder = pipe.vae
        pipe.vae = vae  # the reliability of what detection will meet: this pair end to end
        try:
            rel = fit_model(pipe, prompts, model=model, samples=reliability_samples,
                            steps=settings.steps, guidance=settings.guidance, encoder=vae,
                            seed=seed + 2 * 10**6, progress=progress, encoder_name="mark")
        finally:
            pipe.vae = decoder
        rel.save(out / "reliability.json", overwrite=True)
        report["reliability"] = {"samples": reliability_samples,
                                 "rho_median": round(float(np.median(rel.rho)), 4)}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_atomic(out / "training.json", (json.dumps(report, indent=2) + "\n").encode(),
                 overwrite=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import shlex

    from trustgain.argtypes import (
        CAP,
        COUNT,
        NON_NEGATIVE,
        RATE,
        SEED,
        OneLineParser,
        device,
        run_command,
    )

    p = OneLineParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
               f"  {PROG} --model trustgain-mini-sd -o vae_mark --minutes 30\n"
               f"  {PROG} --model trustgain-mini-sd -o vae_mark2 --init vae_mark --minutes 10\n"
               f"  {PROG} -o vae_mark3 --init vae_mark --minutes 0 --e2e-minutes 25\n"
               "then generate with pipe.vae = AutoencoderKL.from_pretrained('vae_mark') and\n"
               "detect with: trustgain watermark detect-latent IMAGES --model M --mark-vae",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="trustgain-mini-sd",
                   help="trustgain-mini-sd or a diffusers folder (default: %(default)s)")
    p.add_argument("-o", "--output", required=True, help="folder to write (the mark VAE)")
    p.add_argument("--samples", type=COUNT, default=6000, help="training samples (%(default)s)")
    p.add_argument("--minutes", type=NON_NEGATIVE, default=30.0,
                   help="training time (%(default)s)")
    p.add_argument("--steps", type=COUNT, default=None,
                   help="stop after this many steps even within --minutes")
    p.add_argument("--fidelity", type=NON_NEGATIVE, default=1.0,
                   help="weight of the pixel loss to the pipeline decoder (%(default)s)")
    p.add_argument("--lr", type=RATE, default=3e-4, help="Adam learning rate (%(default)s)")
    p.add_argument("--init", help="continue from a mark VAE folder this tool wrote")
    p.add_argument("--focus", type=NON_NEGATIVE, default=0.0,
                   help="weigh each sample by (its error / the batch mean) ** FOCUS (%(default)s)")
    p.add_argument("--warmup", type=CAP, default=None,
                   help=f"learning-rate warm-up steps (default: {WARMUP} with --init, else 0)")
    p.add_argument("--e2e-minutes", type=NON_NEGATIVE, default=0.0,
                   help="then tune the encoder alone end to end through the inversion for "
                        "this long (%(default)s)")
    p.add_argument("--e2e-steps", type=COUNT, default=None,
                   help="stop the end-to-end phase after this many steps")
    p.add_argument("--e2e-lr", type=RATE, default=None,
                   help=f"its learning rate (default: {E2E_LR})")
    p.add_argument("--reliability-samples", type=CAP, default=1000,
                   help="samples for the detector's reliability.json; 0: none (%(default)s)")
    p.add_argument("--prompts", help="prompts file, one a line (required for other models)")
    p.add_argument("--seed", type=SEED, default=1, help="sample and attack seed (%(default)s)")
    p.add_argument("--threads", type=COUNT, default=2, help="torch CPU threads (%(default)s)")
    p.add_argument("--device", type=device, default="cpu", help="torch device (%(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    def work() -> int:
        torch.set_num_threads(args.threads)
        report = run(args.model, args.output, samples=args.samples, minutes=args.minutes,
                     steps=args.steps,
                     fidelity=args.fidelity, lr=args.lr, init=args.init, warmup=args.warmup,
                     focus=args.focus, e2e_minutes=args.e2e_minutes,
                     e2e_steps=args.e2e_steps, e2e_lr=args.e2e_lr,
                     reliability_samples=args.reliability_samples, prompts_file=args.prompts,
                     device=args.device, overwrite=args.overwrite,
                     progress=not args.no_progress, seed=args.seed,
                     command=f"{PROG} {shlex.join(sys.argv[1:] if argv is None else argv)}",
                     log=lambda line: print(line, file=sys.stderr))
        held, e2e = report["held_out"], report["training"].get("end_to_end")
        print(f"wrote {args.output}: {report['training']['steps']} steps"
              + (f" and {e2e['steps']} end to end" if e2e else "")
              + ", held-out PSNR to "
              f"the pipeline decoder {held['psnr_db']} dB"
              + (f", judge agreement {held['judge_agreement']}" if "judge_agreement" in held
                 else ""))
        return 0

    return run_command(work)


__all__ = ["CONDITIONS", "JPEG_GAIN", "SHIFT", "TRAINED", "WARMUP", "averaging_shifts",
           "differentiable_jpeg", "initial_vae", "latent_mismatch", "main", "real_attack", "run",
           "stand_in", "through_channel", "train_mark_vae"]

if __name__ == "__main__":
    sys.exit(main())
