"""``privacy.redact``: find and mask personal data and secrets in prompts and logged text.

Kinds and how each is confirmed (a regex alone would mask too much):

- ``EMAIL``: address syntax (RFC 5322 subset).
- ``PHONE``: the maintained ``phonenumbers`` matcher (libphonenumber metadata) at leniency
  ``STRICT_GROUPING`` (a valid number whose digit groups follow the number's own format, so
  "numbers 5 12 23 34 45 6" is not read as 512-233-4456); numbers without ``+`` are read
  in the ``region`` setting. Reserved fictional ranges (e.g. UK 07700 900xxx) are not valid.
- ``CARD``: 13-19 digits passing the Luhn check, starting with a major network's digit (2-6),
  either unbroken or in a printed card grouping (4-4-4-4, 4-6-5, ...). Luhn is four lines
  and has no library worth a dependency, so it is written here. A 9 in 10 chance for random
  digits to fail Luhn is not enough alone: the prefix and grouping rules keep ISBNs and
  invalid IBANs' digit tails unmasked.
- ``IBAN``: country code, check digits and BBAN, validated by ``schwifty`` (country length,
  BBAN format and the ISO 7064 mod-97 checksum).
- ``IP``: IPv4 and IPv6, validated by the stdlib ``ipaddress``. A dotted quad is a valid
  address even when it is meant as a version, so we mask it (privacy first) unless a version
  cue precedes it (``v1.2.3.4``, ``version``/``release``/``build``/``edition``/``firmware``/
  ``section``/``clause``/``chapter 1.2.3.4``, also after a list such as "sections 1.2.3 and
  1.2.3.1") or it is part of a longer dotted run (``1.2.3.4.5``). IPv6 needs two non-empty
  groups and four hex digits, so ``a::b`` (C++ scope) and ``::1`` (loopback, not personal)
  stay.
- ``SECRET``: AWS access key ids, GitHub tokens, OpenAI/Anthropic (``sk-...``), Stripe
  (``sk_live_...``), Google (``AIza...``) and Hugging Face (``hf_...``) keys, Slack tokens
  and webhooks, PEM private keys, JWTs, and ``api_key=...``-style assignments, also with a
  prefix (``AWS_SECRET_ACCESS_KEY=...``; only the value is masked). Pattern
  lists in secret scanners (gitleaks, detect-secrets) are data files, not Python APIs we can
  call per string, so the common formats are written out here.

Every kind is searched in a folded view of the text, so look-alike writing does not hide a
value: NFKC compatibility forms (fullwidth ``４１１１``, ``＠``, ``．``, no-break and ideographic
spaces) and decimal digits of any script (Arabic-Indic ``٤١١١``) read as their ASCII forms, and
invisible format characters (zero-width space and joiners, soft hyphen, bidi controls: Unicode
category Cf) are dropped, so a card number split by zero-width spaces is one card. Both the
text and its folded view are searched; a match masks the original characters it came from,
invisible ones included.
Addresses may use Unicode letters (``jöhn@exämple.de``, ``用户@例子.广告``; RFC 6531). Not
folded: cross-script confusables (Cyrillic ``а`` for Latin ``a``), which need a confusables
table and would fold real non-Latin text.

Only counts per kind are ever reported; the masked values are not kept anywhere.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import phonenumbers
from schwifty import IBAN
from schwifty.exceptions import SchwiftyException

from trustgain.stage import Phase, RunContext
from trustgain.types import Item, StageResult

KINDS: tuple[str, ...] = ("SECRET", "EMAIL", "IBAN", "CARD", "IP", "PHONE")

Span = tuple[int, int]

_SECRET_PATTERNS = [
    re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}"),
    re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),
    # OpenAI (sk-, sk-proj-, ...) and Anthropic (sk-ant-...) API keys
    re.compile(r"\bsk-(?:[a-z]+-)*[A-Za-z0-9_-]{20,}"),
    re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b"),  # Stripe secret keys
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![\w-])"),  # Google API keys
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face access tokens
    re.compile(r"\bxox[abposre]-[A-Za-z0-9-]{10,}"),
    re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+"),
]
# ``api_key = "..."``: group 1 is the value, masked alone so the log still says what it was.
_ASSIGNMENT = re.compile(
    r"(?i)\b(?:[a-z0-9]+_)*(?:api[_-]?key|apikey|secret(?:[_-]?(?:access[_-]?)?key)?"
    r"|access[_-]?(?:token|key)|auth[_-]?token|token|password|passwd|pwd|client[_-]?secret"
    r"|private[_-]?key)\b[\"']?\s*[:=]\s*[\"']?([^\s\"',;]{6,})"
)
# \w is Unicode-aware: internationalized local parts and domain labels (RFC 6531 / IDNA).
_EMAIL = re.compile(
    r"(?<![\w.+-])[\w.!#$%&'*+/=?^`{|}~-]+@[^\W_](?:[\w-]{0,61}[^\W_])?"
    r"(?:\.[^\W_](?:[\w-]{0,61}[^\W_])?)*\.[^\W\d_]{2,63}\b"
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"(?<![\w.,-])\d(?:[ -]?\d){12,18}(?![\d]|[.,]\d)")
# Major networks' first digits (2/5 Mastercard, 3 Amex/Diners/JCB, 4 Visa, 6 Discover/UnionPay)
# and the printed groupings: ISBNs (978-...) and order numbers grouped otherwise stay.
_CARD_FIRST_DIGITS = frozenset("23456")
_CARD_GROUPINGS = frozenset(
    {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 3), (4, 4, 4, 1)}
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:/\d{1,3})?(?![\w:])")
_LENIENCY = phonenumbers.Leniency.STRICT_GROUPING
_PAREN = re.compile(r"\s\(")
# Digits inside an IBAN-shaped token that failed its checksum are not a phone number.
_IBAN_HEAD = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4})+ ?$")
# A cue word, then optionally a list of other dotted numbers ("sections 1.2.3 and 1.2.3.1").
_VERSION_CUE = re.compile(
    r"(?i)(?:\bv|\b(?:version|release|build|edition|firmware|section|clause|chapter|ver\.?)"
    r"(?:s|\s+numbers?)?\s*)(?:[\d.]+\s*(?:,|and|or|to|->)\s*)*$"
)


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_PEM_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")
# The base64 body of a key whose END line is missing (a truncated paste): lines of 16+ base64
# characters, also joined by literal "\n" as in JSON strings, and a short padded last line.
_PEM_BODY = re.compile(
    r"(?:(?:\s|\\n)*[A-Za-z0-9+/]{16,}={0,2}(?:(?:\s|\\n)+[A-Za-z0-9+/]{16,}={0,2})*"
    r"(?:(?:\s|\\n)+[A-Za-z0-9+/]{1,15}={1,2})?)?"
)


def _pem_keys(text: str) -> Iterator[Span]:
    """PEM private keys, BEGIN to END; without an END line, BEGIN and the base64 after it.

    Linear in the text: once no END line follows, none follows any later BEGIN either.
    """
    pos, has_end = 0, True
    while m := _PEM_BEGIN.search(text, pos):
        end = _PEM_END.search(text, m.end()) if has_end else None
        if end is None:
            has_end = False
            stop = _PEM_BODY.match(text, m.end()).end()  # type: ignore[union-attr]
        else:
            stop = end.end()
        yield m.start(), stop
        pos = stop


def _secrets(text: str, region: str) -> Iterator[Span]:
    yield from _pem_keys(text)
    for pattern in _SECRET_PATTERNS:
        for m in pattern.finditer(text):
            yield m.span()
    for m in _ASSIGNMENT.finditer(text):
        yield m.span(1)


def _emails(text: str, region: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _ibans(text: str, region: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        tokens = m.group().split(" ")
        # The regex may swallow a trailing word; try the longest valid prefix of its groups.
        for n in range(len(tokens), 0, -1):
            candidate = " ".join(tokens[:n])
            try:
                IBAN(candidate.replace(" ", ""))
            except (SchwiftyException, ValueError):
                continue
            yield m.start(), m.start() + len(candidate)
            break


def _cards(text: str, region: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        groups = tuple(len(g) for g in re.split(r"[ -]", m.group()))
        if (
            13 <= len(digits) <= 19
            and digits[0] in _CARD_FIRST_DIGITS
            and (len(groups) == 1 or groups in _CARD_GROUPINGS)
            and luhn_ok(digits)
            and len(set(digits)) > 1
        ):
            yield m.span()


def _ips(text: str, region: str) -> Iterator[Span]:
    for m in _IPV4.finditer(text):
        if _VERSION_CUE.search(text[max(0, m.start() - 40) : m.start()]):
            continue
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield m.span()
    for m in _IPV6.finditer(text):
        value = m.group().split("/")[0]
        # Short forms like "a::b" or "::1" are valid addresses but read as code or loopback.
        groups = [g for g in value.split(":") if g]
        if len(groups) < 2 or sum(map(len, groups)) < 4:
            continue
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            continue
        yield m.span()


def _phones(text: str, region: str) -> Iterator[Span]:
    # The matcher reads "+1 415 555 9829 (28/6/1991)" as one candidate and drops it as a
    # date, so each piece before " (" is matched again on its own; spans are merged later.
    offsets = [0] + [m.start() + 1 for m in _PAREN.finditer(text)]
    for start, end in zip(offsets, [*offsets[1:], len(text)], strict=True):
        for m in phonenumbers.PhoneNumberMatcher(text[start:end], region, leniency=_LENIENCY):
            if not _IBAN_HEAD.search(text[: start + m.start]):
                yield start + m.start, start + m.end
    for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=_LENIENCY):
        if not _IBAN_HEAD.search(text[: m.start]):
            yield m.start, m.end


_FINDERS: dict[str, Callable[[str, str], Iterator[Span]]] = {
    "SECRET": _secrets,
    "EMAIL": _emails,
    "IBAN": _ibans,
    "CARD": _cards,
    "IP": _ips,
    "PHONE": _phones,
}


def redact(
    text: str, *, region: str = "US", kinds: tuple[str, ...] = KINDS
) -> tuple[str, dict[str, int]]:
    """Mask personal data in ``text``; returns the new text and ``{kind: count}``.

    Kinds run in the order of :data:`KINDS` (secrets first, phones last), each on the text
    the previous ones left, so a token's digits are not re-read as a phone number.
    """
    new, spans = redact_spans(text, region=region, kinds=kinds)
    return new, dict(Counter(kind for _, _, kind in spans))


def redact_spans(
    text: str, *, region: str = "US", kinds: tuple[str, ...] = KINDS
) -> tuple[str, list[tuple[int, int, str]]]:
    """:func:`redact`, also giving each masked span as ``(start, end, kind)`` in ``text``.

    For evaluation against labelled spans; the spans point into the caller's own text.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    if isinstance(kinds, str):  # one kind given bare: kinds="EMAIL"
        kinds = (kinds,)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    if "PHONE" in kinds and region not in phonenumbers.SUPPORTED_REGIONS:
        # an unknown region would silently leave every phone number without "+" unmasked
        raise ValueError(f"region {region!r} is not a phonenumbers region code (e.g. 'US')")
    found: list[tuple[int, int, str]] = []
    # origin[i]: where character i of the current text came from (-1: a placeholder)
    origin = list(range(len(text)))
    for kind in KINDS:
        if kind not in kinds:
            continue
        spans = _find(kind, text, region)
        for start, end in reversed(spans):
            src = [o for o in origin[start:end] if o >= 0]
            if src:
                found.append((min(src), max(src) + 1, kind))
            else:  # only earlier placeholders matched: counted, at an empty span
                at = max([o + 1 for o in origin[:start] if o >= 0], default=0)
                found.append((at, at, kind))
            placeholder = f"[{kind}]"
            text = f"{text[:start]}{placeholder}{text[end:]}"
            origin[start:end] = [-1] * len(placeholder)
    return text, sorted(found)


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def fold(text: str) -> tuple[str, list[int], list[int]]:
    """``(folded, starts, ends)``: ``text`` in NFKC with format characters dropped.

    Folded character ``j`` came from ``text[starts[j]:ends[j]]`` (a base character with its
    combining marks, normalized together). ASCII text is returned as it is. Hand-written:
    ``unicodedata.normalize`` gives no offsets, and masking needs them.
    """
    if text.isascii():
        return text, [], []
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for m in _NON_ASCII.finditer(text):
        a, b = m.span()
        if a > pos and unicodedata.combining(text[a]):
            a -= 1  # the ASCII base character is normalized with its marks
        out.append(text[pos:a])
        starts.extend(range(pos, a))
        ends.extend(range(pos + 1, a + 1))
        i = a
        while i < b:
            j = i + 1
            while j < b and unicodedata.combining(text[j]):
                j += 1
            chunk = unicodedata.normalize("NFKC", text[i:j])
            chunk = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c
                            for c in chunk if unicodedata.category(c) != "Cf")
            out.append(chunk)
            starts.extend([i] * len(chunk))
            ends.extend([j] * len(chunk))
            i = j
        pos = b
    out.append(text[pos:])
    starts.extend(range(pos, len(text)))
    ends.extend(range(pos + 1, len(text) + 1))
    return "".join(out), starts, ends


