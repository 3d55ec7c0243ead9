"""Model cards (README.md in each model folder), rendered from recorded figures only.

    python -m trustgain.models.cards [--bench BENCH.json]

Training facts come from the ``training.json`` that ``trustgain.models.train`` writes beside the
weights; measured figures come from the JSON of ``python -m trustgain.bench models --json``,
quoted with the command that produced them. Without ``--bench`` the cards say what to run.
Hand-written (a few string templates) because no library renders this project's cards.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from trustgain.argtypes import run_command
from trustgain.errors import InputError
from trustgain.fileio import write_atomic

from . import JUDGE_ID, MINI_SD_ID

HERE = Path(__file__).resolve().parent

SPLIT = ("scikit-learn's `load_digits` (1,797 8x8 scans of handwriting, 0-16 grey levels), "
         "permuted with `numpy.random.default_rng(0)`; the last 360 are the judge's *test* "
         "split, the first 1,437 the *train* split (`trustgain.models.data.load_split`). "
         "Both models train on the train split only.")


def _measured(bench: dict[str, Any] | None, keys: tuple[str, ...], note: str = "") -> str:
    if not bench:
        return ("Not measured for these weights yet: run "
                "`python -m trustgain.bench models --json bench.json` and then "
                "`python -m trustgain.models.cards --bench bench.json`.\n")
    rows = [r for r in bench["rows"] if any(r["metric"].startswith(k) for k in keys)]
    lines = [f"Command: `{bench['command']}` ({bench['date']}, device {bench['device']}, "
             f"{bench['seconds']} s in all).", ""]
    if note:
        lines += [note, ""]
    lines += [
             "| metric | value | unit | target | note |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        ok = "" if r["ok"] is None else (" (met)" if r["ok"] else " (MISSED)")
        metric = r["metric"].replace("|", "\\|")
        lines.append(f"| {metric} | {r['value']:.4g} | {r['unit']} | "
                     f"{r['target']}{ok} | {r['note']} |")
    return "\n".join(lines) + "\n"


def mini_sd_card(log: dict[str, Any], bench: dict[str, Any] | None, note: str = "") -> str:
    """README.md of trustgain-mini-sd."""
    r = log.get("recipe", {})
    c, h, w = log.get("latent_shape", (4, 8, 8))
    sf = log.get("scaling_factor")
    origin = ""
    if log.get("unet_from"):
        origin = (f"\nText encoder and UNet were fine-tuned from `{log['unet_from']}` (its "
                  "weights as the starting point), not trained from scratch.\n")
    return f"""# {MINI_SD_ID}

A genuine diffusers `StableDiffusionPipeline`, trained from scratch by this project on
handwritten digits, small enough (about 9 MB of safetensors) to ship inside the package.
It exists so that trustgain's stages (keyed latents, `callback_on_step_end` hooks, DDIM
inversion, watermarks, provenance) run against a real text-to-image model with no model hub.

```python
from trustgain.models import load_mini_sd  # or from_pretrained(mini_sd_path())
pipe = load_mini_sd()
image = pipe("a red 7 in thick strokes", num_inference_steps=25, guidance_scale=4.0).images[0]
```

## Parts
- Tokenizer: `CLIPTokenizer`, BPE merges learnt with `tokenizers` on the training captions
  (every caption word is one token); max 32 tokens. Punctuation is not in the vocabulary.
- Text encoder: `CLIPTextModel`, 3 layers, width 64, trained jointly with the UNet.
- VAE: `AutoencoderKL`, RGB 32x32 <-> latents {c}x{h}x{w}, `scaling_factor` {sf}
  (1 / std of the training latents).
