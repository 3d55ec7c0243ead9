"""What a detector-encoder training run starts from: its settings (:class:`Settings`, the
evaluation's fixed attacks and false-positive rate) and their checks, the error it raises, the
pipeline and its geometry, the prompts, and the encoder to start from (``--init``).

Part of :mod:`trustgain.watermark.detector_train`, which re-exports its public names.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from trustgain.errors import TrustgainError

#: Attacks of :data:`trustgain.watermark.attacks.SUITE` the evaluation reports.
EVAL_ATTACKS = ("none", "jpeg50", "resize0.5_restored", "crop_centre_50", "blur1", "noise0.05")
#: The evaluation's crop: undone with :func:`~trustgain.watermark.latent_invert.unzoom` at
#: sqrt of this area, loss/score masked.
EVAL_CROP = ("crop_centre_50", 0.5)
#: False-positive rate of the sign-agreement detection rate reported by the evaluation.
EVAL_FPR = 1e-6
#: Prompts per digit for the shipped digits model (200 prompts, as the prototype used).
DIGIT_PROMPTS_PER_DIGIT = 20


class DetectorTrainError(TrustgainError):
    """Detector-encoder training cannot run with what it was given."""


@dataclasses.dataclass
class Settings:
    """Hyper-parameters; the defaults are the prototype's measured run."""

    samples: int = 100_000
    eval_samples: int = 2_000
    x0_seconds: float = 120.0
    e2e_seconds: float = 90.0
    x0_steps: int | None = None  # step caps (None: only the time budget)
    e2e_steps: int | None = None
    batch: int = 1024
    e2e_batch: int = 512
    gen_batch: int = 256
    lr: float = 5e-4
    e2e_lr: float = 1e-4
    weight_decay: float = 1e-4
    steps: int = 25  # sampler and inversion steps
    guidance: float = 4.0
    seed: int = 12_345
    eval_seed: int = 999_001
    workers: int = 0  # attack processes; 0: min(16, CPUs); 1: in this process
    deadline: float | None = None  # seconds for data + training + evaluation; None: no limit
    reliability_samples: int = 2_000  # fit reliability.json for the new encoder; 0: none


def check_settings(settings: Settings) -> None:
    """Raise a one-line :class:`DetectorTrainError` (naming the command-line flag) for a
    setting training cannot use: counts below 1, negative caps or seeds, learning rates that
    are not finite and positive, times or guidance that are not finite and non-negative."""

    def flag(name: str) -> str:
        return f"--{name.replace('_', '-')}"

    for name in ("samples", "eval_samples", "batch", "e2e_batch", "gen_batch", "steps"):
        if getattr(settings, name) < 1:
            raise DetectorTrainError(f"{flag(name)} must be at least 1")
    for name in ("x0_steps", "e2e_steps", "workers", "seed", "eval_seed",
                 "reliability_samples"):
        value = getattr(settings, name)
        if value is not None and value < 0:
            raise DetectorTrainError(f"{flag(name)} must not be negative")
    for name in ("lr", "e2e_lr"):
        value = getattr(settings, name)
        if not (math.isfinite(value) and value > 0):
            raise DetectorTrainError(f"{flag(name)} must be a finite positive number, "
                                     f"not {value!r}")
    for name in ("x0_seconds", "e2e_seconds", "guidance", "weight_decay"):
        value = getattr(settings, name)
        if not (math.isfinite(value) and value >= 0):
            raise DetectorTrainError(f"{flag(name)} must be a finite number >= 0, "
                                     f"not {value!r}")
    from trustgain.watermark.reliability_fit import MIN_SAMPLES

    if 0 < settings.reliability_samples < MIN_SAMPLES:
        raise DetectorTrainError(f"--reliability-samples must be 0 (none) or at least "
                                 f"{MIN_SAMPLES}")
    deadline = settings.deadline
    if deadline is not None and not (math.isfinite(deadline) and deadline > 0):
        raise DetectorTrainError("--deadline must be a positive number of seconds")


