"""What the documentation (README, `--help` examples) promises, where the code had to change."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trustgain.errors import StageError
from trustgain.pipeline import TrustPipeline
from trustgain.watermark.pixel_stage import PixelMark


class NoiseGenerator:
    """Returns one 256-px noise image: too busy for the pixel mark at its lowest strength."""

    kind = "test"
    callback_tensor_inputs = ()

    def supports(self, capability):
        return False

    def describe(self):
        return {"kind": "test", "class": "Noise", "model_id": "noise", "config_sha256": ""}

    def __call__(self, request, *, latents=None, hooks=()):
        rng = np.random.default_rng(0)
        return (Image.fromarray(rng.integers(0, 256, (256, 256, 3), np.uint8)),)


def test_weak_pixel_mark_in_a_pipeline_names_the_stage_setting_not_a_cli_flag(keyring):
    # `trustgain generate` has no --max-strength flag: the stage's hint must name its setting
    trust = TrustPipeline(NoiseGenerator(), [PixelMark(strength=0.5, max_strength=0.5)],
                          keyring=keyring)
    with pytest.raises(StageError, match="not found in the marked image") as caught:
        trust("x")
    assert "max_strength setting" in caught.value.hint
    assert "--max-strength" not in caught.value.hint


def test_ray_address_without_a_cluster_is_one_line_and_a_hint(tmp_path, keyring, monkeypatch,
                                                              capsys):
    # `trustgain protect photos/ -o protected/ --ray=auto` with no running cluster: README says
    # known errors print one line and a hint and exit 1, not a Ray traceback
    import sys
    import types

    from trustgain.cli.main import main

    fake = types.ModuleType("ray")
    fake.is_initialized = lambda: False

    def init(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.\nmore detail")

    fake.init = init
    monkeypatch.setitem(sys.modules, "ray", fake)
    ring = tmp_path / "ring.json"
    keyring.save(ring)
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(
        src / "a.png")
    for command in ("protect", "recover"):
        code = main([command, str(src), "-o", str(tmp_path / f"out-{command}"), "--ray=auto",
                     "--keyring", str(ring), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 1
        assert "error: --ray=auto: cannot connect to a Ray cluster (Could not find any " \
               "running Ray instance.)" in err
        assert "hint: start one (ray start --head)" in err
        assert "Traceback" not in err


def test_audit_membership_honours_trustgain_no_progress(tmp_path, monkeypatch, capsys):
    # `trustgain --help` documents TRUSTGAIN_NO_PROGRESS=1 for every command; the audit loads
    # models, whose loading bars it must silence like generate and detect-latent do
    import diffusers.utils.logging as dlogging
    import transformers.utils.logging as tlogging

    from trustgain.cli.main import main

    assert main(["audit", "membership", "--help"]) == 0
    assert "--no-progress" in capsys.readouterr().out
    monkeypatch.setenv("TRUSTGAIN_NO_PROGRESS", "1")
    dlogging.enable_progress_bar()
    try:
        code = main(["audit", "membership", "--model", "trustgain-mini-sd", "--members",
                     str(tmp_path), "--nonmembers", str(tmp_path), "--timesteps", "a,b"])
        assert code == 1 and "--timesteps 'a,b'" in capsys.readouterr().err
        assert not dlogging.is_progress_bar_enabled()
    finally:
        dlogging.enable_progress_bar()
        tlogging.enable_progress_bar()
