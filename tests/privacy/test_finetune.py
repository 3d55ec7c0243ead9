"""DP fine-tuning: per-sample loss, weights that move (or not), ledger, resume, model card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import tiny_sd_pipeline

from trustgain.digest import canonical_json
from trustgain.errors import ConfigError, InputError, OutputExistsError
from trustgain.privacy import finetune_trainable as tr
from trustgain.privacy.accounting import epsilon_spent
from trustgain.privacy.finetune import finetune, per_sample_mse, plan
from trustgain.privacy.finetune_card import model_privacy
from trustgain.privacy.finetune_data import load_records, write_folder
from trustgain.privacy.ledger import BudgetExceeded, Ledger

FAST = dict(epochs=1, batch_size=4, progress=False, lr=1e-3, accountant="rdp")  # prv is slow


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def records():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    return images, [f"digit {i % 3}" for i in range(12)]


def _unet_state(folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()


def test_per_sample_gradients_are_each_samples_own():
    """opacus' grad_sample of a batch == the gradient of each sample's loss alone."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    unet = tiny_sd_pipeline().unet.train()
    x, t, s = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 900]), torch.randn(3, 16, 16)
    target = torch.randn(3, 4, 8, 8)
    gsm = GradSampleModule(unet)
    per = per_sample_mse(gsm(x, t, s).sample, target)
    assert per.shape == (3,)
    with pytest.warns(UserWarning, match="backward hook"):  # inputs need no grad here
        per.mean().backward()
    p = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight
    batched = p.grad_sample.clone()
    gsm._close()
    for i in range(3):
        unet.zero_grad()
        per_sample_mse(unet(x[i:i + 1], t[i:i + 1], s[i:i + 1]).sample, target[i:i + 1]).backward()
        torch.testing.assert_close(batched[i], p.grad, rtol=1e-4, atol=1e-6)


def test_per_sample_mse_is_one_value_per_record():
    pred, target = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    per = per_sample_mse(pred, target)
    assert per.shape == (5,)
    torch.testing.assert_close(per[2], torch.nn.functional.mse_loss(pred[2], target[2]))
    with pytest.raises(ValueError, match="batched"):
        per_sample_mse(pred.mean(0), target.mean(0)[None])


@pytest.mark.parametrize("trainable", ["attention", "lora"])
def test_only_the_chosen_weights_change(base, records, tmp_path, trainable):
    out = tmp_path / "out"
    rep = finetune(base, records, out, dp=True, noise_multiplier=1.0, trainable=trainable,
                   **FAST)
    before, after = _unet_state(base), _unet_state(out)
    assert set(before) == set(after)  # LoRA fused: a plain UNet comes out
    attn = [k for k in before if ".attn1." in k or ".attn2." in k]
    proj = [k for k in attn if any(f".{m}." in k for m in tr.LORA_TARGETS) and "weight" in k]
    other = [k for k in before if k not in attn]
    assert all(not torch.equal(before[k], after[k]) for k in proj)
    assert all(torch.equal(before[k], after[k]) for k in other)
    assert rep.trainable_params < sum(v.numel() for v in before.values())


def test_stuck_and_moved_weights_are_caught():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    named = [("a", a), ("b", b)]
    fp = tr.Fingerprint.of(named)
    with torch.no_grad():
        a.add_(1.0)
    with pytest.raises(tr.TrainingCheckFailed, match="did not change"):
        tr.check_moved(fp, named)  # b is stuck
    with pytest.raises(tr.TrainingCheckFailed, match="frozen"):
        tr.check_frozen(fp, named)  # a moved
    with pytest.raises(tr.TrainingCheckFailed, match="per-sample"):
        tr.check_gradients(named, dp=True)  # no grad_sample at all


def test_ledger_refuses_before_spending_and_charges_after(base, records, tmp_path):
    book = Ledger.create(tmp_path / "ledger.json", dataset="toy", epsilon=3.0, delta=1e-4)
    with pytest.raises(BudgetExceeded):
        finetune(base, records, tmp_path / "a", dp=True, noise_multiplier=0.5,
                 ledger=book.path, **FAST)
    assert book.spends() == [] and not (tmp_path / "a").exists()
    rep = finetune(base, records, tmp_path / "b", dp=True, noise_multiplier=2.0,
                   ledger=book.path, **FAST)
    (spend,) = book.spends()
    assert spend.epsilon == pytest.approx(rep.epsilon) and spend.accountant == "rdp"
    q, steps = plan(n_records=12, batch_size=4, epochs=1)
    assert rep.epsilon == pytest.approx(epsilon_spent(
        accountant="rdp", noise_multiplier=2.0, sample_rate=q, steps=steps, delta=1e-5))


