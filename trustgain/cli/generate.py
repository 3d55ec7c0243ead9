"""``trustgain generate``: run a diffusers pipeline through the configured trust stages."""

from __future__ import annotations

from pathlib import Path

import click

from trustgain.cli.common import (
    emit,
    json_option,
    keyring_option,
    load_keyring,
    note,
    progress_option,
)
from trustgain.config import PipelineConfig
from trustgain.errors import OutputExistsError, TrustgainError
from trustgain.pipeline import TrustPipeline
from trustgain.provenance.verify import sidecar_path
from trustgain.stage import build_stage, resolve_stages
from trustgain.types import MAX_SEED

_SUFFIX_FORMAT = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def load_diffusers(model: str, device: str | None, no_progress: bool):
    """``DiffusionPipeline.from_pretrained(model)`` on ``device``, or a one-line error."""
    import torch
    from diffusers import DiffusionPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if no_progress:
        import diffusers.utils.logging
        import transformers.utils.logging

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    try:
        pipe = DiffusionPipeline.from_pretrained(model)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrustgainError(
            f"cannot load model '{model}': {first}",
            hint="give a local folder saved with save_pretrained, or a hub id "
            "reachable from this machine",
        ) from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=no_progress, leave=False)
    return pipe


def _outputs(output: Path, n: int) -> list[Path]:
    if n == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(n)]


@click.command()
@click.argument("prompt")
@click.option(
    "--model",
    default=None,
    help="Diffusers model id or local folder [default: the embedded trustgain-mini-sd].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default="trustgain.png",
    show_default=True,
    help="Image file (.png or .jpg); -0, -1... added for several.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="trustgain.json with the stage list and settings.",
)
@click.option(
    "--stage",
    "stage_names",
    multiple=True,
    help="Add a stage by name (after those of --config); see `trustgain stages`.",
)
@click.option("--negative-prompt", default=None)
@click.option("--steps", "num_inference_steps", type=click.IntRange(1, 1000), default=None)
@click.option("--guidance", "guidance_scale", type=float, default=None)
@click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    default=None,
    help="Random seed [default: random, recorded in the provenance record].",
)
@click.option("--height", type=click.IntRange(8, 8192), default=None)
@click.option("--width", type=click.IntRange(8, 8192), default=None)
@click.option("-n", "--num-images", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "mps"]),
    default=None,
    help="[default: cuda when available, else cpu]",
)
@click.option("--no-sidecar", is_flag=True, help="Do not write FILE.trustgain.json beside it.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@keyring_option
@json_option
@progress_option
def generate(
    prompt: str,
    model: str,
    output: str,
    config_path: str | None,
    stage_names: tuple[str, ...],
    negative_prompt: str | None,
    num_inference_steps: int | None,
    guidance_scale: float | None,
    seed: int | None,
    height: int | None,
    width: int | None,
    num_images: int,
    device: str | None,
    no_sidecar: bool,
    force: bool,
    keyring_path: str | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Generate images for PROMPT, run the trust stages, and write signed files.

    \b
    Examples:
      trustgain generate "a handwritten seven" -o seven.png      # embedded model
      trustgain generate "a red bicycle" --model ./my-model -o bike.png
      trustgain generate "a cat" --model ./sd --stage generate.keyed_latents --seed 7
      trustgain generate "a cat" --model ./sd --config trustgain.json -n 4 --json
    """
    out = Path(output)
    fmt = _SUFFIX_FORMAT.get(out.suffix.lower())
    if fmt is None:
        raise click.BadParameter(
            "the file name must end in .png, .jpg or .jpeg", param_hint="--output"
        )
    paths = _outputs(out, num_images)
    if not force:
        for path in paths + ([] if no_sidecar else [sidecar_path(p) for p in paths]):
            if path.exists():
                raise OutputExistsError(path)
    config = PipelineConfig.load(config_path) if config_path else PipelineConfig()
    stages = resolve_stages([*config.stages, *(build_stage(n) for n in stage_names)])
    keyring = load_keyring(keyring_path)  # before the slow model load: fail fast
    if model is None:
        from trustgain.models import MINI_SD_ID, mini_sd_path

        pipe, model = load_diffusers(str(mini_sd_path()), device, no_progress), MINI_SD_ID
        num_inference_steps = num_inference_steps or 25  # what its model card measured
    else:
        pipe = load_diffusers(model, device, no_progress)
    from trustgain.generators.diffusers import DiffusersGenerator

    trust = TrustPipeline(
        DiffusersGenerator(pipe, model_id=model),
        stages,
        keyring=keyring,
        output_format=fmt,
        jpeg_quality=config.jpeg_quality,
    )
    artifact = trust(
        prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        seed=seed,
        height=height,
        width=width,
        num_images_per_prompt=num_images,
    )
    written = [
        str(artifact.save(p, index=i, overwrite=force, sidecar=not no_sidecar))
        for i, p in enumerate(paths)
    ]
    record = artifact.record.record
    if not as_json:
        note(f"signed by {record['signer']['key_id']}; verify with: trustgain verify {written[0]}")
    emit(
        {
            "files": written,
            "record_id": record["record_id"],
            "seed": artifact.request.seed,
            "stages": [s["name"] for s in record["stages"]],
        },
        as_json,
        "\n".join(written),
    )