def non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [name for name, t in tensors
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite(model: Any, what: str = "the tuned encoder",
                 hint: str = "lower --lr / --e2e-lr") -> None:
    """Raise a one-line :class:`DetectorTrainError` when a weight of ``model`` (a
    ``torch.nn.Module``) is NaN or infinite: a diverged run must not be saved."""
    bad = non_finite(model.state_dict().items())
    if bad:
        raise DetectorTrainError(
            f"training diverged: {len(bad)} weight tensor(s) of {what} are not finite "
            f"(first: {bad[0]}); nothing written", hint=hint)


Log = Callable[[str], None]


def load_pipeline(model: str, device: str, progress: bool = True) -> Any:
    """``DiffusionPipeline.from_pretrained`` (``trustgain-mini-sd``: the shipped folder), checked
    for the parts training needs, on ``device``, progress bars off."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    from trustgain.models import MINI_SD_ID, mini_sd_path

    check_model(model)
    source = str(mini_sd_path()) if model == MINI_SD_ID else model
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    bars = tlogging.is_progress_bar_enabled()
    if not progress:
        dlogging.disable_progress_bar()
        tlogging.disable_progress_bar()  # the text encoder's "Loading weights" bar
    try:
        pipe = DiffusionPipeline.from_pretrained(source)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DetectorTrainError(f"cannot load model '{model}': {first}") from None
    finally:
        dlogging.set_verbosity(verbosity)
        if bars and not progress:
            tlogging.enable_progress_bar()
    check_pipeline(pipe, model)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def check_pipeline(pipe: object, model: str = "the model") -> None:
    """Raise a one-line :class:`DetectorTrainError` unless ``pipe`` is a latent text-to-image
    pipeline with a VAE (``AutoencoderKL``-like), a UNet, a scheduler and ``encode_prompt``."""
    missing = [name for name in ("vae", "unet", "scheduler")
               if getattr(pipe, name, None) is None]
    if missing:
        raise DetectorTrainError(
            f"{model} has no {'/'.join(missing)}: detector training needs a latent "
            "text-to-image pipeline (vae, unet, scheduler)"
        )
    if not hasattr(pipe.vae, "encoder") or not hasattr(pipe, "encode_prompt"):  # type: ignore
        raise DetectorTrainError(
            f"{model} is not a Stable-Diffusion-like pipeline (needs vae.encoder and "
            "encode_prompt)"
        )


def is_digits_model(model: str) -> bool:
    """Whether ``model`` names the shipped trustgain-mini-sd (by id or by its folder)."""
    from trustgain.models import MINI_SD_ID, mini_sd_path

    return model == MINI_SD_ID or Path(model).resolve() == mini_sd_path()


def load_prompts(model: str, prompts_file: str | os.PathLike | None) -> list[str]:
    """Prompts from ``prompts_file`` (one a line, blanks skipped) or, for the digits model,
    :func:`trustgain.bench.models.prompts_for`."""
    if prompts_file is not None:
        try:
            lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DetectorTrainError(f"cannot read prompts file {prompts_file}: {exc}") from None
        prompts = [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise DetectorTrainError(f"prompts file {prompts_file} has no prompts")
        return prompts
    if is_digits_model(model):
        from trustgain.bench.models import prompts_for

        return prompts_for(DIGIT_PROMPTS_PER_DIGIT)[0]
    raise DetectorTrainError(
        f"no prompts for {model}: pass --prompts FILE (one prompt a line, like the prompts the "
        "model will serve)"
    )


def geometry(pipe: Any) -> tuple[tuple[int, int, int], tuple[int, int], int]:
    """Latent shape (C, h, w), image size (H, W) and the pixels per latent cell."""
    config = pipe.unet.config
    factor = int(pipe.vae_scale_factor)
    shape = (int(config.in_channels), int(config.sample_size), int(config.sample_size))
    return shape, (shape[1] * factor, shape[2] * factor), factor


def check_init(init: str) -> None:
    """Refuse an ``--init`` that is neither ``"detector"`` nor a folder with a config.json
    (before the pipeline loads)."""
    if init != "detector" and not (Path(init) / "config.json").is_file():
        raise DetectorTrainError(f"--init {init}: not 'detector' nor a folder with an "
                                 "AutoencoderKL config.json")


def check_model(model: str) -> None:
    """Refuse, in one line, a model path that does not exist, is a file, or is a folder
    without model_index.json (see :func:`trustgain.generators.loading.check_model_source`);
    hub ids are left to ``from_pretrained``."""
    from trustgain.generators.loading import check_model_source
    from trustgain.models import MINI_SD_ID, mini_sd_path

    check_model_source(str(mini_sd_path()) if model == MINI_SD_ID else model)


def load_init(init: str, model: str, pipe: Any) -> Any:
    """The encoder to start from: ``"detector"`` (the model's own detector-side VAE, see
    :func:`trustgain.models.detector_vae_for`) or a folder this tool wrote. Its decoder must be
    the pipeline's: only the encoder is tuned, and detection pairs it with that decoder."""
    from diffusers import AutoencoderKL

    from trustgain.models import detector_vae_for

    check_init(init)
    if init == "detector":
        vae = detector_vae_for(model)
        if vae is None:
            raise DetectorTrainError(f"{model} has no detector encoder (no vae_detector folder)")
    else:
        vae = AutoencoderKL.from_pretrained(init)
    mine, theirs = pipe.vae.state_dict(), vae.state_dict()
    decoder = [k for k in mine if not k.startswith(("encoder.", "quant_conv."))]
    if set(mine) != set(theirs) or any(
            not torch.equal(mine[k].cpu().float(), theirs[k].cpu().float()) for k in decoder):
        raise DetectorTrainError(f"--init {init}: not an encoder for this pipeline (its "
                                 "decoder or layout differs from the pipeline's VAE)")
    return vae.float()