def test_privacy_facts_in_card_json_and_config(base, records, tmp_path):
    out = tmp_path / "m"
    rep = finetune(base, records, out, dp=True, target_epsilon=20.0, **FAST)
    doc = json.loads((out / "privacy.json").read_text())
    assert doc["epsilon"] == rep.epsilon <= 20.0 and doc["sample_rate"] == rep.sample_rate
    assert doc["steps"] == rep.steps == 3 and doc["noise_multiplier"] == rep.noise_multiplier
    assert f"{rep.epsilon:.4g}" in (out / "README.md").read_text()
    from diffusers import StableDiffusionPipeline

    facts = model_privacy(StableDiffusionPipeline.from_pretrained(out))
    assert facts["epsilon"] == rep.epsilon and facts["accountant"] == "rdp"
    canonical_json({"generator": {"privacy": facts}})  # fits a signed provenance record
    assert model_privacy(base) is None
    with pytest.raises(OutputExistsError):
        finetune(base, records, out, dp=True, target_epsilon=20.0, **FAST)


def test_non_private_run_says_so(base, records, tmp_path):
    rep = finetune(base, records, tmp_path / "np", dp=False, **FAST)
    assert rep.epsilon == float("inf")
    assert "Not differentially private" in (tmp_path / "np" / "README.md").read_text()
    assert json.loads((tmp_path / "np" / "privacy.json").read_text())["epsilon"] == "inf"
    facts = model_privacy(tmp_path / "np")
    assert facts["dp"] is False and facts["epsilon"] == "inf"
    canonical_json(facts)
    with pytest.raises(ConfigError, match="ledger"):
        finetune(base, records, tmp_path / "x", dp=False, ledger=tmp_path / "l.json", **FAST)
    with pytest.raises(ConfigError, match="exactly one"):
        finetune(base, records, tmp_path / "x", dp=True, **FAST)


def test_resume_continues_step_and_accountant(base, records, tmp_path, monkeypatch):
    from trustgain.privacy import finetune_run

    out, calls = tmp_path / "r", {"n": 0}
    real = finetune_run.Run._step

    def crash_at_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(finetune_run.Run, "_step", crash_at_third)
    kw = dict(FAST, epochs=2, dp=True, noise_multiplier=1.5)
    with pytest.raises(KeyboardInterrupt):
        finetune(base, records, out, checkpoint_every=1, **kw)
    monkeypatch.setattr(finetune_run.Run, "_step", real)
    ckpt = tmp_path / ".r.checkpoint.pt"
    assert ckpt.is_file() and not out.exists()
    with pytest.raises(ConfigError, match="other settings"):
        finetune(base, records, out, **dict(kw, noise_multiplier=1.6))
    rep = finetune(base, records, out, **kw)
    assert rep.resumed_from_step == 2 and not ckpt.exists()
    q, steps = plan(n_records=12, batch_size=4, epochs=2)
    assert rep.epsilon == pytest.approx(epsilon_spent(
        accountant="rdp", noise_multiplier=1.5, sample_rate=q, steps=steps, delta=1e-5))


def test_imagefolder_round_trip_and_bad_folders(records, tmp_path):
    images, captions = records
    folder = write_folder(tmp_path / "d", images, captions)
    got, caps = load_records(folder, resolution=16)
    assert np.array_equal(got, images) and caps == captions
    with pytest.raises(InputError, match=r"metadata\.jsonl"):
        load_records(tmp_path, resolution=16)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "metadata.jsonl").write_text('{"file_name": "../x.png", "text": "a"}\n')
    with pytest.raises(InputError, match="outside"):
        load_records(tmp_path / "e", resolution=16)


def test_record_carries_finetune_privacy(tmp_path):
    """Every provenance record made with a `trustgain finetune` model names its spent budget."""
    import numpy as np
    from diffusers import StableDiffusionPipeline
    from tiny import tiny_sd_pipeline

    from trustgain.generators.diffusers import DiffusersGenerator
    from trustgain.privacy.finetune import finetune

    tiny_sd_pipeline().save_pretrained(tmp_path / "b")
    imgs = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8)
    rep = finetune(tmp_path / "b", (imgs, ["a"] * 8), tmp_path / "m", dp=True,
                   noise_multiplier=1.0, epochs=1, batch_size=4, accountant="rdp", progress=False)
    d = DiffusersGenerator(StableDiffusionPipeline.from_pretrained(tmp_path / "m")).describe()
    assert d["privacy"]["epsilon"] == rep.epsilon and d["privacy"]["accountant"] == "rdp"
    base = DiffusersGenerator(StableDiffusionPipeline.from_pretrained(tmp_path / "b")).describe()
    assert "privacy" not in base


