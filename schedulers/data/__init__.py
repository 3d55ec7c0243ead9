"""Small measured data sets shipped with ``schedulers`` (read-only, no download at run time).

- ``vlm_contract_difficulty.json``: per-image quality scores ((1 - LPIPS) + SSIM) of the small
  and large low-light-enhancement diffusion models and the VLM / human / oracle difficulty labels
  from ZiJun0819/VLM-Contract-Theory ``difficulty.xlsx`` (42 images; MIT, see
  ``LICENSE-vlm-contract-theory.txt``).
- ``vlm_contract_published.json``: the same repository's result tables (``task_N_server_M.csv``),
  kept only as labelled reference values to compare our runs against.
- ``parti_prompts.json``: google-research/parti ``PartiPrompts.tsv`` prompts with their Category
  and Challenge labels (Apache-2.0, see ``LICENSE-parti.txt``).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load(name: str) -> dict[str, Any]:
    """The parsed JSON data file ``name`` (e.g. ``"vlm_contract_difficulty.json"``)."""
    return json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))
