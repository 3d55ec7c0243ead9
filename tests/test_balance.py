"""audit.balance: the spread of a request's outputs over an attribute's groups."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import trustgain
from trustgain.audit.attributes import attribute, register_attribute
from trustgain.audit.balance import BalanceCheck, balance
from trustgain.errors import AuditFailed, ConfigError
from trustgain.models.data import COLORS
from trustgain.types import GenerationRequest, Item


def _digit(colour: str) -> Image.Image:
    array = np.zeros((32, 32, 3))
    array[8:24, 12:20] = COLORS[colour]
    return Image.fromarray((array * 255).astype(np.uint8))


def _run(stage, outputs, keyring):
    ctx = trustgain.RunContext(run_id="r", stage=stage.name, generator=None, _keyring=keyring)
    return stage(Item(request=GenerationRequest(prompt="a seven"), outputs=tuple(outputs)), ctx)


def test_ink_colour_reads_every_ink_and_blank_images():
    images = [_digit(c) for c in COLORS] + [Image.new("RGB", (32, 32))]
    assert attribute("ink_colour").read(images) == [*COLORS, "none"]


def test_a_balanced_request_passes_and_a_skewed_one_fails(keyring):
    stage = BalanceCheck(groups=("white", "red"))
    even = _run(stage, [_digit("white"), _digit("red")] * 8, keyring)
    assert even.params["passed"] and even.params["total_variation"] == 0
    with pytest.raises(AuditFailed, match=r"total variation 0\.50"):
        _run(stage, [_digit("white")] * 16, keyring)
    recorded = _run(BalanceCheck(groups=("white", "red"), on_fail="record"),
                    [_digit("white")] * 16, keyring)
    assert not recorded.params["passed"] and recorded.params["counts"] == {"white": 16, "red": 0}
    json.dumps(dict(recorded.params))


def test_a_large_gap_that_may_be_chance_is_not_a_failure(keyring):
    # 7 of 8 white against 50/50: gap 0.375 but p = 0.03 > alpha 0.01
    result = _run(BalanceCheck(groups=("white", "red")),
                  [_digit("white")] * 7 + [_digit("red")], keyring)
    assert result.params["total_variation"] == 0.375 and result.params["passed"]
    few = _run(BalanceCheck(), [_digit("white")] * 3, keyring)
    assert not few.applied and "fewer than min_outputs" in few.reason


def test_groups_outside_the_target_count_against_it():
    found = balance(["red", "red", "cyan"], {"red": 1.0})
    assert found["counts"] == {"red": 2, "cyan": 1} and found["p_value"] == 0.0
    assert found["total_variation"] == pytest.approx(1 / 3, abs=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"attribute": "mood"}, "unknown attribute"),
    ({"target": {"red": 0.5, "teal": 0.5}}, "not groups"),
    ({"target": {"red": 0.5, "white": 0.4}}, "sum to 0.9"),
    ({"groups": ["purple"]}, "not groups"),
    ({"min_outputs": 1}, "min_outputs"),
    ({"alpha": 0}, "alpha"),
    ({"on_fail": "warn"}, "on_fail"),
])
def test_settings_are_checked(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BalanceCheck(**kwargs)


def test_a_registered_reader_is_used_by_name(keyring):
    register_attribute("parity", ("even", "odd"), lambda outs: ["even" if len(o) % 2 == 0
                                                                else "odd" for o in outs])
    result = _run(BalanceCheck(attribute="parity", min_outputs=2), ["ab", "abc"], keyring)
    assert result.params["counts"] == {"even": 1, "odd": 1}
    with pytest.raises(ConfigError, match="distinct groups"):
        register_attribute("one", ("a",), lambda outs: [])
