"""The protect.rae stage: contract, exact recovery from the record's residuals, no secrets."""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import pytest
import test_stage_contract  # tests/ is on sys.path (conftest)
from PIL import Image

from trustgain import GenerationRequest, Item, Phase, RunContext
from trustgain.digest import canonical_json
from trustgain.protection import recover
from trustgain.protection.stage import NOTE, ProtectRAE
from trustgain.stage import BUILTIN_STAGES

ENTRY = "trustgain.protection.stage:ProtectRAE"


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(BUILTIN_STAGES, "protect.rae", ENTRY)


def test_contract(registered, sd_pipe, keyring):
    test_stage_contract.test_stage_contract("protect.rae", sd_pipe, keyring)


def test_protects_and_recovers_exactly(keyring, tmp_path):
    rng = np.random.default_rng(0)
    imgs = (Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)), "text")
    item = Item(request=GenerationRequest(prompt="a seven", seed=1), outputs=imgs)
    stage = ProtectRAE(eps=6, steps=2, residual_dir=str(tmp_path))
    assert stage.phase is Phase.PROTECT
    ctx = RunContext(run_id="ab" * 16, stage=stage.name, generator=None, _keyring=keyring)
    result = stage(item, ctx)
    out = result.item.outputs
    assert out[2] == "text"
    key = ctx.key("residual").material
    sealed = [base64.b64decode(s) for s in result.item.notes[NOTE]]
    params = result.params
    for i, (orig, prot) in enumerate(zip(imgs[:2], out[:2], strict=True)):
        a, b = np.asarray(orig), np.asarray(prot)
        assert a.shape == b.shape and 0 < np.abs(a.astype(int) - b).max() <= 6
        assert np.array_equal(recover(b, sealed[i], key=key), a)
        entry = params["residuals"][i]
        assert entry["residual_sha256"] == hashlib.sha256(sealed[i]).hexdigest()
        assert (tmp_path / f"{'ab' * 16}-{i}.rae").read_bytes() == sealed[i]
    text = canonical_json(dict(params)).decode()
    assert key.hex() not in text and params["method"] == "pgd" and params["eps"] == 6


def test_bad_settings():
    with pytest.raises(Exception, match="eps"):
        ProtectRAE(eps=0)
    with pytest.raises(ValueError, match="surrogates"):
        ProtectRAE(surrogates="/no/such/folder")