def _find(kind: str, text: str, region: str) -> list[Span]:
    """Spans of ``kind`` in ``text`` and in its folded view (each can see what the other
    misses: phonenumbers reads a zero-width space as a group separator, not as nothing)."""
    folded, starts, ends = fold(text)
    found = list(_FINDERS[kind](text, region))
    if folded is not text:
        found += [(starts[a], ends[b - 1]) for a, b in _FINDERS[kind](folded, region) if b > a]
    return _merge(found)


def _merge(spans: list[Span]) -> list[Span]:
    """Sorted, non-overlapping spans (overlaps are joined)."""
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


@dataclass(frozen=True)
class RedactPII:
    """Mask personal data and secrets in the prompt and negative prompt.

    ``region``: the region in which phone numbers without ``+`` are read (ISO 3166 alpha-2);
    ``kinds``: which kinds to mask (default: all). The record keeps counts per kind only.
    """

    name: ClassVar[str] = "privacy.redact"
    phase: ClassVar[Phase] = Phase.PREPARE
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset()

    region: str = "US"
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        kinds = (self.kinds,) if isinstance(self.kinds, str) else self.kinds
        if not isinstance(kinds, list | tuple):
            raise TypeError(f"kinds must be a list of kind names, not {type(kinds).__name__}")
        object.__setattr__(self, "kinds", tuple(kinds))  # a list from trustgain.json
        if unknown := set(self.kinds) - set(KINDS):
            raise ValueError(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        if not isinstance(self.region, str) or self.region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"region {self.region!r} is not a phonenumbers region code")

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        request = item.request
        params: dict[str, object] = {"region": self.region, "kinds": list(self.kinds)}
        if request.prompt is None and request.negative_prompt is None:
            return StageResult(item, params, applied=False, reason="no prompt")
        changes: dict[str, str] = {}
        total = 0
        for field in ("prompt", "negative_prompt"):
            text = getattr(request, field)
            if text is None:
                continue
            if isinstance(text, tuple):  # a list of prompts: each redacted, counts summed
                done = [redact(t, region=self.region, kinds=self.kinds) for t in text]
                new = tuple(t for t, _ in done)
                counts = dict(sum((Counter(c) for _, c in done), Counter()))
            else:
                new, counts = redact(text, region=self.region, kinds=self.kinds)
            params[field] = counts
            total += sum(counts.values())
            if new != text:
                changes[field] = new
        params["masked"] = total
        return StageResult(item.replace(request=request.replace(**changes)), params)


@dataclass(frozen=True)
class RedactOutputs:
    """Mask personal data and secrets in generated text.

    A language model can repeat what it saw in training or in the conversation. PROTECT phase,
    so the record's output digests are of the masked text. Needs a text generator
    (``TransformersTextGenerator``); non-text outputs are refused. The record keeps counts per
    output and kind only.
    """

    name: ClassVar[str] = "privacy.redact_outputs"
    phase: ClassVar[Phase] = Phase.PROTECT
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"text"})

    region: str = "US"
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        RedactPII.__post_init__(self)  # type: ignore[arg-type]  # the same two settings

    def __call__(self, item: Item, ctx: RunContext) -> StageResult:
        outputs, counts = [], []
        for i, output in enumerate(item.outputs):
            if not isinstance(output, str):
                raise TypeError(f"output {i} is a {type(output).__name__}, not text")
            new, found = redact(output, region=self.region, kinds=self.kinds)
            outputs.append(new)
            counts.append(found)
        params: dict[str, object] = {"region": self.region, "kinds": list(self.kinds),
                                     "outputs": counts,
                                     "masked": sum(sum(c.values()) for c in counts)}
        return StageResult(item.replace(outputs=tuple(outputs)), params)
