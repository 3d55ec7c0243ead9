"""The hand-written labelled prompt set for ``privacy.redact`` and its span-level scores.

``data/redaction_prompts.jsonl``: 336 image- and text-generation prompts written by hand, one
JSON object a line, ``{"text": ..., "spans": [{"start", "end", "kind"}, ...]}`` with the
character span and kind of every piece of personal data or secret. 159 hold at least one
(e-mail, phone, payment card, IBAN, IP address, secret key or token); 177 hold none but
carry look-alikes that must stay: version numbers (also dotted quads after a version cue),
dates, times, prices, order and ticket numbers, ISBNs and EANs, coordinates, hex colours,
16-digit numbers that fail Luhn or start with a non-card digit, IBANs with a wrong checksum,
model names, seeds and resolutions, handles, hashes and UUIDs, prefixes named in prose.
Values are public test data (card-network test numbers, published example IBANs,
documentation IP ranges, the ``...EXAMPLE`` AWS keys, fictional 555 phone ranges) or made up.

Scoring, per kind: a labelled span is *found* (recall) when masked spans of the same kind
cover all of its characters; a masked span is *correct* (precision) when it overlaps a
labelled span of its kind. Masking a value under the wrong kind counts against both.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from importlib import resources

from trustgain.privacy.redact import KINDS, redact_spans

DATA = "redaction_prompts.jsonl"


@dataclass(frozen=True)
class Labelled:
    text: str
    spans: tuple[tuple[int, int, str], ...]


def load(name: str = DATA) -> list[Labelled]:
    """The labelled prompts shipped in ``trustgain/privacy/data``."""
    raw = resources.files("trustgain.privacy").joinpath("data", name).read_text("utf-8")
    out = []
    for line in raw.splitlines():
        if line.strip():
            row = json.loads(line)
            spans = tuple((s["start"], s["end"], s["kind"]) for s in row["spans"])
            out.append(Labelled(row["text"], spans))
    return out


def score(
    samples: list[Labelled], *, region: str = "US"
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Precision, recall and support per kind, and a line for every miss or false mask."""
    found: Counter[str] = Counter()
    gold: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    masked: Counter[str] = Counter()
    errors: list[str] = []
    for n, sample in enumerate(samples):
        _, pred = redact_spans(sample.text, region=region)
        for start, end, kind in sample.spans:
            gold[kind] += 1
            cover = set()
            for ps, pe, pk in pred:
                if pk == kind:
                    cover.update(range(ps, pe))
            if set(range(start, end)) <= cover:
                found[kind] += 1
            else:
                errors.append(f"#{n} missed {kind} {sample.text[start:end]!r}")
        for ps, pe, pk in pred:
            masked[pk] += 1
            if any(k == pk and ps < e and s < pe for s, e, k in sample.spans):
                correct[pk] += 1
            else:
                errors.append(f"#{n} false {pk} {sample.text[ps:pe]!r}")
    table = {
        k: {
            "precision": correct[k] / masked[k] if masked[k] else 1.0,
            "recall": found[k] / gold[k] if gold[k] else 1.0,
            "support": float(gold[k]),
            "masked": float(masked[k]),
        }
        for k in KINDS
    }
    return table, errors
