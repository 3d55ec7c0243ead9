"""trustgain.bench.watermark_latent_tpr: the larger TPR rows' chunking and arithmetic, on the
tiny pipeline with stand-in detectors."""

from __future__ import annotations

import pytest
import torch

from trustgain.bench import watermark_latent_tpr as tpr
from trustgain.bench.models import latent_shape, prompts_for
from trustgain.bench.watermark_latent_marks import ATTACKS
from trustgain.keys import KeyRing
from trustgain.watermark.latent import LatentReading, latent_key


def _stand_in_inverter(shape, told: list):
    """Zero latents for every image; each call's prompt appended to ``told``."""

    def invert(images, prompt=""):
        told.append(prompt)
        return [(1.0, torch.zeros(len(images), *shape), None)]

    return invert


def test_rows_count_every_sample_once_and_name_the_misses(sd_pipe, monkeypatch):
    monkeypatch.setattr(tpr, "CHUNK", 10)
    shape = latent_shape(sd_pipe)
    reads, prompted_by_invert = [], []
    invert = _stand_in_inverter(shape, prompted_by_invert)

    def read(cands, nonces, payloads, prompted):
        assert prompted == bool(prompted_by_invert[-1])
        assert len(cands[0][1]) == len(nonces) == len(payloads)
        reads.append(len(nonces))
        # the first attack of the first chunk misses its first image, nothing else is missed
        return [_reading(1.0 if len(reads) == 1 and i == 0 else 1e-9)
                for i in range(len(nonces))]

    rows = tpr.tpr_rows(sd_pipe, latent_key(KeyRing.generate()), invert, read, shape, steps=2,
                        n=25)
    # 25 rounded up to 30: three chunks, each read per attack without and with the prompts
    assert reads == [10] * 3 * len(ATTACKS) * 2
    assert prompted_by_invert[0::2] == [""] * 3 * len(ATTACKS)
    family = set(prompts_for(3)[0])
    assert all(len(p) == 10 and set(p) <= family for p in prompted_by_invert[1::2])
    by = {r.metric.removeprefix("TPR@1e-6 "): r for r in rows}
    assert len(by) == 3 * len(ATTACKS)
    first = by[f"record mode, {ATTACKS[0]}"]
    rest = [by[f"{m}, {a}"] for m in ("record mode", "record mode + prompt", tpr.BOTH_GIVEN)
            for a in ATTACKS if (m, a) != ("record mode", ATTACKS[0])]
    assert abs(first.value - 29 / 30) < 1e-12 and first.ok is False
    assert "n=30" in first.note and "misses by digit: " in first.note
    assert "none" not in first.note.split("misses by digit: ")[1]
    assert all(r.value == 1 and "misses by digit: none" in r.note for r in rest)
    # the target is the default detector's; the prompted read is reported beside it
    assert {by[f"{m}, {a}"].ok for m in ("record mode + prompt", tpr.BOTH_GIVEN)
            for a in ATTACKS} == {None}
    # zero latents read every element as negative: about half the signs agree
    assert "mean 0." in first.note


def _reading(p: float) -> LatentReading:
    return LatentReading(detected=p <= 1e-6, p_value=p, payload="", matches=0, n=1,
                         statistic="matches", nonce_index=0, tries=1)


def test_a_guess_adds_a_third_read_the_better_of_two_and_their_mean(sd_pipe, monkeypatch):
    monkeypatch.setattr(tpr, "CHUNK", 10)
    shape = latent_shape(sd_pipe)
    told, guessed_from, averaged = [], [], []

    def invert(images, prompt=""):  # latents 1 under the empty prompt, 3 under any other
        told.append(prompt)
        return [(1.0, torch.full((len(images), *shape), 3.0 if prompt else 1.0), None)]

    def read(cands, nonces, payloads, prompted):
        level = float(cands[0][1].mean())
        if level == 2.0:  # the mean of the two inversions, read once with the empty weights
            assert not prompted
            averaged.append(len(nonces))
            return [_reading(1e-8 if i < 8 else 1.0) for i in range(len(nonces))]
        assert prompted == bool(told[-1]) == (level == 3.0)
        # the empty read finds images 0-4 (p 4e-7), the guessed one 5-8 (p 1e-7); none finds 9
        if prompted:
            return [_reading(1e-7 if 5 <= i < 9 else 1.0) for i in range(len(nonces))]
        return [_reading(4e-7 if i < 5 else 1.0) for i in range(len(nonces))]

    def guess(images):
        guessed_from.append(len(images))
        return ["a guess"] * len(images)

    rows = tpr.tpr_rows(sd_pipe, latent_key(KeyRing.generate()), invert, read, shape, steps=2,
                        n=10, guess=guess)
    assert guessed_from == [10] * len(ATTACKS)  # once per attack, from the attacked images
    assert told[2::3] == [["a guess"] * 10] * len(ATTACKS)  # three inversions, not five
    assert averaged == [10] * len(ATTACKS)
    by = {r.metric.removeprefix("TPR@1e-6 "): r for r in rows}
    assert len(by) == 6 * len(ATTACKS)
    for a in ATTACKS:
        assert by[f"record mode, {a}"].value == 0.5
        assert by[f"record mode + guessed prompt, {a}"].value == 0.4
        # the better read at twice its p-value: 8e-7 and 2e-7 both detected at 1e-6
        search = by[f"{tpr.SEARCH}, {a}"]
        assert search.value == 0.9 and search.ok is False and "n=10" in search.note
        assert by[f"record mode + guessed prompt, {a}"].ok is None
        mean = by[f"{tpr.AVERAGED}, {a}"]
        assert mean.value == 0.8 and mean.ok is False
        # the mean (2) has the signs of both inversions (1 and 3), so the same sign accuracy
        acc = by[f"record mode, {a}"].note.split("sign acc")[1].split(";")[0]
        assert mean.note.split("sign acc")[1].split(";")[0] == acc


def _seeded_draws(sd_pipe, monkeypatch, seed: int) -> tuple[list, list]:
    """The prompts and the first attack's images' nonces that one ``seed`` reads."""
    monkeypatch.setattr(tpr, "CHUNK", 10)
    shape = latent_shape(sd_pipe)
    told, nonces_read = [], []

    def read(cands, nonces, payloads, prompted):
        nonces_read.append(list(nonces))
        return [_reading(1.0) for _ in nonces]

    tpr.tpr_rows(sd_pipe, latent_key(KeyRing.generate()), _stand_in_inverter(shape, told),
                 read, shape, steps=2, n=10, seed=seed)
    return told[1], nonces_read[0]


def test_a_seed_draws_another_sample_set_and_the_default_is_reproducible(sd_pipe, monkeypatch):
    prompts0, nonces0 = _seeded_draws(sd_pipe, monkeypatch, 0)
    again0, _ = _seeded_draws(sd_pipe, monkeypatch, 0)
    prompts1, nonces1 = _seeded_draws(sd_pipe, monkeypatch, 1)
    assert prompts0 == again0
    assert sorted(prompts0) == sorted(prompts1) and prompts0 != prompts1  # other order
    assert not set(map(bytes, nonces0)) & set(map(bytes, nonces1))


def test_a_negative_seed_is_refused(sd_pipe):
    shape = latent_shape(sd_pipe)
    with pytest.raises(ValueError, match="seed must be 0 or more, got -1"):
        tpr.tpr_rows(sd_pipe, latent_key(KeyRing.generate()), _stand_in_inverter(shape, []),
                     lambda *a: [], shape, steps=2, n=10, seed=-1)
