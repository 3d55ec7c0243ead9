"""The hand-written labelled redaction set: well-formed, and redact meets its targets on it."""

from __future__ import annotations

from collections import Counter

import pytest

from trustgain.privacy.redact import KINDS, luhn_ok, redact, redact_spans
from trustgain.privacy.redact_labelled import Labelled, load, score


@pytest.fixture(scope="module")
def samples():
    return load()


def test_set_is_well_formed(samples):
    from schwifty import IBAN

    assert len(samples) >= 300
    kinds = Counter(k for s in samples for *_, k in s.spans)
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 20
    assert sum(1 for s in samples if not s.spans) >= 150  # tricky negatives
    for s in samples:
        for start, end, kind in s.spans:
            value = s.text[start:end]
            assert value == value.strip() and value, s.text
            if kind == "CARD":
                assert luhn_ok(value.replace(" ", "").replace("-", "")), value
            if kind == "IBAN":
                IBAN(value.replace(" ", ""))


def test_precision_and_recall_per_kind(samples):
    table, errors = score(samples)
    for kind, r in table.items():
        assert r["precision"] >= 0.98, (kind, errors)
        assert r["recall"] >= 0.95, (kind, errors)


def test_score_counts_misses_and_false_masks():
    text = "mail a@example.com or call 4111 1111 1111 1111"
    wrong_kind = Labelled(text, ((5, 18, "EMAIL"), (27, 46, "PHONE")))
    table, errors = score([wrong_kind])
    assert table["EMAIL"]["recall"] == 1.0 and table["PHONE"]["recall"] == 0.0
    assert table["CARD"]["precision"] == 0.0  # masked, but labelled as another kind
    assert len(errors) == 2


def test_spans_point_into_the_original_text():
    text = "key AKIAIOSFODNN7EXAMPLE, mail bob@example.com, ip 10.0.0.7"
    masked, spans = redact_spans(text)
    assert [text[s:e] for s, e, _ in spans] == [
        "AKIAIOSFODNN7EXAMPLE", "bob@example.com", "10.0.0.7"]
    assert masked == redact(text)[0] == "key [SECRET], mail [EMAIL], ip [IP]"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("key sk-proj-" + "Ab1" * 12, "SECRET"),
        ("AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "SECRET"),
        ("hf_" + "aBcD" * 9, "SECRET"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", "SECRET"),
    ],
)
def test_new_secret_formats(text, kind):
    assert redact(text)[1] == {kind: 1}


@pytest.mark.parametrize(
    "text",
    [
        "numbers 5 12 23 34 45 6",  # lottery numbers, not a phone (strict grouping)
        "edition 2.0.0.0 build",
        "section numbers 1.2.3 and 1.2.3.1",
        "sk-learn and max_tokens=1000000",
    ],
)
def test_new_negatives(text):
    assert redact(text)[1] == {}
