"""Loading a diffusers pipeline for a command: one-line errors, path checks, quiet logs.

``DiffusionPipeline.from_pretrained`` takes a hub id or a folder; given a folder that is not
there it answers with the hub's "Repo id must use alphanumeric chars" message, and given a
file with a long explanation. :func:`check_model_source` says what is wrong in the words of
the path the user typed, and leaves hub ids (``org/name``) to ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trustgain.errors import InputError

LATENT_T2I_PARTS = ("unet", "vae", "tokenizer", "text_encoder", "scheduler")


def error_line(exc: BaseException) -> str:
    """The first line of a loader's error (hub and file errors run to many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _looks_like_path(model: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else is meant as a local path."""
    if model.startswith((".", "/", "~")) or "\\" in model:
        return True
    return model.count("/") > 1 or Path(model).suffix.lower() in {
        ".json", ".safetensors", ".bin", ".ckpt", ".pt", ".gguf"}


def check_model_source(model: str) -> None:
    """Refuse, in one line, a model path that does not exist or is a file, before loading."""
    path = Path(model).expanduser()
    if path.is_file():
        raise InputError(f"model {model!r} is a file; give the folder written by "
                         "save_pretrained (the one holding model_index.json)")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InputError(f"model folder {model!r} has no model_index.json: not a diffusers "
                             "pipeline saved with save_pretrained")
        return
    if _looks_like_path(model):
        raise InputError(f"model {model!r}: no such folder")


def load_pipeline(model: str, device: str | None, *, need: tuple[str, ...] = (),
                  purpose: str = "this command", quiet: bool = True) -> Any:
    """``DiffusionPipeline.from_pretrained(model)`` moved to ``device``, or a one-line error.

    ``trustgain-mini-sd`` names the embedded model; ``device`` None picks cuda when available.

    ``need`` names the components the command uses (``LATENT_T2I_PARTS`` for audits and
    detection); a pipeline without one of them is refused before any work starts.
    """
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    from trustgain.models import MINI_SD_ID, mini_sd_path

    source = str(mini_sd_path()) if model == MINI_SD_ID else model
    check_model_source(source)
    local = Path(source).expanduser()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        pipe = DiffusionPipeline.from_pretrained(str(local) if local.is_dir() else source)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load model {model!r}: {error_line(exc)}",
                         hint="give a local folder saved with save_pretrained, or a hub id "
                              "reachable from this machine") from None
    finally:
        dlogging.set_verbosity(verbosity)
    for part in need:
        if getattr(pipe, part, None) is None:
            raise InputError(f"{model!r} has no {part}: {purpose} needs a latent text-to-image "
                             "diffusion pipeline (UNet, VAE, text encoder, tokenizer)")
    pipe.set_progress_bar_config(disable=quiet, leave=False)
    return pipe.to(device)
