"""``trustgain watermark detect-latent``: look for the in-generation mark (``watermark.latent``).

Per file: when the image carries (or sits beside) a provenance record that verifies under a
trusted key and holds a ``watermark.latent`` stage of this keyring, the record's nonce and
payload are used ("record" mode, the strongest test); otherwise every counter nonce is tried
and the payload decoded blind ("blind" mode). Detection needs the generating model: the image
is VAE-encoded (with the model's detector-side encoder where it ships one) and DDIM-inverted,
and the elements are weighed by the reliability fitted for that encoder where the model ships
one (``vae_detector/reliability.json``), else by |z| rank.
"""

from __future__ import annotations

from pathlib import Path

import click

from trustgain.cli.common import (
    collect_images,
    device_option,
    emit,
    json_option,
    keyring_option,
    load_keyring,
    note,
    progress,
    progress_option,
)
from trustgain.cli.watermark import IMAGE_SUFFIXES
from trustgain.errors import TrustgainError
from trustgain.watermark.images import open_image

CROP_SCALE = 0.7071  # also try undoing a centre crop to half the area (as the benchmark does)


def require_mark_vae(model: str | None) -> None:
    """Usage error unless ``model`` has a mark VAE: a quick check before slow work."""
    from trustgain.models import mark_vae_folder

    if mark_vae_folder(model) is None:
        raise click.UsageError(f"{model} has no vae_mark folder (make one with "
                               "python -m trustgain.watermark.mark_vae)")


def swap_mark_vae(pipe, model: str | None):
    """Put ``model``'s mark VAE into ``pipe`` (its device and dtype) and return it; a usage error
    when it has another latent space than the pipeline's own VAE."""
    from trustgain.models import mark_vae_for
    from trustgain.watermark.mark_vae import latent_mismatch

    require_mark_vae(model)
    vae = mark_vae_for(model, str(pipe.vae.device), pipe.vae.dtype)
    problem = latent_mismatch(vae, pipe.vae)
    if problem:
        raise click.UsageError(f"the vae_mark of {model} does not fit its pipeline: {problem}")
    pipe.vae = vae
    return vae


def _latent_params(record: dict, key_id: str) -> tuple[dict | None, str]:
    """The latent stage's params of a verified ``record`` and ``""``, or None and why not (no
    such stage, or marked under another key than ``key_id``)."""
    from trustgain.watermark.latent import STAGE

    stage = next((s for s in record.get("stages", ()) if s.get("name") == STAGE), None)
    if stage is None:
        return None, f"the record has no '{STAGE}' stage"
    if stage["params"].get("key_id") != key_id:
        return None, (f"marked under {stage['params'].get('key_id')}, not under this "
                      f"keyring's {key_id}")
    return stage["params"], ""


def _drawn_with_mark(record: dict) -> bool:
    return record.get("generator", {}).get("vae") == "vae_mark"


def _record_params(path: Path, key_id: str, trusted: list) -> tuple[dict, int, bool] | None:
    """(stage params, output index, drawn with a mark VAE) from a record that verifies under a
    trusted key and was marked under ``key_id``; None otherwise (no record, re-encoded file,
    other key)."""
    from trustgain.provenance.verify import verify_file

    try:
        verified = verify_file(path, trusted=trusted)
    except TrustgainError:
        return None
    params, _ = _latent_params(verified.record, key_id)
    if params is None:
        return None
    return params, verified.output_index, _drawn_with_mark(verified.record)


def _given_record(path: str, key_id: str, trusted: list) -> tuple[dict, int | None, bool]:
    """(stage params, output index or None, drawn with a mark VAE) from a record file given
    with ``--record`` (a sidecar or a record exported from a file): its signature must verify
    under a trusted key and its mark must be under ``key_id``; a one-line usage error if not."""
    from trustgain.provenance.record import MAX_RECORD_BYTES, SignedRecord
    from trustgain.provenance.verify import verify_signature

    try:
        with open(path, "rb") as fh:
            text = fh.read(MAX_RECORD_BYTES + 1)
        signed, index = SignedRecord.from_envelope(text)
        verify_signature(signed, trusted)
    except OSError as exc:
        raise click.UsageError(f"--record {path}: {exc.strerror}") from None
    except TrustgainError as exc:
        raise click.UsageError(f"--record {path}: {exc}") from None
    params, why = _latent_params(signed.record, key_id)
    if params is None:
        raise click.UsageError(f"--record {path}: {why}")
    return params, index, _drawn_with_mark(signed.record)


