"""A labelled prompt set for ``privacy.redact`` and its precision/recall per kind.

The set is generated from a fixed seed: image-prompt templates with personal data slotted in
(several formats per kind, values made with valid checksums) and look-alikes that must stay
(versions, dates, prices, resolutions, seeds, ISBNs, order numbers, non-Luhn digit runs,
IBANs with a wrong check digit, hex colours, times). Nothing in it is a real person's data:
cards are built on test prefixes, IBANs on made-up accounts, phones in fictional ranges.
It tests the formats we wrote down; real logs will hold formats this set lacks.
"""

from __future__ import annotations

import random
from collections import Counter

from trustgain.privacy.redact import KINDS, luhn_ok, redact

_TEMPLATES = (
    "a watercolor portrait of my grandmother, send the result to {}",
    "oil painting of a lighthouse at dusk, contact {} for details",
    "cyberpunk city street at night, neon signs, {} in the corner",
    "a cozy cabin in the snow, 4k, highly detailed, note: {}",
    "product photo of a red sneaker on white background ({})",
)


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice((("4", 16), ("51", 16), ("37", 15), ("6011", 16)))
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    digit = next(d for d in "0123456789" if luhn_ok(body + d))
    num = body + digit
    sep = rng.choice(("", " ", "-"))
    return sep.join(num[i : i + 4] for i in range(0, len(num), 4)) if sep else num


def _iban(rng: random.Random, *, valid: bool = True) -> str:
    from schwifty import IBAN

    country, bank, n = rng.choice((("DE", "37040044", 10), ("NL", "ABNA", 10), ("AT", "19043", 11)))
    account = "".join(rng.choice("0123456789") for _ in range(n))
    iban = str(IBAN.generate(country, bank_code=bank, account_code=account))
    if not valid:
        check = (int(iban[2:4]) + rng.randint(1, 8)) % 97
        iban = f"{iban[:2]}{max(check, 2):02d}{iban[4:]}"
    return IBAN(iban, allow_invalid=True).formatted if rng.random() < 0.5 else iban


def _positive(kind: str, rng: random.Random) -> str:
    r = rng.randint
    if kind == "EMAIL":
        user = rng.choice(("anna.k", "bob_smith", "c.d+art", "dev-team", "x9"))
        return f"{user}{r(1, 99)}@{rng.choice(('example.com', 'mail.example.org', 'uni.ac.uk'))}"
    if kind == "PHONE":
        return rng.choice(
            (
                f"+1 415 555 {r(1000, 9999)}",
                f"(212) 555-{r(1000, 9999)}",
                f"+44 20 7946 {r(1000, 9999)}",
                f"+49 30 {r(1000000, 9999999)}",
                f"415.555.{r(1000, 9999)}",
                f"+33 1 42 68 {r(10, 99)} {r(10, 99)}",
            )
        )
    if kind == "CARD":
        return _card(rng)
    if kind == "IBAN":
        return _iban(rng)
    if kind == "IP":
        return rng.choice(
            (
                f"10.{r(0, 255)}.{r(0, 255)}.{r(1, 254)}",
                f"192.168.{r(0, 255)}.{r(1, 254)}",
                f"2001:db8:{r(1, 9999):x}::{r(1, 9999):x}",
                f"fe80::{r(4096, 65535):x}:{r(1, 99)}",
            )
        )
    return rng.choice(
        (
            "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
            "ghp_" + "".join(rng.choice("abcdefXYZ0123456789") for _ in range(36)),
            f"xoxb-{r(10**9, 10**10)}-{r(10**9, 10**10)}-abcDEF{r(1000, 9999)}",
            f"api_key={r(10**9, 10**10):x}{r(10**9, 10**10):x}",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI" + str(r(1000, 9999)) + "In0.sig" + "x" * r(10, 30),
        )
    )


def _negative(rng: random.Random) -> str:
    r = rng.randint
    digits = "".join(rng.choice("0123456789") for _ in range(15))
    non_luhn = next(digits + d for d in "0123456789" if not luhn_ok(digits + d))
    return rng.choice(
        (
            f"v{r(1, 9)}.{r(0, 20)}.{r(0, 20)}.{r(0, 99)}",
            f"version {r(1, 9)}.{r(0, 9)}.{r(0, 9)}",
            f"{r(2000, 2030)}-{r(1, 12):02d}-{r(1, 28):02d}",
            f"{r(1, 28)}/{r(1, 12)}/{r(1990, 2030)}",
            f"${r(1, 9)},{r(100, 999)}.{r(10, 99)}",
            f"{r(640, 4096)}x{r(480, 2160)}",
            f"seed {r(10**8, 10**9)}",
            f"978-3-16-{r(100000, 999999)}-0",
            f"order #{r(10**7, 10**8)}",
            non_luhn,
            _iban(rng, valid=False),
            f"#{r(0, 0xFFFFFF):06x}",
            f"{r(0, 23)}:{r(0, 59):02d}",
            f"{r(1, 9)}.{r(0, 99)} GB of RAM",
            f"ISO {r(100, 3200)}, f/{r(1, 16)}.{r(0, 9)}",
        )
    )


def labelled_prompts(n: int = 360, *, seed: int = 0) -> list[tuple[str, dict[str, int]]]:
    """``n`` prompts with their expected ``{kind: count}`` (a third hold only look-alikes)."""
    rng = random.Random(seed)
    out = []
    positives = 0
    for i in range(n):
        template = rng.choice(_TEMPLATES)
        if i % 3 == 2:
            out.append((template.format(_negative(rng)), {}))
        else:
            kind = KINDS[positives % len(KINDS)]
            positives += 1
            out.append((template.format(f"{_positive(kind, rng)} ({_negative(rng)})"), {kind: 1}))
    return out


def evaluate(
    samples: list[tuple[str, dict[str, int]]], *, region: str = "US"
) -> dict[str, dict[str, float]]:
    """Precision and recall per kind, counting masked spans against expected ones."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for text, expected in samples:
        _, found = redact(text, region=region)
        for kind in KINDS:
            e, f = expected.get(kind, 0), found.get(kind, 0)
            tp[kind] += min(e, f)
            fp[kind] += max(0, f - e)
            fn[kind] += max(0, e - f)
    return {
        k: {
            "precision": tp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] else 1.0,
            "recall": tp[k] / (tp[k] + fn[k]) if tp[k] + fn[k] else 1.0,
            "support": float(tp[k] + fn[k]),
        }
        for k in KINDS
    }
