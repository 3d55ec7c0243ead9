"""The embedded default models: small weights trained by this project, shipped in the package.

* ``trustgain-mini-sd``: a genuine ``StableDiffusionPipeline`` (AutoencoderKL, CLIP text
  encoder and tokenizer, UNet2DConditionModel, DDIM scheduler) trained from scratch on
  scikit-learn's handwritten digits, 32x32 RGB, prompts such as "a small red 7 in thick strokes".
* ``trustgain-digits-judge``: a small CNN that names the digit in an image; it measures whether
  generated pictures show the prompted digit.

Nothing heavy is imported here: torch, diffusers and transformers load on first use.
How they were trained: ``python -m trustgain.models.train --help`` and the README.md inside each
model folder. Any user's own model loads the usual way (``from_pretrained`` with an id or path).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

    from .judge import DigitsJudge

MINI_SD_ID = "trustgain-mini-sd"
JUDGE_ID = "trustgain-digits-judge"
_HERE = Path(__file__).resolve().parent

__all__ = ["JUDGE_ID", "MINI_SD_ID", "classify_digits", "detector_vae_for",
           "guess_digit_prompts", "judge_path", "load_detector_vae", "load_judge", "load_mini_sd",
           "mark_vae_folder", "mark_vae_for", "mini_sd_path", "reliability_for"]


def _folder(name: str, what: str) -> Path:
    path = _HERE / name
    if not (path / what).is_file():
        raise FileNotFoundError(
            f"the embedded model {name!r} is missing from {path} (expected {what}); "
            f"reinstall trustgain or retrain it with `python -m trustgain.models.train`"
        )
    return path


def mini_sd_path() -> Path:
    """Folder of the shipped ``trustgain-mini-sd`` pipeline (``from_pretrained`` accepts it)."""
    return _folder(MINI_SD_ID, "model_index.json")


def judge_path() -> Path:
    """Folder of the shipped digits judge (``model.safetensors`` + ``config.json``)."""
    return _folder(JUDGE_ID, "model.safetensors")


def load_mini_sd(device: str = "cpu", *, mark_vae: bool = False,
                 **kwargs: Any) -> StableDiffusionPipeline:
    """``StableDiffusionPipeline.from_pretrained`` on the shipped folder, moved to ``device``.

    ``mark_vae``: decode with the mark VAE (``vae_mark``, :func:`mark_vae_for`), whose images
    keep the ``watermark.latent`` mark through attacks far better (detect them with
    ``trustgain watermark detect-latent --mark-vae``). ``kwargs`` go to ``from_pretrained``
    (e.g. ``torch_dtype``); the progress bar is off.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # the fp16-on-disk note is expected, not a problem
    try:
        pipe = StableDiffusionPipeline.from_pretrained(mini_sd_path(), **kwargs)
    finally:
        dlogging.set_verbosity(verbosity)
    pipe.set_progress_bar_config(disable=True)
    if mark_vae:
        pipe.vae = mark_vae_for(MINI_SD_ID, dtype=pipe.vae.dtype)
    return pipe.to(device)