- UNet: `UNet2DConditionModel`, channels (48, 96, 96), cross-attention at {h}x{w} and
  {h // 2}x{w // 2}.
- Scheduler: `DDIMScheduler` (scaled-linear betas 0.00085-0.012, 1000 steps, `steps_offset=1`),
  epsilon prediction. UNet and VAE weights are stored in float16 and load as float32.

## Data
{SPLIT}

Each train scan is enlarged to 24x24, centred on a 32x32 black canvas and drawn with a random
look: size (small 0.55-0.65x, normal, large 1.18-1.28x), small digits in a corner half of the
time, a tilt of 18-28 degrees left or right (15% each), thin or thick strokes (grey
erosion / dilation, 20% each) and an ink colour (white half of the time, else red, green,
blue, yellow, cyan or magenta), plus uncaptioned jitter (shift up to ~2 px, rotation up to 6
degrees). The caption names the digit (word or numeral, seven phrasings) and names each
drawn attribute with probability 0.9, e.g. "a small cyan handwritten digit 2 in thin strokes",
"the large magenta number one", "a 9 written with thick lines". `{r.get('copies')}` renderings
per scan for the UNet; the VAE sees fresh renderings every step.

## Training
Recipe: `python -m trustgain.models.train mini-sd` (`trustgain/models/train_sd.py`): seed
{r.get('seed')}; VAE {r.get('vae_steps')} steps, batch {r.get('vae_batch')}, L1 + MSE +
{r.get('kl_weight')} x KL; then text encoder + UNet, batch {r.get('batch')}, AdamW lr
{r.get('lr')} after {r.get('warmup')} warm-up steps, gradient clip 1, 10% empty captions
(classifier-free guidance), EMA {r.get('ema_decay')} of the weights (saved).
{origin}
These weights: `{log.get('command')}` on {log.get('hardware')}: VAE {log.get('vae_seconds')} s
(final reconstruction loss {log.get('vae_final_rec_loss')}), UNet
{log.get('unet_steps_done')} steps in {log.get('unet_seconds')} s (stopped by
`--max-minutes`; final loss {log.get('unet_final_loss')}), {log.get('total_seconds')} s in all.
The same command runs on a CPU (`--device cpu`), far slower; its full duration there was not
measured.

## Measured
{_measured(bench, ('fidelity', 'inversion', 'speed'), note)}
Sample grid: `python examples/mini_sd_grid.py` writes `examples/mini_sd_grid.png`
(one row per digit; columns: plain, small in a corner, red, large blue, thick, thin, tilted).

## Intended use and limits
- For tests, demos and benchmarks of trust mechanisms on a real diffusers pipeline, offline.
  Not an image generator for people: 32x32 pictures of single digits only.
- Knows only its caption vocabulary; other words are split into letters it never saw.
- Small digits in a corner and tilts are the weakest attributes: often the wrong digit or
  no visible tilt (see the grid's second and seventh columns).
- DDIM inversion (`DDIMInverseScheduler`, same steps and guidance) finds a latent that
  regenerates the image closely (pixel figures above) but is not the original starting noise
  (its relative L2 distance to it is in the table): compare regenerated images, not z_T.
  Fidelity of guidance-1 samples themselves is not measured; the table gives it after the
  round trip only.
- Trained for a short time ({log.get('unet_steps_done')} UNet steps); quality figures hold for
  these weights only.
- Data: scikit-learn's copy of the UCI optical recognition of handwritten digits data set
  (43 writers); it carries that data set's biases (few writers, one era's handwriting).
"""


def judge_card(log: dict[str, Any], bench: dict[str, Any] | None, note: str = "") -> str:
    """README.md of trustgain-digits-judge."""
    return f"""# {JUDGE_ID}

A small CNN (three blocks of two 3x3 convolutions with batch norm, 32/64/128 channels, global
average pooling, linear head; `trustgain.models.judge.DigitsJudge`) that names the digit in a
32x32 image. It judges whether trustgain-mini-sd drew the digit a prompt asked for.

```python
from trustgain.models import load_judge, classify_digits
digits, confidence = classify_digits(pil_images_or_tensor_in_0_1, load_judge())
```

Input: the maximum over RGB channels (any ink colour on a dark background), resized to 32x32.

## Data
{SPLIT}

Training batches: half plain scans (centred, white), half with the mini-sd's augmentations,
all with random ink strength (0.6-1.0), a 3x3 blur on 30% and pixel noise (sigma 0.03).

## Training
`{log.get('command')}` on {log.get('hardware')}: {log.get('steps')} steps of batch 128, AdamW
(one-cycle, peak lr 2e-3), label smoothing 0.05, {log.get('seconds')} s. Test accuracy printed by
that run: {log.get('test_accuracy')} on {log.get('n_test')} held-out scans.

## Measured
{_measured(bench, ('judge',), note)}
## Intended use and limits
- Scores generated digits in benchmarks and tests. Always answers one of ten digits: it has
  no "not a digit" class, so a blank or garbled picture still gets a label.
- Held-out figures are on scans from the same 43-writer data set; other handwriting, light
  backgrounds or several digits per image are outside what it was trained on.
"""


def write_cards(bench: dict[str, Any] | None = None, root: Path = HERE, note: str = "",
                ) -> list[Path]:
    """Render both cards from their training.json (and ``bench`` if given).

    A ``training.json`` that is not a JSON object raises :class:`InputError` naming it.
    """
    written = []
    for name, render in ((MINI_SD_ID, mini_sd_card), (JUDGE_ID, judge_card)):
        log_path = root / name / "training.json"
        if not log_path.is_file():
            continue
        log = _read_json(log_path, "training.json")
        if not isinstance(log, dict):
            raise InputError(f"{log_path}: not a JSON object")
        out = root / name / "README.md"
        write_atomic(out, render(log, bench, note).encode("utf-8"), overwrite=True)
        written.append(out)
    return written


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path}: a folder, not a file") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} {path}: not UTF-8 text") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise InputError(f"{what} {path}: not valid JSON ({exc})") from None


def bench_problem(bench: Any) -> str | None:
    """Why ``bench`` is not what ``python -m trustgain.bench models --json`` writes, or None."""
    if not isinstance(bench, dict):
        return "not a JSON object"
    missing = [k for k in ("command", "date", "device", "seconds", "rows") if k not in bench]
    if missing:
        return "no " + ", ".join(repr(k) for k in missing)
    if not isinstance(bench["rows"], list):
        return "'rows' is not a list"
    for i, row in enumerate(bench["rows"]):
        if not isinstance(row, dict):
            return f"rows[{i}] is not an object"
        gone = [k for k in ("metric", "value", "unit", "target", "ok", "note") if k not in row]
        if gone:
            return f"rows[{i}] has no " + ", ".join(repr(k) for k in gone)
        if not isinstance(row["metric"], str):
            return f"rows[{i}]: 'metric' is not a string"
        if not isinstance(row["value"], (int, float)) or isinstance(row["value"], bool):
            return f"rows[{i}]: 'value' is not a number"
    return None


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: bad input ends as one line on stderr, non-zero exit."""
    p = argparse.ArgumentParser(prog="python -m trustgain.models.cards")
    p.add_argument("--bench", type=Path, default=None,
                   help="JSON written by `python -m trustgain.bench models --json`")
    p.add_argument("--note", default="", help="conditions of the measurement, quoted as is")
    p.add_argument("--root", type=Path, default=HERE, help="folder holding the model folders")
    args = p.parse_args(argv)
    if not args.root.is_dir():
        p.error(f"--root {args.root}: no such folder")
    def work() -> None:
        bench = _read_json(args.bench, "--bench") if args.bench else None
        if bench is not None:
            problem = bench_problem(bench)
            if problem:
                p.error(f"--bench {args.bench}: {problem}; expected the JSON of "
                        "`python -m trustgain.bench models --json`")
            if bench.get("quick"):
                p.error("refusing a --quick benchmark for the model cards")
        written = write_cards(bench, args.root, args.note)
        if not written:
            raise InputError(f"--root {args.root}: no {MINI_SD_ID}/training.json or "
                             f"{JUDGE_ID}/training.json there; nothing written")
        for path in written:
            print(f"wrote {path}")

    code = run_command(work)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