def _read_one(image, pipe, key, params, index, *, steps, fpr, encoder, prompt, reliability,
              guidance=None, prompted_reliability=None, also_unprompted=False,
              combine="best"):
    from trustgain.watermark.latent_invert import detect_latent, inversion_guidance

    common = {"fpr": fpr, "encoder": encoder, "prompt": prompt, "scales": (1.0, CROP_SCALE),
              "reliability": reliability, "prompted_reliability": prompted_reliability,
              "also_unprompted": also_unprompted, "combine": combine,
              "guidance_scale": inversion_guidance(prompt, guidance, params)}
    if params is None:
        reading = detect_latent([image], pipe, key, num_inference_steps=steps, **common)[0]
        return "blind", reading, None
    run_steps = params.get("num_inference_steps") or steps
    nonces = [bytes.fromhex(n) for n in params["nonces"]]
    # a record of several outputs, which one this is unknown: one inversion, each nonce tried
    own = nonces if index is None else nonces[index]
    reading = detect_latent(
        [image], pipe, key, num_inference_steps=run_steps, payload_bits=params["payload_bits"],
        nonces=[own], expected_payloads=[params["payload"]], **common)[0]
    # which output of the record: the one named, or the nonce that matched best
    return "record", reading, reading.nonce_index if index is None else index


@click.command("detect-latent")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", required=True,
              help="The generating model: trustgain-mini-sd or a diffusers folder / hub id.")
@click.option("--steps", type=click.IntRange(1, 1000), default=25, show_default=True,
              help="Inversion steps when the record does not give the generation's.")
@click.option("--prompt", default="",
              help="The generation prompt, if known: read both ways, under it and under the "
              "empty prompt, keeping the better read at twice its p-value (twice the work; with "
              "--mark-vae, whose encoder suits the empty prompt, far stronger than the prompt "
              "alone under JPEG and noise).")
@click.option("--prompt-only", is_flag=True,
              help="With --prompt: read under it alone, not also under the empty prompt (half "
              "the work, p-value not doubled).")
@click.option("--guess-prompt/--no-guess-prompt", default=None,
              help="Without the prompt: guess it from each image (trustgain-mini-sd: its judge "
              "names the digit) and read both ways, under the guess and under the empty "
              "prompt, keeping the better read at twice its p-value (twice the inversions; "
              "stronger than either alone under JPEG and noise). Default: on for "
              "trustgain-mini-sd with --mark-vae, off otherwise; --no-guess-prompt reads under "
              "the empty prompt alone.")
@click.option("--combine", type=click.Choice(["best", "average"]), default=None,
              help="Reading both ways (--prompt or --guess-prompt): keep the better of the two "
              "reads at twice its p-value (best, the default), or read the mean of the two "
              "inversions once (average; the same inversions, no correction).")
@click.option("--guidance", type=click.FloatRange(0, 100), default=None,
              help="With --prompt or --guess-prompt: the generation's classifier-free guidance "
              "scale, inverted with it (default: the record's where it has one, else 1).")
@click.option("--record", "record_path", type=click.Path(dir_okay=False), default=None,
              help="Read every input against this signed record (a .trustgain.json sidecar): "
              "for copies that lost their own, e.g. re-encoded or cropped. A record of several "
              "outputs is tried against each, at that many times the p-value.")
@click.option("--fpr", type=click.FloatRange(1e-12, 0.5), default=1e-6, show_default=True,
              help="Detected when the (exact) p-value is at most this.")
@click.option("--pipeline-encoder", is_flag=True,
              help="Encode with the pipeline's own VAE, not its detector-side encoder.")
@click.option("--mark-vae", is_flag=True,
              help="The images were generated with the model's mark VAE (vae_mark, made by "
              "python -m trustgain.watermark.mark_vae): encode with its encoder.")
@click.option("--rank-weights", is_flag=True,
              help="Weigh latent elements by |z| rank, not by the reliability fitted for the "
              "encoder in use (vae_detector/ or vae_mark/reliability.json).")
