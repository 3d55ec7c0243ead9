"""``trustgain watermark detect-text``: look for your key's green-list mark in text files.

Detection needs only the generating model's tokenizer and vocabulary size (no weights, no
model run): each file is read as UTF-8, tokenized, and its green tokens counted under the key
of ``watermark.text``; the p-value is the exact binomial tail.
"""

from __future__ import annotations

import click

from trustgain.cli.common import (
    collect_images,
    emit,
    json_option,
    keyring_option,
    load_keyring,
    note,
    progress,
    progress_option,
)
from trustgain.errors import InputError, TrustgainError

TEXT_SUFFIXES = {".txt", ".md"}
MAX_TEXT_BYTES = 10 * 2**20  # generated texts are far smaller; never read gigabytes


def _read(path) -> str:
    """The file as UTF-8 text; a device, pipe or folder, or more than the cap, is refused."""
    if not path.is_file():
        raise InputError("not a regular file")
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"not readable ({exc.strerror or exc})") from None
    if len(data) > MAX_TEXT_BYTES:
        raise InputError(f"larger than {MAX_TEXT_BYTES // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})") from None


@click.command("detect-text")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", required=True,
              help="The generating model: a transformers folder, hub id or .gguf file "
                   "(its tokenizer and vocabulary are read, not its weights).")
@click.option("--gguf-file", default=None, help="A GGUF file inside --model's folder.")
@click.option("--fpr", type=click.FloatRange(1e-12, 0.5), default=1e-3, show_default=True,
              help="Detected when the (exact) p-value is at most this.")
@click.option("--greenlist-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.25, show_default=True, help="The stage's greenlist_ratio.")
@keyring_option
@json_option
@progress_option
def detect_text_cmd(inputs, model, gguf_file, fpr, greenlist_ratio, keyring_path, as_json,
                    no_progress):
    """Look for your key's text mark (watermark.text) in .txt/.md files; p-value per file.

    Exit code 1 if any file could not be read.

    \b
    Examples:
      trustgain watermark detect-text answer.txt --model ./SmolLM2-135M-Instruct.Q4_1.gguf
      trustgain watermark detect-text outputs/ --model my-org/my-lm --fpr 1e-6 --json
    """
    from trustgain.generators.text import load_tokenizer
    from trustgain.watermark.text import STAGE, TextDetector, text_key

    files = collect_images(inputs, TEXT_SUFFIXES)
    ring = load_keyring(keyring_path)
    derived = ring.derive(STAGE, "greenlist")
    tokenizer, config = load_tokenizer(model, gguf_file=gguf_file)
    detector = TextDetector(text_key(derived), tokenizer=tokenizer, model_config=config,
                            greenlist_ratio=greenlist_ratio)
    results, failed = [], 0
    for src, _ in progress(files, desc="detect", disable=no_progress or len(files) < 2):
        try:
            found = detector(_read(src), alpha=fpr)
        except (TrustgainError, ValueError) as exc:
            failed += 1
            results.append({"file": str(src), "status": "error", "reason": str(exc)})
            continue
        results.append({"file": str(src), "status": "ok", **found.to_dict()})
    human = "\n".join(
        f"{r['file']}: error ({r['reason']})" if r["status"] == "error" else
        f"{r['file']}: {'DETECTED' if r['detected'] else 'not detected'} p={r['p_value']:.3g} "
        f"({r['green']} of {r['scored']} tokens green)"
        for r in results)
    emit({"key_id": derived.key_id, "fpr": fpr, "model": model, "files": results},
         as_json, human)
    if failed:
        note(f"{failed} file(s) could not be read")
        raise SystemExit(1)
