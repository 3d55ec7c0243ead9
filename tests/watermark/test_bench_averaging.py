"""trustgain.bench.watermark_latent_averaging: the replicated pixel-averaging rows' arithmetic,
on the tiny pipeline with stand-in detectors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from PIL import Image

from trustgain.bench.models import latent_shape
from trustgain.bench.watermark_latent_averaging import averaging_rows, mean_pixels, shifted
from trustgain.keys import KeyRing
from trustgain.watermark.latent import latent_key


def test_mean_and_shift_stay_8_bit():
    a = Image.fromarray(np.full((4, 4, 3), 10, np.uint8))
    b = Image.fromarray(np.full((4, 4, 3), 250, np.uint8))
    assert float(mean_pixels([a, b]).mean()) == 130.0
    out = shifted([a, b], np.full((4, 4, 3), 9.6, np.float32))
    assert [int(np.asarray(im)[0, 0, 0]) for im in out] == [20, 255]  # rounded, clipped


def _rows(pipe, detect):
    calls = []

    def read(images, nonces, payloads):
        assert len(images) == len(nonces) == len(payloads) == 6
        calls.append(images)
        return [SimpleNamespace(detected=detect(im, len(calls))) for im in images]

    rows = averaging_rows(pipe, latent_key(KeyRing.generate()), read, latent_shape(pipe), steps=2,
                          estimates=4, targets=6, n_avg=3)
    assert len(calls) == 1 + 4 * 2  # before, then each estimate's attack and control
    return {r.metric.split(": ")[-1]: r for r in rows}


def test_nothing_removed_passes(sd_pipe):
    rows = _rows(sd_pipe, lambda im, call: True)
    assert rows["removal, attack"].value == rows["removal, control"].value == 0
    assert "per estimate [0, 0, 0, 0]" in rows["removal, attack"].note
    assert rows["removal beyond the control"].ok is True


def test_removal_only_by_the_estimates_fails(sd_pipe):
    # reads 2, 4, 6, 8 are the attacks (read 1 is before the change): detected everywhere else
    rows = _rows(sd_pipe, lambda im, call: call not in (2, 4, 6, 8))
    assert rows["removal, attack"].value == 1 and rows["removal, control"].value == 0
    beyond = rows["removal beyond the control"]
    assert beyond.value == 1 and beyond.ok is False and "p = " in beyond.note
