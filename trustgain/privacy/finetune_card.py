"""The privacy facts of a fine-tuned model: ``privacy.json``, its model card, and a reader.

A fine-tune writes the same facts three times into its output folder:

* ``privacy.json`` (format ``trustgain.model-privacy/1``): machine-readable;
* ``README.md``: the model card, with a "Privacy" section written from the same dict;
* the UNet's config, under the hidden key ``_trustgain_privacy`` (diffusers keeps keys that
  start with ``_`` through ``save_pretrained``/``from_pretrained``), so the facts travel with
  the weights even when the UNet is loaded on its own or the folder is renamed.

:func:`model_privacy` reads them back from a loaded pipeline (or a folder) for provenance
records. Hand-written: the card is a few string templates; no library renders them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

FORMAT = "trustgain.model-privacy/1"
CONFIG_KEY = "_trustgain_privacy"
FILE = "privacy.json"

# the fields provenance records carry (a subset of privacy.json: no paths, no timings)
RECORD_FIELDS = ("format", "dp", "epsilon", "delta", "accountant", "sample_rate",
                 "noise_multiplier", "max_grad_norm", "steps", "epochs", "n_records",
                 "trainable", "dataset_sha256", "base_model")


def record_view(facts: dict[str, Any]) -> dict[str, Any]:
    """The part of ``facts`` that goes into provenance records."""
    return {k: facts[k] for k in RECORD_FIELDS if k in facts}


def model_privacy(model: Any) -> dict[str, Any] | None:
    """Privacy facts of a pipeline, UNet or model folder; ``None`` if it carries none.

    Looks at the UNet config first (travels with the weights), then ``privacy.json`` in the
    folder the pipeline was loaded from.
    """
    unet = getattr(model, "unet", model)
    config = getattr(unet, "config", None)
    if config is not None:
        facts = config.get(CONFIG_KEY) if hasattr(config, "get") else None
        if isinstance(facts, dict):
            return dict(facts)
    folder: str | os.PathLike[str] | None = None
    if isinstance(model, (str, os.PathLike)):
        folder = model
    else:
        pconf = getattr(model, "config", None)
        folder = pconf.get("_name_or_path") if hasattr(pconf, "get") else None
    if folder and (Path(folder) / FILE).is_file():
        doc = json.loads((Path(folder) / FILE).read_text())
        if doc.get("format") == FORMAT:
            return record_view(doc)
    return None


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "infinite"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def card(facts: dict[str, Any]) -> str:
    """README.md of a fine-tuned model, from the facts in ``privacy.json``."""
    name = Path(str(facts.get("out", "model"))).name
    if facts["dp"]:
        privacy = f"""Differentially private fine-tune (DP-SGD with opacus, Poisson sampling).

| quantity | value |
| --- | --- |
| epsilon spent | {_fmt(facts['epsilon'])} |
| delta | {_fmt(facts['delta'], '.3g')} |
| accountant | {facts['accountant']} (opacus) |
| sampling rate q | {_fmt(facts['sample_rate'], '.5g')} |
| noise multiplier sigma | {_fmt(facts['noise_multiplier'])} |
| clipping norm C | {_fmt(facts['max_grad_norm'])} |
| steps | {facts['steps']} ({facts['epochs']} epochs) |
| privacy unit | one image-caption record of {facts['n_records']} |

The guarantee covers the {facts['n_records']} fine-tuning records only. It says nothing about
the data of the base model `{facts['base_model']}` or of anything trained before it."""
    else:
        privacy = f"""**Not differentially private.** Fine-tuned without DP on {facts['n_records']}
records for {facts['steps']} steps; the model may memorise and reveal its training images.
Epsilon is infinite: do not release it where the training data is private."""
    return f"""# {name}

Fine-tuned from `{facts['base_model']}` with `trustgain finetune` (trustgain
{facts.get('trustgain_version', '?')}, opacus {facts.get('opacus_version', '?')}).

## Privacy
{privacy}

Machine-readable: `privacy.json` (format `{FORMAT}`); the same facts are in the UNet's
config under `{CONFIG_KEY}` and in every trustgain provenance record made with this model.

## Training
| setting | value |
| --- | --- |
| trained weights | {facts['trainable']} ({facts['trainable_params']:,} parameters of the UNet) |
| expected batch size | {facts['batch_size']} |
| learning rate | {facts['lr']} (AdamW) |
| noise draws per record (noise multiplicity) | {facts.get('noise_multiplicity', 1)} |
| final loss (mean of last steps) | {_fmt(facts.get('final_loss'))} |
| data | {facts['n_records']} records, SHA-256 `{facts['dataset_sha256']}` |
| seconds | {_fmt(facts.get('seconds'), '.1f')} |

Text encoder and VAE are the base model's, unchanged.
"""
