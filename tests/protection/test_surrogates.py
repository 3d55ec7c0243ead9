"""Patches data, surrogate training/saving, the training command, and the bench's quick mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trustgain.errors import ConfigError, InputError
from trustgain.protection import patches as P
from trustgain.protection import surrogates as S


def test_patch_splits_are_region_disjoint_and_seeded():
    img = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    cut = int(128 * P.TRAIN_FRACTION)
    train, test = P.crop(img, 20, "train", rng), P.crop(img, 20, "test", rng)
    left, right = img[:, :cut], img[:, cut:]

    def inside(p, region):
        return any(np.array_equal(p, region[y:y + 32, x:x + 32])
                   for y in range(region.shape[0] - 31) for x in range(region.shape[1] - 31))

    assert all(inside(p, left) for p in train[:3]) and all(inside(p, right) for p in test[:3])
    x1, y1, names = P.load("test", 2)
    x2, _, _ = P.load("test", 2)
    assert np.array_equal(x1, x2) and x1.shape[1:] == (32, 32, 3) and len(names) >= 8
    assert np.array_equal(np.bincount(y1), np.full(len(names), 2))


@pytest.mark.parametrize("arch", S.ARCHS)
def test_architectures_take_any_size(arch):
    model = S.wrap(arch, S.make_net(arch, 5))
    for size in (32, 48, 20):
        assert model(torch.rand(2, 3, size, size)).shape == (2, 5)
    with pytest.raises(ConfigError, match="known"):
        S.make_net("alexnet", 5)


def test_train_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 20)
    x[y == 1, ..., 0] = 255  # a learnable cue
    model = S.train("cnn", x, y, epochs=2)
    S.save({"cnn": model}, tmp_path, meta={"n_classes": 2, "channels": 3})
    (loaded,) = S.load(tmp_path)
    t = S.to_tensor(x)
    assert torch.allclose(model(t), loaded(t), atol=1e-5)
    rf = S.train_sklearn("rf", x, y, trees=5)
    assert S.predict(rf, x).shape == (40,)
    with pytest.raises(InputError, match=r"surrogates\.json"):
        S.load(tmp_path / "nothing")


def test_training_command_on_a_folder(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for cls, colour in (("cats", 0), ("dogs", 2)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            img = rng.integers(0, 100, (40, 40, 3), dtype=np.uint8)
            img[..., colour] = 250
            Image.fromarray(img).save(tmp_path / "data" / cls / f"{i}.png")
    (tmp_path / "data" / "cats" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "sur"
    assert S.main(["--data", str(tmp_path / "data"), "-o", str(out), "--archs", "cnn,mlp",
                   "--epochs", "1"]) == 0
    assert len(S.load(out)) == 2
    assert "skipping unreadable" in capsys.readouterr().err
    with pytest.raises(InputError, match="two classes"):
        S.folder_dataset(tmp_path / "data" / "dogs")


def test_bench_quick_runs_and_recovery_is_exact():
    from trustgain.bench import Row
    from trustgain.bench import protection as B

    rows = B.run(quick=True)
    assert all(isinstance(r, Row) for r in rows)
    by = {r.metric: r for r in rows}
    for metric in ("bit-exact recovery", "wrong key rejected", "one-bit residual tamper detected",
                   "one-bit image tamper detected", "every bit flip of a residual detected"):
        assert by[metric].value == 100 and by[metric].ok is True
    assert by["[block2] max |protected - original|"].value <= B.EPS
    assert any(r.metric.startswith("peer torchattacks") for r in rows)
    ceiling = [r for r in rows if r.metric.startswith("ceiling: APGD-T")]
    torch_models = {r.metric.split()[-1] for r in rows if r.metric.startswith("clean accuracy")
                    } - set(B.SKLEARN)
    assert {r.metric.split(" on ")[1].split()[0] for r in ceiling} == torch_models
    assert all(0 <= r.value <= 100 for r in ceiling)


def test_linear_ceiling_is_exact_on_a_small_logistic_regression():
    """The closed-form attack agrees with brute force over every corner of the budget box."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from trustgain.bench import protection as B

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 2, 2, 1), dtype=np.uint8)  # 4 pixels: 16 corners
    y = (x.reshape(60, -1).astype(int) @ np.array([1, -1, 2, 0])) % 3
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        x.reshape(60, -1) / 255, y)
    corners = np.array(np.meshgrid(*[[-1, 1]] * 4)).reshape(4, -1).T
    for eps in (3, 20, 60):
        right = model.predict(x.reshape(60, -1) / 255) == y
        brute = [any(model.predict(np.clip(f + eps * corners, 0, 255) / 255) != t)
                 for f, t in zip(x.reshape(60, -1)[right].astype(float), y[right], strict=True)]
        assert B.linear_ceiling(model, x, y, eps) == pytest.approx(np.mean(brute))
    assert B.linear_ceiling(S.train_sklearn("rf", x, y, trees=3), x, y, 8) is None