def test_train_tokens_moves_word_embeddings_under_dp_and_nothing_else(base, records, tmp_path):
    """Words the base never saw can be learned: the text encoder's word embeddings train
    (per-record clipped and noised with the UNet); its other weights stay bit-identical."""
    from transformers import CLIPTextModel

    out = tmp_path / "out"
    rep = finetune(base, records, out, dp=True, noise_multiplier=1.0, trainable="attention",
                   train_tokens=True, **FAST)
    before = CLIPTextModel.from_pretrained(base, subfolder="text_encoder").state_dict()
    after = CLIPTextModel.from_pretrained(out, subfolder="text_encoder").state_dict()
    words = [k for k in before if k.endswith("token_embedding.weight")]
    assert len(words) == 1
    assert not torch.equal(before[words[0]], after[words[0]])
    assert all(torch.equal(before[k], after[k]) for k in before if k not in words)
    facts = json.loads((out / "privacy.json").read_text())
    assert facts["train_tokens"] is True and rep.train_tokens
    assert rep.trainable_params > finetune(
        base, records, tmp_path / "plain", dp=True, noise_multiplier=1.0,
        trainable="attention", **FAST).trainable_params


def test_trainable_none_trains_only_word_embeddings(base, records, tmp_path):
    with pytest.raises(ConfigError, match="train_tokens"):
        finetune(base, records, tmp_path / "x", dp=True, noise_multiplier=1.0,
                 trainable="none", **FAST)
    out = tmp_path / "out"
    rep = finetune(base, records, out, dp=True, noise_multiplier=1.0, trainable="none",
                   train_tokens=True, **FAST)
    before, after = _unet_state(base), _unet_state(out)
    assert all(torch.equal(before[k], after[k]) for k in before)  # UNet frozen
    assert rep.trainable == "none" and rep.train_tokens and rep.trainable_params > 0


def test_noise_multiplicity_merges_each_records_rows():
    """k rows per record -> one per-record gradient: the mean of that record's row gradients,
    i.e. the gradient of its mean loss over k draws (what opacus then clips once)."""
    from opacus import GradSampleModule

    from trustgain.privacy.finetune_run import merge_rows

    torch.manual_seed(0)
    unet = tiny_sd_pipeline().unet.train()
    n, k = 2, 3
    x, s = torch.randn(n * k, 4, 8, 8), torch.randn(n, 16, 16).repeat_interleave(k, 0)
    t, target = torch.randint(0, 1000, (n * k,)), torch.randn(n * k, 4, 8, 8)
    gsm = GradSampleModule(unet)
    with pytest.warns(UserWarning, match="backward hook"):
        per_sample_mse(gsm(x, t, s).sample, target).mean().backward()
    p = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight
    merge_rows([q for q in unet.parameters() if q.requires_grad], n, k)
    merged = p.grad_sample.clone()
    gsm._close()
    assert merged.shape == (n, *p.shape)
    for i in range(n):
        unet.zero_grad()
        rows = slice(i * k, (i + 1) * k)
        per_sample_mse(unet(x[rows], t[rows], s[rows]).sample, target[rows]).mean().backward()
        torch.testing.assert_close(merged[i], p.grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(AssertionError, match="expected 4 per-sample gradients"):
        merge_rows([p], 2, 2)  # no per-sample gradients (opacus hooks closed)


def test_noise_multiplicity_and_physical_batches_under_dp(base, records, tmp_path):
    rep = finetune(base, records, tmp_path / "k", dp=True, noise_multiplier=1.0,
                   noise_multiplicity=2, physical_batch_size=2, **FAST)
    assert rep.noise_multiplicity == 2 and rep.steps == 3
    assert json.loads((tmp_path / "k" / "privacy.json").read_text())["noise_multiplicity"] == 2
    assert "noise multiplicity) | 2" in (tmp_path / "k" / "README.md").read_text()
    with pytest.raises(ConfigError, match="noise_multiplicity"):
        finetune(base, records, tmp_path / "x", dp=False, noise_multiplicity=0, **FAST)


def test_a_failed_write_is_charged_once_and_the_rerun_only_writes(base, records, tmp_path,
                                                                   monkeypatch):
    import errno

    from trustgain.errors import OutputWriteError
    from trustgain.privacy import finetune as ft

    book = Ledger.create(tmp_path / "ledger.json", dataset="toy", epsilon=50.0, delta=1e-4)
    real = ft._write_output

    def full_disk(pipe, run, report, out, overwrite):
        raise OutputWriteError(out, OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(ft, "_write_output", full_disk)
    args = dict(dp=True, noise_multiplier=2.0, ledger=book.path, **FAST)
    with pytest.raises(OutputWriteError):
        finetune(base, records, tmp_path / "m", **args)
    assert len(book.spends()) == 1  # charged before the release, as always
    monkeypatch.setattr(ft, "_write_output", real)
    finetune(base, records, tmp_path / "m", **args)  # the rerun writes, and pays nothing more
    assert len(book.spends()) == 1 and (tmp_path / "m" / "privacy.json").is_file()
    assert not list(tmp_path.glob(".m.*"))  # no checkpoint or charge marker left behind
    finetune(base, records, tmp_path / "n", **args)  # another release pays again
    assert len(book.spends()) == 2