def load_detector_vae(device: str = "cpu") -> Any:
    """The detector-side VAE of trustgain-mini-sd: the pipeline's ``vae`` with the encoder (and
    ``quant_conv``) of ``vae_detector/encoder.safetensors``, tuned so that VAE-encode + DDIM
    inversion recovers the initial latents better (:mod:`trustgain.watermark.detector_train`).
    The decoder is the pipeline's own by construction. Only watermark detection uses it: pass
    it as ``encoder=`` to :func:`trustgain.watermark.latent_invert.detect_latent`."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    weights = _folder(MINI_SD_ID, "vae_detector/encoder.safetensors") / "vae_detector"
    vae = AutoencoderKL.from_pretrained(mini_sd_path(), subfolder="vae")
    tuned = load_file(weights / "encoder.safetensors")
    expected = {k for k in vae.state_dict() if k.startswith(("encoder.", "quant_conv."))}
    if set(tuned) != expected:
        raise ValueError(f"{weights / 'encoder.safetensors'} does not hold exactly the encoder "
                         "and quant_conv weights of the mini-sd VAE; reinstall trustgain")
    vae.load_state_dict(tuned, strict=False)
    return vae.to(device).eval()


def detector_vae_for(model: str | None, device: str = "cpu") -> Any:
    """The detector-side VAE for ``model``: trustgain-mini-sd's (``None`` or its id), else the
    ``vae_detector`` folder inside a model folder (a full ``AutoencoderKL``, as
    ``python -m trustgain.watermark.detector_train`` writes it); ``None`` when it has none."""
    if model is None or model == MINI_SD_ID:
        return load_detector_vae(device)
    folder = Path(model) / "vae_detector"
    if not (folder / "config.json").is_file():
        return None
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder).to(device).eval()


def mark_vae_for(model: str | None, device: str = "cpu", dtype: Any = None) -> Any:
    """The mark VAE of ``model``: the ``vae_mark`` folder (a full ``AutoencoderKL``, as
    ``python -m trustgain.watermark.mark_vae`` writes it) of trustgain-mini-sd (``None`` or its
    id) or inside a model folder; ``None`` when it has none. Its decoder is for generating
    latent-marked images (``pipe.vae = mark_vae_for(...)``), its encoder for detecting them.
    ``dtype``: the torch dtype to load it in (default float32)."""
    folder = mark_vae_folder(model)
    if folder is None:
        return None
    from diffusers import AutoencoderKL

    # loaded in the wanted dtype: a later .to(dtype) makes diffusers warn about fp32 modules
    return AutoencoderKL.from_pretrained(folder, torch_dtype=dtype).to(device).eval()


def mark_vae_folder(model: str | None) -> Path | None:
    """Where :func:`mark_vae_for` loads ``model``'s mark VAE from, without loading it (a quick
    check before a slow pipeline load); ``None`` when the model has none."""
    if model is None or model == MINI_SD_ID:
        return _folder(MINI_SD_ID, "vae_mark/config.json") / "vae_mark"
    folder = Path(model).expanduser() / "vae_mark"
    return folder if (folder / "config.json").is_file() else None


def reliability_for(model: str | None, vae: str = "detector", *, prompted: bool = False) -> Any:
    """The latent detector's per-element reliability for ``model`` (a
    :class:`~trustgain.watermark.latent_reliability.Reliability`), fitted for the VAE that
    detection encodes with: ``vae="detector"`` (``vae_detector/reliability.json``, as
    ``python -m trustgain.watermark.reliability_fit`` writes it) or ``"mark"``
    (``vae_mark/reliability.json``, images generated with the mark VAE), of trustgain-mini-sd
    (``None`` or its id) or of a model folder; ``None`` when the model has none.
    ``prompted``: the fit for inversions under the generation prompt and guidance
    (``reliability_prompted.json``, ``reliability_fit --prompted``), falling back to the
    plain one where the model has no such file."""
    from trustgain.watermark.latent_reliability import Reliability

    if vae not in ("detector", "mark"):
        raise ValueError(f"vae must be 'detector' or 'mark', not {vae!r}")
    sub = f"vae_{vae}"
    if model is None or model == MINI_SD_ID:
        path = _folder(MINI_SD_ID, f"{sub}/reliability.json") / sub
    else:
        path = Path(model) / sub
    if prompted and (path / "reliability_prompted.json").is_file():
        return Reliability.load(path / "reliability_prompted.json")
    path = path / "reliability.json"
    return Reliability.load(path) if path.is_file() else None


def load_judge(device: str = "cpu") -> DigitsJudge:
    """The shipped digits judge, in eval mode on ``device``."""
    from .judge import DigitsJudge

    return DigitsJudge.from_pretrained(judge_path(), device=device)


def guess_digit_prompts(images: Any, judge: DigitsJudge | None = None) -> list[str]:
    """A prompt for each image, guessed from the image: ``"a handwritten seven"`` for the digit
    the judge names. For latent-mark detection without the generation prompt
    (``detect_latent(prompt=guess_digit_prompts)``, ``detect-latent --guess-prompt``)."""
    from .data import WORDS

    digits, _ = classify_digits(images, judge)
    return [f"a handwritten {WORDS[int(d)]}" for d in digits]


def classify_digits(images: Any, judge: DigitsJudge | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Name the digit in each image: returns ``(digits, confidence)`` tensors.

    ``images``: a PIL image, a list of them, a tensor in [0, 1] ((N,) C, H, W) or a numpy array
    from diffusers' ``output_type="np"``. Uses the shipped judge unless one is given.
    """
    from .judge import classify

    return classify(judge if judge is not None else load_judge(), images)