def test_bench_reads_a_retrained_family_as_the_mean_over_its_trainings():
    """A held-out family with retrained copies gets the mean transfer ASR, each run named."""
    from trustgain.bench import protection as B

    xtr, ytr, _ = B.P.load("train", 10)
    xte, yte, _ = B.P.load("test", 2)
    models = B._train_all(True, xtr, ytr)
    rf = models["rf"]
    always_right = type("Oracle", (), {"predict": lambda self, x: yte[: len(x)]})()
    rows: list = []
    B._attack_rows(rows, "t", True, models, ["cnn"], ["rf"], xte, yte, B.config(2), b"k" * 32,
                   {"rf": [rf, always_right]})
    by = {r.metric: r for r in rows}
    row = by[f"[t] transfer ASR rf @{B.EPS}/255"]
    assert "mean of 3 trainings" in row.note
    assert "(bench seed, then seeds 100, 101)" in row.note
    base = float(row.note.rsplit(": ", 1)[1].split(" / ")[0])
    assert row.value == pytest.approx((2 * base + 0.0) / 3, abs=0.06)  # oracle never fooled
    assert "every training: none" in by["[t] held-out models with transfer ASR >= 70%"].note
    assert "interval of the mean above 70%: none" in by[
        "[t] held-out models with transfer ASR >= 70%"].note
    lo, hi = (float(v) for v in row.note.split("95% interval [")[1].split("]")[0].split(", "))
    assert lo <= row.value <= hi


def test_mean_interval_is_the_student_t_interval():
    from trustgain.bench.protection_measures import mean_interval

    # n = 4: half-width t(0.975, 3) * sd / sqrt(4)
    lo, hi = mean_interval([60.0, 70.0, 70.0, 80.0])
    sd = np.std([60.0, 70.0, 70.0, 80.0], ddof=1)
    assert (lo + hi) / 2 == pytest.approx(70.0)
    assert (hi - lo) / 2 == pytest.approx(3.182446 * sd / 2, rel=1e-5)
    with pytest.raises(ValueError, match="at least two"):
        mean_interval([70.0])


def test_bench_trainings_name_their_seeds_and_refuse_a_bad_count():
    """``--trainings N``: the bench seed plus N - 1 seeds from 100; a bad N fails at once."""
    from trustgain.bench import protection as B
    from trustgain.bench.protection_rows import seed_text

    assert B.retrain_seeds(B.TRAININGS) == B.RETRAIN_SEEDS == (100, 101)
    assert B.retrain_seeds(15) == tuple(range(100, 114))
    assert B.retrain_seeds(1) == ()
    assert seed_text(B.retrain_seeds(15)) == "100-113"
    assert seed_text((100, 101)) == "100, 101"
    assert seed_text((100, 105, 106)) == "100, 105, 106"
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            B.retrain_seeds(bad)
    with pytest.raises(ValueError, match="positive integer"):
        B.run(quick=True, trainings=0)  # before any model is trained


def test_bench_retrained_cache_reads_only_what_is_asked_and_keeps_the_rest(tmp_path, monkeypatch):
    """Fewer trainings read only their models back; more train only the missing seeds, and
    the cache still lists every model it held."""
    import json

    from trustgain.bench import protection_setup as PS
    from trustgain.protection import surrogates as S

    real_train, trained, loaded = S.train, [], []
    real_load = S.load_named

    def quick_train(arch, x, y, *, epochs, seed):
        trained.append(f"{arch}-s{seed}")
        return real_train(arch, x, y, epochs=1, seed=seed)

    def spy_load(folder, names=None):
        out = real_load(folder, names)
        loaded.append(sorted(out))
        return out

    monkeypatch.setattr(S, "train", quick_train)
    monkeypatch.setattr(S, "load_named", spy_load)
    monkeypatch.setenv("TRUSTGAIN_BENCH_CACHE", str(tmp_path))
    from trustgain.protection import patches

    x, y, _ = patches.load("train", 2)
    first = PS._retrain_held_out(False, x, y, seeds=(100, 101))
    assert sorted(trained) == sorted(f"{a}-s{s}" for a in PS.HELD_OUT for s in (100, 101))
    assert {a: len(v) for a, v in first.items()} == {a: 2 for a in PS.HELD_OUT}

    trained.clear()
    loaded.clear()
    fewer = PS._retrain_held_out(False, x, y, seeds=(101,))
    assert not trained and {a: len(v) for a, v in fewer.items()} == {a: 1 for a in PS.HELD_OUT}
    assert loaded == [sorted(f"{a}-s101" for a in PS.HELD_OUT)]

    PS._retrain_held_out(False, x, y, seeds=(100, 102))
    assert sorted(trained) == sorted(f"{a}-s102" for a in PS.HELD_OUT)
    listed = json.loads((tmp_path / "seeds" / S.CONFIG_NAME).read_text())["models"]
    assert sorted(listed) == sorted(f"{a}-s{s}" for a in PS.HELD_OUT for s in (100, 101, 102))
