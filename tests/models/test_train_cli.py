"""``python -m trustgain.models.train`` and ``python -m trustgain.models.cards`` on bad input:
one-line errors before any training, no silent replacement of existing outputs or of the
shipped models. Training itself is stubbed out (a real run takes seconds)."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from trustgain import models
from trustgain.errors import TrustgainError
from trustgain.models import cards, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def fake_judge(monkeypatch):
    """``train_judge`` replaced by an untrained judge; records the steps asked for."""
    from trustgain.models.judge import DigitsJudge

    calls: list[int] = []

    def fake(steps, device, seed=0):
        calls.append(steps)
        return DigitsJudge().eval(), {"steps": steps, "test_accuracy": 0.1, "n_test": 1}

    monkeypatch.setattr(train, "train_judge", fake)
    return calls


@pytest.fixture
def no_training(monkeypatch):
    """Any training call fails the test: the error must come before it."""
    from trustgain.models import train_sd

    def boom(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(train, "train_judge", boom)
    monkeypatch.setattr(train_sd, "train_mini_sd", boom)


def _one_line(main, argv, capsys) -> str:
    """Run ``main(argv)``: it must exit 1 with one line "error: ..." on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    msg = capsys.readouterr().err.strip()
    assert exc.value.code == 1 and "\n" not in msg and msg.startswith("error: "), msg
    return msg


def test_existing_output_needs_force(tmp_path, no_training, capsys):
    folder, file = tmp_path / "u2", tmp_path / "afile"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    file.write_text("mine too")
    for out in (folder, file):
        msg = _one_line(train.main, ["judge", "--out", str(out)], capsys)
        assert msg.endswith("exists; pass --force to replace it")
    assert (folder / "keep.txt").read_text() == "mine" and file.read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "u2"]


def test_default_output_never_silently_replaces_the_shipped_models(no_training, capsys):
    shipped = {name: _snapshot(models._HERE / name) for name in (models.JUDGE_ID,
                                                                 models.MINI_SD_ID)}
    for argv in (["judge"], ["mini-sd"], ["judge", "--steps", "3"]):
        msg = _one_line(train.main, argv, capsys)
        assert "the shipped model" in msg and "--force" in msg
    msg = _one_line(train.main, ["judge", "--out", str(models.judge_path())], capsys)
    assert "exists; pass --force" in msg
    assert shipped == {name: _snapshot(models._HERE / name) for name in shipped}


