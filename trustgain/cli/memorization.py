"""``trustgain audit memorization-index`` / ``memorization``: build and use the near-copy guard.

The index (:mod:`trustgain.privacy.memorization`) is what the ``privacy.memorization`` stage
reads (its ``index`` parameter); these commands make one from folders of images and check a
folder of outputs against it.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from trustgain.cli.common import (
    collect_images,
    emit,
    json_option,
    note,
    progress,
    progress_option,
)
from trustgain.cli.watermark import IMAGE_SUFFIXES
from trustgain.errors import InputError
from trustgain.watermark.images import open_image


def _images(folder: str, what: str, size: int, quiet: bool) -> tuple[list, list[Path]]:
    """Every image under ``folder`` as a ``size`` x ``size`` RGB PIL image (one-line errors)."""
    from PIL import Image

    files = [f for f, _ in collect_images([folder], IMAGE_SUFFIXES)]
    out = []
    for path in progress(files, desc=f"reading {what}", disable=quiet):
        with open_image(path) as image:
            out.append(image.convert("RGB").resize((size, size), Image.BILINEAR))
    return out, files


@click.command("memorization-index")
@click.option("--members", required=True, type=click.Path(file_okay=False, exists=True),
              help="Folder of the training images the guard protects.")
@click.option("--reference", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder of public images of the same kind (not training images); strongly "
                   "recommended: the score divides by the distance to them.")
@click.option("--calibration", required=True, type=click.Path(file_okay=False, exists=True),
              help="Folder of held-out generations known not to copy the members (outputs of "
                   "a model that never saw them); sets the threshold.")
@click.option("--rate", default=0.005, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="False-flag rate the threshold is calibrated for.")
@click.option("--channels", type=click.Choice(["max", "rgb"]), default="max",
              show_default=True, help="max: one 'ink' channel (max of R, G, B); rgb: colour.")
@click.option("--size", default=32, show_default=True, type=click.IntRange(4, 512),
              help="Side the images are compared at.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="Neighbours in the score's denominator.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Index file to write (.npz, mode 0600: it holds downscaled members).")
@click.option("--force", "--overwrite", "overwrite", is_flag=True,
              help="Replace an existing index file.")
@progress_option
@json_option
def memorization_index(members, reference, calibration, rate, channels, size, k, output,
                       overwrite, no_progress, as_json):
    """Build and calibrate the index of the privacy.memorization guard.

    The stage then reads it: in trustgain.json,
    {"format": "trustgain.config", "version": 1,
    "stages": [{"name": "privacy.memorization", "settings": {"index": "guard.npz"}}]}.

    \b
    Examples:
      trustgain audit memorization-index --members train/ --reference public/ \\
          --calibration base-outputs/ -o guard.npz
      trustgain generate "a 7" --model ./ft --config trustgain.json
    """
    from trustgain.privacy.memorization import build_index, calibrate

    if Path(output).exists() and not overwrite:
        raise InputError(f"{output} exists", hint="pass --force to replace it")
    mem, _ = _images(members, "members", size, no_progress)
    ref = _images(reference, "reference", size, no_progress)[0] if reference else None
    cal, _ = _images(calibration, "calibration outputs", size, no_progress)
    if ref is None:
        note("no --reference: the score compares against the members themselves, which misses "
             "loose copies of members that resemble other members")
    index = calibrate(build_index(mem, reference=ref, size=size, k=k, channels=channels), cal,
                      target_rate=rate)
    path = index.save(output, overwrite=overwrite)
    emit({"index": str(path), "members": len(mem), "reference": 0 if ref is None else len(ref),
          "calibration": len(cal), "threshold": index.threshold, "rate": rate,
          "channels": channels, "sha256": index.digest},
         as_json,
         f"{path}: {len(mem)} members, {0 if ref is None else len(ref)} reference images, "
         f"threshold {index.threshold:.4f} from {len(cal)} calibration outputs at rate {rate:g}")


@click.command("memorization")
@click.argument("outputs", nargs=-1, required=True)
@click.option("--index", "index_path", required=True, type=click.Path(dir_okay=False,
              exists=True), help="Index made by `trustgain audit memorization-index`.")
@progress_option
@json_option
def memorization(outputs, index_path, no_progress, as_json):
    """Flag outputs that are near-copies of the indexed training images.

    Prints one line per image (score and flag; which member matched is never shown) and a
    summary; exits with 1 when any image is flagged.

    \b
    Examples:
      trustgain audit memorization --index guard.npz outputs/
      trustgain audit memorization --index guard.npz a.png b.png --json
    """
    from trustgain.privacy.memorization import load_index

    index = load_index(index_path)
    if index.threshold is None:
        raise InputError(f"{index_path}: the index is not calibrated",
                         hint="build it with `trustgain audit memorization-index`")
    files = [f for f, _ in collect_images(outputs, IMAGE_SUFFIXES)]
    images = []
    for path in progress(files, desc="reading outputs", disable=no_progress):
        with open_image(path) as image:
            images.append(image.convert("RGB"))
    _, ratio = index.score(images)
    flagged = ratio < index.threshold
    rows = [{"file": str(f), "score": round(float(r), 4), "flagged": bool(x)}
            for f, r, x in zip(files, ratio, flagged, strict=True)]
    lines = [f"{'FLAGGED' if r['flagged'] else 'ok     '}  {r['score']:.4f}  {r['file']}"
             for r in rows]
    summary = (f"{int(np.sum(flagged))} of {len(files)} flagged as near-copies "
               f"(score < {index.threshold:.4f})")
    emit({"threshold": index.threshold, "flagged": int(np.sum(flagged)), "images": rows},
         as_json, "\n".join([*lines, summary]))
    if flagged.any():
        raise SystemExit(1)
