"""``trustgain generate``: run a diffusers pipeline through the configured trust stages."""

from __future__ import annotations

from pathlib import Path

import click

from trustgain.cli.common import (
    FiniteFloat,
    device_option,
    emit,
    json_option,
    keyring_option,
    load_keyring,
    note,
    progress_option,
)
from trustgain.config import PipelineConfig
from trustgain.errors import OutputExistsError
from trustgain.generators.loading import check_model_source, load_pipeline
from trustgain.pipeline import TrustPipeline
from trustgain.provenance.verify import sidecar_path
from trustgain.stage import build_stage, resolve_stages
from trustgain.types import MAX_SEED

_SUFFIX_FORMAT = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def _multiple_of_8(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Stable Diffusion pipelines take sizes divisible by 8: say so before the model loads."""
    if value is not None and value % 8:
        raise click.BadParameter(f"{value} is not a multiple of 8 (try {value - value % 8} or "
                                 f"{value - value % 8 + 8})", ctx, param)
    return value


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
    default=None,
    help="Image file (.png or .jpg); -0, -1... added for several "
    "[default: trustgain.png, or .jpg when trustgain.json says output_format jpeg].",
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
@click.option("--guidance", "guidance_scale", type=FiniteFloat(0, 100), default=None,
              help="Classifier-free guidance scale [default: the pipeline's].")
@click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    default=None,
    help="Random seed [default: random, recorded in the provenance record].",
)
@click.option("--height", type=click.IntRange(8, 8192), default=None, callback=_multiple_of_8,
              help="Pixels, a multiple of 8 [default: the model's].")
@click.option("--width", type=click.IntRange(8, 8192), default=None, callback=_multiple_of_8,
              help="Pixels, a multiple of 8 [default: the model's].")
@click.option("-n", "--num-images", type=click.IntRange(1, 64), default=1, show_default=True)
@device_option(default=None)
@click.option("--no-sidecar", is_flag=True, help="Do not write FILE.trustgain.json beside it.")
@click.option("--c2pa-cert", "c2pa_cert", type=click.Path(dir_okay=False), default=None,
              help="Also add C2PA Content Credentials, signed with the keyring's key and this "
              "certificate chain (PEM; see `trustgain c2pa cert`).")
@click.option("--mark-vae", is_flag=True,
              help="Decode with the model's mark VAE (vae_mark): the watermark.latent mark "
              "then survives attacks far better; detect with `detect-latent --mark-vae`.")
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
    c2pa_cert: str | None,
    mark_vae: bool,
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
      trustgain generate "a seven" -o seven.png --c2pa-cert signer.pem   # + C2PA
      trustgain generate "a handwritten seven" --stage watermark.latent --mark-vae -o 7.png
    """
    config = PipelineConfig.load(config_path) if config_path else PipelineConfig()
    out = Path(output or ("trustgain.jpg" if config.output_format == "jpeg" else "trustgain.png"))
    fmt = _SUFFIX_FORMAT.get(out.suffix.lower())
    if fmt is None:
        raise click.BadParameter(
            "the file name must end in .png, .jpg or .jpeg", param_hint="--output"
        )
    if config_path and fmt != config.output_format:
        note(f"{config_path} says output_format {config.output_format}; writing {fmt}, "
             f"as the name {out.name} says")
    from trustgain.prompting.normalize import normalize_text

    if not normalize_text(prompt)[0]:  # "" or only spaces and invisible characters
        note("the prompt is empty once invisible characters are dropped: the model draws an "
             "unconditional sample")
    paths = _outputs(out, num_images)
    if not force:
        for path in paths + ([] if no_sidecar else [sidecar_path(p) for p in paths]):
            if path.exists():
                raise OutputExistsError(path)
    stages = resolve_stages([*config.stages, *(build_stage(n) for n in stage_names)])
    if model is not None:
        check_model_source(model)  # a mistyped path, before asking for a passphrase
    if mark_vae:
        from trustgain.cli.watermark_latent import require_mark_vae, swap_mark_vae

        require_mark_vae(model)
    keyring = load_keyring(keyring_path)  # before the slow model load: fail fast
    credentials = None
    if c2pa_cert is not None:
        from trustgain.cli.c2pa import read_pem
        from trustgain.provenance.credentials import ContentCredentials

        credentials = ContentCredentials(keyring, read_pem(c2pa_cert, "certificate chain"))
    if model is None:
        from trustgain.models import MINI_SD_ID, mini_sd_path

        pipe, model = load_pipeline(str(mini_sd_path()), device, quiet=no_progress), MINI_SD_ID
        num_inference_steps = num_inference_steps or 25  # what its model card measured
    else:
        pipe = load_pipeline(model, device, quiet=no_progress)
    if mark_vae:
        swap_mark_vae(pipe, model)
    from trustgain.generators.diffusers import DiffusersGenerator

    local = Path(model).expanduser().is_absolute() and Path(model).expanduser().exists()
    trust = TrustPipeline(  # a local folder is recorded by its name, never this machine's path
        DiffusersGenerator(pipe, model_id=Path(model).name if local else model),
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
        str(artifact.save(p, index=i, overwrite=force, sidecar=not no_sidecar,
                          credentials=credentials))
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