def test_force_replaces_a_folder_or_file_atomically_with_public_modes(tmp_path, fake_judge):
    folder, file = tmp_path / "u2", tmp_path / "afile"
    folder.mkdir()
    (folder / "stale.txt").write_text("old")
    file.write_text("old")
    for out in (folder, file, tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()  # an empty folder is no data: no --force needed
            train.main(["judge", "--steps", "2", "--out", str(out)])
        else:
            train.main(["judge", "--steps", "2", "--out", str(out), "--force"])
        names = sorted(p.name for p in out.iterdir())
        assert names == ["README.md", "config.json", "model.safetensors", "training.json"]
        for p in out.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name
        assert json.loads((out / "training.json").read_text())["steps"] == 2
        assert models.judge.DigitsJudge.from_pretrained(out) is not None
    assert fake_judge == [2, 2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "u2"]  # no temps


def test_judge_default_steps_and_zero_steps(tmp_path, fake_judge):
    train.main(["judge", "--out", str(tmp_path / "a")])
    assert fake_judge == [train.JUDGE_STEPS]
    with pytest.raises(SystemExit) as exc:
        train.main(["judge", "--steps", "0", "--out", str(tmp_path / "b")])
    assert exc.value.code == 2 and fake_judge == [train.JUDGE_STEPS]


@pytest.mark.parametrize("argv", [
    ["mini-sd", "--steps", "-1"], ["mini-sd", "--batch", "-2"], ["mini-sd", "--batch", "0"],
    ["mini-sd", "--lr", "nan"], ["mini-sd", "--lr", "0"], ["mini-sd", "--lr", "inf"],
    ["mini-sd", "--max-minutes", "nan"], ["mini-sd", "--max-minutes", "-1"],
    ["mini-sd", "--warmup", "-1"], ["mini-sd", "--vae-steps", "0"], ["mini-sd", "--copies", "0"],
    ["mini-sd", "--steps", "1.5"], ["mini-sd", "--seed", "-1"], ["judge", "--device", "tpu"],
    ["mini-sd", "--device", "cuda:99"], ["judge", "--copies", "3"], ["judge", "--warmup", "1"],
    ["judge", "--latent-factor", "2"],
])
def test_bad_values_are_one_line_usage_errors(argv, tmp_path, no_training, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main([*argv, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].count("error:") == 1
    assert not (tmp_path / "o").exists()


def test_zero_is_a_value_not_the_default(tmp_path, monkeypatch):
    from trustgain.models import train_sd

    seen = []

    def stop(recipe, device, vae_from=None):
        seen.append(recipe)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_sd, "train_mini_sd", stop)
    with pytest.raises(SystemExit) as exc:
        train.main(["mini-sd", "--steps", "0", "--warmup", "0", "--batch", "3", "--lr", "0.01",
                    "--copies", "2", "--vae-steps", "5", "--max-minutes", "0.5",
                    "--out", str(tmp_path / "o")])
    assert exc.value.code == 130  # Ctrl-C: "interrupted", no traceback
    r = seen[0]
    assert (r.steps, r.warmup, r.batch, r.lr, r.copies, r.vae_steps, r.max_minutes) == (
        0, 0, 3, 0.01, 2, 5, 0.5)
    assert not (tmp_path / "o").exists()


def test_warmup_zero_trains_without_dividing_by_zero():
    import torch
    from transformers import CLIPTokenizer

    from trustgain.models.train_sd import SDRecipe, train_unet

    tok = CLIPTokenizer.from_pretrained(models.mini_sd_path(), subfolder="tokenizer")
    latents = (torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8))
    recipe = SDRecipe(steps=1, batch=2, warmup=0)
    train_unet(recipe, tok, latents, ["a 1", "a 2"], 1.0, "cpu")
    assert recipe.log["unet_steps_done"] == 1


def test_known_errors_and_ctrl_c_end_as_one_line(tmp_path, monkeypatch, capsys):
    def fail(*a, **k):
        raise TrustgainError("boom", hint="do this")

    monkeypatch.setattr(train, "train_judge", fail)
    assert _one_line(train.main, ["judge", "--out", str(tmp_path / "o")], capsys) == (
        "error: boom (do this)")

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_judge", interrupt)
    with pytest.raises(SystemExit) as exc:
        train.main(["judge", "--out", str(tmp_path / "o")])
    assert exc.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"


def test_refuses_the_current_folder_and_a_file_among_the_parents(tmp_path, monkeypatch,
                                                                  no_training, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("x")
    assert "refusing to replace" in _one_line(train.main, ["judge", "--out", ".", "--force"],
                                              capsys)
    assert "is a file, not a folder" in _one_line(
        train.main, ["judge", "--out", "f/model", "--force"], capsys)
    assert (tmp_path / "f").read_text() == "x"


def test_help_keeps_the_line_continuations(capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--unet-from trustgain-mini-sd \\\n        --copies 10" in out
    assert "--force" in out


def _bench(**over):
    row = {"metric": "judge accuracy", "value": 0.9, "unit": "", "target": ">= 0.8",
           "ok": True, "note": ""}
    doc = {"command": "python -m trustgain.bench models", "date": "2025-01-01",
           "device": "cpu", "seconds": 1.0, "rows": [row]}
    doc.update(over)
    return doc


@pytest.fixture
def card_root(tmp_path):
    root = tmp_path / "root"
    (root / models.JUDGE_ID).mkdir(parents=True)
    (root / models.JUDGE_ID / "training.json").write_text(json.dumps({"steps": 3}))
    return root


@pytest.mark.parametrize("content", [None, "{bad", "[1, 2]", '{"rows": []}',
                                     json.dumps(_bench(rows=[{"metric": "judge"}])),
                                     json.dumps(_bench(rows="no"))])
def test_cards_bad_bench_is_one_line(content, tmp_path, card_root, capsys):
    bench = tmp_path / "bench.json"
    if content is not None:
        bench.write_text(content)
    with pytest.raises(SystemExit) as exc:
        cards.main(["--bench", str(bench), "--root", str(card_root)])
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    msg = err.strip().splitlines()[-1] if err.strip() else str(exc.value.code)
    assert "error:" in msg and "Traceback" not in err
    assert not (card_root / models.JUDGE_ID / "README.md").exists()


def test_cards_root_must_hold_a_model(tmp_path, card_root, capsys):
    with pytest.raises(SystemExit) as exc:
        cards.main(["--root", str(tmp_path / "nonexistent")])
    assert exc.value.code == 2 and "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert "nothing written" in _one_line(cards.main, ["--root", str(tmp_path / "empty")],
                                          capsys)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_bench()))
    cards.main(["--root", str(card_root), "--bench", str(bench)])
    card = (card_root / models.JUDGE_ID / "README.md").read_text()
    assert "| judge accuracy | 0.9 |" in card and "3 steps" in card
    (card_root / models.JUDGE_ID / "training.json").write_text("[")
    assert re.search(r"training\.json .*not valid JSON",
                     _one_line(cards.main, ["--root", str(card_root)], capsys))
