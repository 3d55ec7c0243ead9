"""Membership-inference audit: statistics, losses on a tiny pipeline, the attack, the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from trustgain.errors import InputError
from trustgain.privacy.membership import (
    AuditSet,
    audit_membership,
    denoising_losses,
    evaluate,
    load_audit_set,
    scores,
)


def _images(n: int, seed: int, side: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, side, side, 3), dtype=np.uint8)


def test_evaluate_separable_and_null():
    rng = np.random.default_rng(0)
    sep = evaluate(rng.normal(3, 1, 60), rng.normal(-3, 1, 60), n_resamples=200)
    assert sep.auc > 0.99 and sep.tpr_at_fpr > 0.9
    assert sep.auc_ci[0] <= sep.auc <= sep.auc_ci[1] + 1e-9
    null = evaluate(rng.normal(0, 1, 200), rng.normal(0, 1, 200), n_resamples=200)
    assert 0.4 < null.auc < 0.6
    assert null.auc_ci[0] < 0.5 < null.auc_ci[1]
    assert null.tpr_at_fpr < 0.2
    m, n = rng.normal(0, 1, 9), rng.normal(0, 1, 7)
    assert evaluate(m, n, n_resamples=50, seed=3) == evaluate(m, n, n_resamples=50, seed=3)
    with pytest.raises(InputError):
        evaluate(np.array([1.0]), np.array([0.0, 1.0]))


def test_vectorised_statistics_match_sklearn():
    from sklearn.metrics import roc_auc_score

    from trustgain.privacy.membership import _auc, _tpr, tpr_at_fpr

    rng = np.random.default_rng(1)
    for _ in range(20):
        m = rng.integers(0, 30, rng.integers(2, 60)).astype(float)  # ties on purpose
        n = rng.integers(0, 30, rng.integers(2, 300)).astype(float)
        labels, both = np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[m, n]
        assert _auc(m, n) == pytest.approx(roc_auc_score(labels, both))
        for fpr in (0.01, 0.1):
            assert _tpr(m, n, fpr) == pytest.approx(tpr_at_fpr(labels, both, fpr))


def test_scores_direction():
    losses = np.array([[0.1, 0.2], [0.4, 0.8]])
    s = scores(losses)
    assert s[0] > s[1]  # lower loss = more likely a member
    cal = scores(losses, reference=np.array([[0.2, 0.4], [0.4, 0.8]]))
    assert cal[0] > 0 and abs(cal[1]) < 1e-12


def test_losses_deterministic_and_checked(sd_pipe):
    x = _images(3, 0)
    caps = ["a red 7", "", "a blue 1"]
    a = denoising_losses(sd_pipe, x, caps, timesteps=(10, 500), draws=2, seed=1)
    b = denoising_losses(sd_pipe, x, caps, timesteps=(10, 500), draws=2, seed=1)
    assert a.shape == (3, 2) and np.all(a > 0)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], a[1])
    with pytest.raises(InputError, match="the model makes 16x16"):
        denoising_losses(sd_pipe, _images(2, 0, side=24), ["", ""])


class _MemorisingUNet(torch.nn.Module):
    """The empirical optimal denoiser's zero-temperature limit: it explains a noisy latent by
    the training latent that needs the smallest noise, so it reproduces training images."""

    def __init__(self, unet, alphas, train_latents):
        super().__init__()
        self.config, self.alphas, self.train = unet.config, alphas, train_latents

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, zt, t, states):
        a = self.alphas[t].view(-1, 1, 1, 1, 1)
        eps = (zt[:, None] - a.sqrt() * self.train[None]) / (1 - a).sqrt()
        best = eps.flatten(2).norm(dim=2).argmin(dim=1)
        return SimpleNamespace(sample=eps[torch.arange(len(zt)), best])


def test_attack_detects_a_memorising_model(sd_pipe):
    members, others = _images(6, 1), _images(6, 2)
    with torch.no_grad():
        x = torch.from_numpy(members).float().permute(0, 3, 1, 2) / 127.5 - 1
        z = sd_pipe.vae.encode(x).latent_dist.mean * sd_pipe.vae.config.scaling_factor
    oracle = _MemorisingUNet(sd_pipe.unet, sd_pipe.scheduler.alphas_cumprod, z)
    pipe = SimpleNamespace(**sd_pipe.components, vae_scale_factor=sd_pipe.vae_scale_factor)
    pipe.unet = oracle
    sets = (AuditSet(members, [""] * 6, list("abcdef")),
            AuditSet(others, [""] * 6, list("ghijkl")))
    report = audit_membership(pipe, *sets, timesteps=(50, 200), draws=1, n_resamples=100)
    assert report.auc == 1.0 and report.tpr_at_fpr == 1.0
    assert report.auc_per_timestep["50"] == 1.0  # low noise: members are denoised exactly
    assert report.auc_per_timestep["200"] > 0.5
    chance = audit_membership(sd_pipe, *sets, timesteps=(50,), draws=1, n_resamples=100)
    assert chance.auc < 1.0  # the untrained model does not single out the members


def _folder(path, images, captions=None):
    path.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(path / f"{i}.png")
    if captions is not None:
        rows = [json.dumps({"file_name": f"{i}.png", "text": c}) for i, c in enumerate(captions)]
        (path / "metadata.jsonl").write_text("\n".join(rows))
    return path


def test_load_audit_set(tmp_path):
    s = load_audit_set(_folder(tmp_path / "a", _images(2, 0), ["one", "two"]))
    assert s.captions == ["one", "two"] and s.images.shape == (2, 16, 16, 3)
    s = load_audit_set(_folder(tmp_path / "b", _images(2, 0)))
    assert s.captions == ["", ""]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        load_audit_set(tmp_path / "empty")
    bad = _folder(tmp_path / "c", _images(1, 0), ["x"])
    (bad / "metadata.jsonl").write_text("not json\n")
    with pytest.raises(InputError, match=r"metadata\.jsonl:1"):
        load_audit_set(bad)
    missing = _folder(tmp_path / "d", _images(1, 0), ["x", "y"])
    with pytest.raises(InputError, match="missing"):
        load_audit_set(missing)


def test_cli_membership(tmp_path, sd_pipe, capsys, monkeypatch):
    from trustgain.cli.audit import audit
    from trustgain.cli.main import cli, main

    monkeypatch.setitem(cli.commands, "audit", audit)
    model = tmp_path / "model"
    sd_pipe.save_pretrained(model)
    mem = _folder(tmp_path / "m", _images(4, 3), ["a"] * 4)
    non = _folder(tmp_path / "n", _images(4, 4))
    args = ["audit", "membership", "--model", str(model), "--members", str(mem),
            "--nonmembers", str(non), "--timesteps", "50,100", "--draws", "1"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"auc", "auc_ci", "tpr_at_fpr", "tpr_ci", "n_members"} <= set(out)
    assert main([*args[:-4], "--timesteps", "a,b"]) == 1
    assert "timesteps" in capsys.readouterr().err
    assert main(["audit", "membership", "--help"]) == 0
    assert "Examples:" in capsys.readouterr().out