@device_option()
@keyring_option
@json_option
@progress_option
def detect_latent_cmd(inputs, model, steps, prompt, prompt_only, guess_prompt, combine, guidance,
                      record_path, fpr,
                      pipeline_encoder, mark_vae,
                      rank_weights, device, keyring_path, as_json, no_progress):
    """Look for your key's in-generation (latent) mark; p-value and payload per file.

    In record mode the JSON's output_index says which output of the record the file is: the
    one the sidecar names, or, for a record of several outputs read without it, the output
    whose nonce matched best. Exit code 1 if any file could not be read.

    \b
    Examples:
      trustgain watermark detect-latent out.png --model trustgain-mini-sd
      trustgain watermark detect-latent outputs/ --model ./my-sd --steps 30 --json
      trustgain watermark detect-latent marked.png --model trustgain-mini-sd --mark-vae
      trustgain watermark detect-latent marked.png --model trustgain-mini-sd --mark-vae \\
          --prompt "a handwritten seven" --guidance 4
      trustgain watermark detect-latent marked.png --model trustgain-mini-sd \\
          --prompt "a handwritten seven" --prompt-only
      trustgain watermark detect-latent marked.png --model trustgain-mini-sd --mark-vae \\
          --no-guess-prompt
      trustgain watermark detect-latent copy.jpg --model trustgain-mini-sd --mark-vae \\
          --record marked.png.trustgain.json
    """
    if prompt and guess_prompt:
        raise click.UsageError("--prompt and --guess-prompt exclude each other")
    from trustgain.models import MINI_SD_ID

    if guess_prompt is None:  # the stronger read where the model has a guesser
        guess_prompt = mark_vae and not prompt and model == MINI_SD_ID
    if prompt_only and not prompt:
        raise click.UsageError("--prompt-only needs --prompt")
    if guidance is not None and not (prompt or guess_prompt):
        raise click.UsageError("--guidance needs --prompt or --guess-prompt (the empty prompt "
                               "is read unguided)")
    if guess_prompt and model not in (MINI_SD_ID, None):
        raise click.UsageError(f"--guess-prompt knows how to guess for trustgain-mini-sd only, "
                               f"not {model} (give --prompt)")
    if combine is not None and not ((prompt or guess_prompt) and not prompt_only):
        raise click.UsageError("--combine applies to reading both ways (--prompt or "
                               "--guess-prompt, without --prompt-only)")
    combine = combine or "best"
    if mark_vae and pipeline_encoder:
        raise click.UsageError("--mark-vae and --pipeline-encoder exclude each other")
    from trustgain.cli.audit import _load_pipe
    from trustgain.models import detector_vae_for, reliability_for
    from trustgain.provenance.verify import default_trusted_keys
    from trustgain.watermark.latent import latent_key

    files = collect_images(inputs, IMAGE_SUFFIXES)
    if mark_vae:
        require_mark_vae(model)  # before the keyring's passphrase and the slow model load
    ring = load_keyring(keyring_path)
    key = latent_key(ring)
    trusted = [ring.public_key, *default_trusted_keys()]
    given = None if record_path is None else _given_record(record_path, key.key_id, trusted)
    pipe = _load_pipe(model, device)
    if mark_vae:
        encoder = swap_mark_vae(pipe, model)  # inversion sizes and scaling follow it too
    else:
        encoder = None if pipeline_encoder else detector_vae_for(model, device)
    used = "mark" if mark_vae else "detector"
    if guess_prompt:
        from functools import partial

        from trustgain.models import guess_digit_prompts, load_judge

        prompt = partial(guess_digit_prompts, judge=load_judge(device))
    both_ways = bool(prompt) and not prompt_only  # under the (given or guessed) prompt and ""
    # inversions under the prompt read with the fit for them where the model ships one
    reliability = prompted_reliability = None
    if encoder is not None and not rank_weights:
        reliability = reliability_for(model, used, prompted=bool(prompt) and not both_ways)
        if both_ways:  # the empty prompt's fit and the prompted one
            prompted_reliability = reliability_for(model, used, prompted=True)
    results, failed = [], 0
    for src, _ in progress(files, desc="detect", disable=no_progress or len(files) < 2):
        try:
            with open_image(src) as opened:
                image = opened.convert("RGB")
            found = given or _record_params(src, key.key_id, trusted)
            params, index, drawn_with_mark = found if found else (None, 0, mark_vae)
            if drawn_with_mark != mark_vae:
                note(f"{src}: its record says it was drawn with the "
                     f"{'mark VAE' if drawn_with_mark else 'pipeline VAE'}; read it "
                     f"{'with' if drawn_with_mark else 'without'} --mark-vae")
            mode, r, output = _read_one(
                image, pipe, key, params, index, steps=steps, fpr=fpr, encoder=encoder,
                prompt=prompt, reliability=reliability, guidance=guidance,
                prompted_reliability=prompted_reliability, also_unprompted=both_ways,
                combine=combine)
        except (TrustgainError, ValueError) as exc:
            failed += 1
            results.append({"file": str(src), "status": "error", "reason": str(exc)})
            continue
        results.append({"file": str(src), "status": "ok", "mode": mode, "detected": r.detected,
                        "p_value": r.p_value, "payload": r.payload, "scale": r.scale,
                        "prompted": r.prompted, "output_index": output})
    human = "\n".join(
        f"{r['file']}: error ({r['reason']})" if r["status"] == "error" else
        f"{r['file']}: {'DETECTED' if r['detected'] else 'not detected'} p={r['p_value']:.3g} "
        f"({r['mode']} mode)" + (f" payload {r['payload']}" if r["detected"] else "")
        for r in results)
    emit({"key_id": key.key_id, "fpr": fpr, "model": model,
          "prompt": "guessed" if guess_prompt else "given" if prompt else "none",
          "both_ways": both_ways, "combine": combine if both_ways else None,
          "encoder": "pipeline" if encoder is None else used,
          "weights": "rank" if reliability is None else "reliability", "files": results},
         as_json, human)
    if failed:
        note(f"{failed} file(s) could not be read")
        raise SystemExit(1)

