"""The protection-modes bench: its command line refuses bad arguments before any training,
and the dataset rows at another budget use it for poison and adversarial trainer alike and
give no verdict (the targets are stated at 8/255)."""

from __future__ import annotations

import numpy as np
import pytest

from trustgain.bench import protection_modes as pm


@pytest.mark.parametrize("args, message", [
    (["--kinds", "foo"], "unknown poison kind foo; known: targeted"),
    (["--kinds", "grating,x"], "unknown poison kind x"),
    (["--kinds", ","], "no poison kind in ','"),
    (["--victim-seeds", "a,b"], "victim seeds must be distinct non-negative integers"),
    (["--victim-seeds", "7,7"], "got '7,7'"),
    (["--eps", "0"], "--eps: 0 is out of range (must be >= 1 and <= 64)"),
    (["--eps", "2.5"], "--eps: '2.5' is not an integer"),
    (["--poison-steps", "0"], "--poison-steps: 0 is out of range (must be >= 1 and <= 10000)"),
])
def test_bad_arguments_are_refused_before_any_work(args, message, capsys, monkeypatch):
    monkeypatch.setattr(pm, "poison_rows", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(pm, "ddpm_rows", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_:
        pm.main(["--only", "poison", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_another_budget_reaches_poison_and_adversarial_trainer_without_a_verdict(monkeypatch):
    from trustgain.protection import poison, victim

    trainings: list[dict] = []
    budgets: list[int] = []
    real_protect = poison.protect_dataset

    def spy_protect(images, labels, **kw):
        out = real_protect(images, labels, **kw)
        budgets.append(int(np.abs(out.astype(int) - images.astype(int)).max()))
        return out

    def fake_train(images, labels, **kw):  # no training: only what it was asked for
        trainings.append(kw)
        return images

    monkeypatch.setattr(poison, "protect_dataset", spy_protect)
    monkeypatch.setattr(victim, "train_victim", fake_train)
    monkeypatch.setattr(victim, "accuracy", lambda model, images, labels: 0.5)
    rows = pm.poison_rows(False, ("grating",), eps=16, victim_seeds=(7,))
    assert budgets == [16]
    adversarial = [kw["adversarial_eps"] for kw in trainings if kw.get("adversarial_eps")]
    assert len(adversarial) == 2 and set(adversarial) == {16}  # clean reference and poisoned
    verdicts = {r.metric: (r.target, r.ok) for r in rows if r.target}
    assert verdicts == {
        "poison grating: fresh CNN on protected set": ("<= 0.35 at 8/255", None),
        "poison grating: adversarially trained CNN on protected set": ("<= 0.55 at 8/255", None),
    }
    assert all("16/255" in r.note for r in rows if "adversarial" in r.metric)


def test_the_stated_budget_keeps_its_verdicts_and_a_quick_run_gives_none(monkeypatch):
    from trustgain.protection import victim

    monkeypatch.setattr(victim, "train_victim", lambda images, labels, **kw: images)
    monkeypatch.setattr(victim, "accuracy", lambda model, images, labels: 0.3)
    rows = pm.poison_rows(False, ("grating",), victim_seeds=(7,))
    assert [(r.target, r.ok) for r in rows if r.target] == [("<= 0.35", True), ("<= 0.55", True)]
    quick = pm.poison_rows(True, ("grating",))
    assert [r.ok for r in quick] == [None] * len(quick) and not any(r.target for r in quick)


@pytest.mark.parametrize("eps", [3, 12])
def test_bench_attack_rounds_to_the_configured_budget(eps):
    """The bench's attack helper keeps each image within the config's budget, not the
    bench's 8: a sweep over budgets measures what it says."""
    import dataclasses

    import torch

    from trustgain.bench import protection_setup
    from trustgain.bench.protection_measures import _attack_batches

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3)).eval()
    x = np.random.default_rng(0).integers(40, 216, (4, 32, 32, 3), dtype=np.uint8)
    cfg = dataclasses.replace(protection_setup.config(steps=3), eps=eps, eot=())
    out, _ = _attack_batches(x, np.zeros(4, dtype=np.int64), [model], cfg)
    assert int(np.abs(out.astype(int) - x.astype(int)).max()) == eps
