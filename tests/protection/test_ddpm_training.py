"""Training the small pixel DDPM: output layout, resumable checkpoints, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trustgain.errors import InputError, OutputExistsError
from trustgain.protection import pixel_ddpm

KW = {"steps": 3, "batch": 4, "width": 8, "checkpoint_every": 1, "progress": False}


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).random((8, 1, 16, 16)).astype(np.float32)


def _weights(folder) -> dict[str, torch.Tensor]:
    return pixel_ddpm.load_ddpm(folder).unet.state_dict()


def test_trains_and_saves_a_loadable_ddpm_pipeline(tmp_path, data):
    from diffusers import DDPMPipeline

    out = pixel_ddpm.train_ddpm(data, tmp_path / "m", max_timestep=300, **KW)
    model = pixel_ddpm.load_ddpm(out)
    assert (model.channels, model.size, model.max_timestep) == (1, 16, 300)
    assert not (out / pixel_ddpm.CHECKPOINT_NAME).exists()
    pipe = DDPMPipeline.from_pretrained(out)
    assert pipe.unet.config.in_channels == 1
    with pytest.raises(OutputExistsError):
        pixel_ddpm.train_ddpm(data, out, **KW)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, data):
    whole = pixel_ddpm.train_ddpm(data, tmp_path / "whole", **KW)
    part = tmp_path / "part"
    pixel_ddpm.train_ddpm(data, part, stop_after=2, **KW)
    assert (part / pixel_ddpm.CHECKPOINT_NAME).is_file() and not (part / "unet").exists()
    state = torch.load(part / pixel_ddpm.CHECKPOINT_NAME, weights_only=False)
    assert state["step"] == 2
    pixel_ddpm.train_ddpm(data, part, **KW)
    a, b = _weights(whole), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_data_is_refused(tmp_path, data):
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        pixel_ddpm.train_ddpm(data * 255, tmp_path / "x", **KW)
    with pytest.raises(InputError, match="square"):
        pixel_ddpm.train_ddpm(data[:, :, :, :8], tmp_path / "x", **KW)
    with pytest.raises(InputError, match="not a DDPM folder"):
        pixel_ddpm.load_ddpm(tmp_path)


def test_folder_crops_skip_unreadable_files(tmp_path, capsys):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    crops = pixel_ddpm.folder_images(tmp_path, size=16, channels=3, crops_per_image=5)
    assert crops.shape == (5, 3, 16, 16) and crops.dtype == np.float32
    assert crops.min() >= 0 and crops.max() <= 1
    assert "skipping" in capsys.readouterr().err
    with pytest.raises(InputError, match="no readable image"):
        pixel_ddpm.folder_images(tmp_path, size=64, channels=3)


def test_command_line_trains_on_a_folder(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "imgs"
    src.mkdir()
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(src / "g.png")
    rc = pixel_ddpm.main(["--data", str(src), "-o", str(tmp_path / "m"), "--size", "16",
                          "--channels", "1", "--steps", "2", "--batch", "2", "--width", "8",
                          "--no-progress"])
    assert rc == 0 and (tmp_path / "m" / "unet").is_dir()
    assert pixel_ddpm.main(["--data", str(tmp_path / "none"), "-o", str(tmp_path / "n")]) == 1
