"""privacy.redact: positives and tricky negatives per kind; values never reach the record."""

from __future__ import annotations

import pytest

from trustgain import GenerationRequest, Item, RunContext
from trustgain.digest import canonical_json
from trustgain.privacy.redact import KINDS, RedactPII, luhn_ok, redact

POSITIVES = [
    ("write to jane.doe+art@example.co.uk today", "EMAIL", "jane.doe+art@example.co.uk"),
    ("call +44 20 7946 0958 now", "PHONE", "+44 20 7946 0958"),
    ("call (415) 555-2671 now", "PHONE", "(415) 555-2671"),
    ("card 4111 1111 1111 1111 exp", "CARD", "4111 1111 1111 1111"),
    ("card 5500-0000-0000-0004 exp", "CARD", "5500-0000-0000-0004"),
    ("pay to DE89 3704 0044 0532 0130 00 please", "IBAN", "DE89 3704 0044 0532 0130 00"),
    ("pay to GB82WEST12345698765432.", "IBAN", "GB82WEST12345698765432"),
    ("host 192.168.1.20 down", "IP", "192.168.1.20"),
    ("host 2001:db8::8a2e:370:7334 down", "IP", "2001:db8::8a2e:370:7334"),
    ("a bare 1.2.3.4 in prose", "IP", "1.2.3.4"),
    ("aws AKIAIOSFODNN7EXAMPLE", "SECRET", "AKIAIOSFODNN7EXAMPLE"),
    ("gh ghp_" + "A1b2" * 9 + " x", "SECRET", "ghp_" + "A1b2" * 9),
    ("slack xoxb-1234567890-abcdefghij", "SECRET", "xoxb-1234567890-abcdefghij"),
    ("api_key=sk_live_abcdef123 rest", "SECRET", "sk_live_abcdef123"),
    ('password: "hunter2hunter2"', "SECRET", "hunter2hunter2"),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcdefghijklmnop ok",
        "SECRET",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcdefghijklmnop",
    ),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
        "SECRET",
        "MIIEow",
    ),
]

NEGATIVES = [
    "a 16-digit run failing Luhn 4111111111111112",
    "order number 1234567812345678",
    "an invalid IBAN DE89 3704 0044 0532 0130 01",
    "v1.2.3.4 and version 10.0.0.1 and release 2.0.0.1",
    "a dotted run 1.2.3.4.5 and 999.1.1.1",
    "std::vector and 12:30:45 and a::b",
    "on 2023-01-15 for $1,299.99, 12/03/2024, pi 3.14159, the year 1999 at 10:30",
    "a local-looking 555-2671",
    "a watercolor of a cat @ sunset, 4k, 35mm, f/1.8",
]


@pytest.mark.parametrize(("text", "kind", "value"), POSITIVES)
def test_masks_each_kind(text, kind, value):
    out, counts = redact(text)
    assert counts == {kind: 1}
    assert value not in out
    assert f"[{kind}]" in out


@pytest.mark.parametrize("text", NEGATIVES)
def test_leaves_lookalikes(text):
    assert redact(text) == (text, {})


def test_region_reads_national_numbers():
    assert redact("ring 020 7946 0958")[1] == {}
    assert redact("ring 020 7946 0958", region="GB")[1] == {"PHONE": 1}


def test_kinds_subset_and_unknown():
    assert redact("a@b.io 192.168.0.1", kinds=("IP",)) == ("a@b.io [IP]", {"IP": 1})
    with pytest.raises(ValueError, match="known"):
        redact("x", kinds=("NAME",))


def test_luhn():
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")


def test_stage_records_counts_never_values():
    secret_texts = [text for text, _, _ in POSITIVES]
    prompt = " | ".join(secret_texts)
    request = GenerationRequest(prompt=prompt, negative_prompt="mail x.y@corp.example")
    stage = RedactPII()
    result = stage(
        Item(request=request), RunContext(run_id="0" * 32, stage=stage.name, generator=None)
    )
    params = canonical_json(dict(result.params)).decode()
    for _, _, value in POSITIVES:
        assert value not in params
        assert value not in result.item.request.prompt
    assert "x.y@corp.example" not in params + result.item.request.negative_prompt
    assert result.params["negative_prompt"] == {"EMAIL": 1}
    assert result.params["masked"] == len(POSITIVES) + 1
    assert set(result.params["prompt"]) <= set(KINDS)


def test_stage_settings_and_no_prompt():
    with pytest.raises(ValueError, match="region"):
        RedactPII(region="XX")
    assert RedactPII(kinds=["IP"]) == RedactPII(kinds=("IP",))  # list from trustgain.json
    stage = RedactPII()
    ctx = RunContext(run_id="0" * 32, stage=stage.name, generator=None)
    result = stage(Item(request=GenerationRequest()), ctx)
    assert not result.applied and result.reason


def test_labelled_set_quality_floor():
    from trustgain.privacy.redact_eval import evaluate, labelled_prompts

    samples = labelled_prompts(120)
    assert sum(1 for _, e in samples if not e) == 40
    scores = evaluate(samples)
    assert set(scores) == set(KINDS)
    for kind, m in scores.items():  # a floor that catches regressions, not the issue target
        assert m["precision"] >= 0.9 and m["recall"] >= 0.8, kind


DISGUISED = [
    ("card ４１１１ １１１１ １１１１ １１１１ ok", "CARD"),
    ("card 4111\u200b1111\u200b1111\u200b1111 ok", "CARD"),
    ("card 4111\u00a01111\u00a01111\u00a01111 ok", "CARD"),
    ("card ٤١١١ ١١١١ ١١١١ ١١١١ ok", "CARD"),
    ("phone +١ ٤١٥ ٥٥٥ ٢٦٧١ ok", "PHONE"),
    ("mail jo\u200bhn@example.com ok", "EMAIL"),
    ("mail john＠example．com ok", "EMAIL"),
    ("mail jöhn@exämple.de ok", "EMAIL"),
    ("mail jo\u0308hn@example.de ok", "EMAIL"),
    ("mail 用户@例子.广告 ok", "EMAIL"),
    ("ip １９２.１６８.１.１ ok", "IP"),
    ("ip 192.168.1\u00ad.1 ok", "IP"),
    ("phone +1 415\u200b555 2671 ok", "PHONE"),
    ("key sk-\u200bproj-abcdefghijklmnopqrstuvwx ok", "SECRET"),
    ("key AKIA\u200bIOSFODNN7EXAMPLE ok", "SECRET"),
    ("iban ＤＥ89 3704 0044 0532 0130 00 ok", "IBAN"),
]


@pytest.mark.parametrize("text, kind", DISGUISED)
def test_lookalike_and_invisible_characters_do_not_hide_a_value(text: str, kind: str) -> None:
    new, counts = redact(text)
    assert counts == {kind: 1}
    # the whole disguised value goes, invisible characters included; the rest stays
    assert new.split(" ")[0] == text.split(" ")[0] and new.endswith(f"[{kind}] ok")
    assert "\u200b" not in new and "\u00ad" not in new


@pytest.mark.parametrize("text", [
    "価格は１２３円、ｖｅｒｓｉｏｎ １.２.３.４ です",
    "café naïve ﬁne 🙂\u200d🙂 user@host",
    "مرحبا بالعالم ٣٤٥",
    "ﷺ 12 345 ok",
])
def test_unicode_text_without_values_is_left_as_it_is(text: str) -> None:
    assert redact(text) == (text, {})
