"""prompt.policy: a corpus of candidate prompts, a reward fitted by MaxEnt IRL, the stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import trustgain
from trustgain.errors import ConfigError, GeneratorError, InputError, OutputExistsError
from trustgain.generators.text import TransformersTextGenerator, cached_generator
from trustgain.prompting.choose import PolicyPrompt
from trustgain.prompting.policy import (
    FEATURES,
    Candidate,
    PromptPolicy,
    fit,
    propose,
    request_seed,
)
from trustgain.prompting.rewrite import DEFAULT_EXAMPLES, DEFAULT_INSTRUCTION


def _cands(rows):
    return [Candidate(f"c{i}", ("sample",), tuple(map(float, row))) for i, row in enumerate(rows)]


def _simulated(theta, n, rng):
    """Demonstrations drawn from the conditional logit with reward ``theta . phi``."""
    demos = []
    for _ in range(n):
        x = rng.normal(size=(int(rng.integers(2, 7)), len(FEATURES)))
        r = x @ theta
        p = np.exp(r - r.max())
        demos.append((_cands(x), [int(rng.choice(len(x), p=p / p.sum()))]))
    return demos


def test_fit_recovers_the_reward_that_generated_the_choices():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=len(FEATURES))
    policy = fit(_simulated(theta, 600, rng), l2=0.1)
    learned = np.array(policy.theta) / np.array(policy.scale)  # back to raw feature units
    cosine = learned @ theta / np.linalg.norm(learned) / np.linalg.norm(theta)
    assert cosine > 0.95
    held_out = _simulated(theta, 300, rng)
    top = [policy.rank(c)[0] == int(np.argmax([x.features for x in c] @ theta))
           for c, _ in held_out]
    assert np.mean(top) > 0.85


def test_a_set_of_accepted_choices_and_uninformative_demonstrations():
    rows = np.zeros((3, len(FEATURES)))
    rows[:, 2] = [0.0, 1.0, 1.0]  # the expert accepts both candidates with votes
    demo = (_cands(rows), [1, 2])
    policy = fit([demo, demo, (_cands(rows), []), (_cands(rows), [0, 1, 2])])
    assert policy.demonstrations == 2  # nothing or everything accepted says nothing
    assert policy.theta[2] > 0 and policy.rank(_cands(rows))[0] in (1, 2)
    with pytest.raises(ConfigError, match="at least 2"):
        fit([demo])
    with pytest.raises(ConfigError, match="accepted index"):
        fit([(_cands(rows), [3]), demo])
    with pytest.raises(ConfigError, match="l2"):
        fit([demo, demo], l2=-1.0)


def test_policy_files_round_trip_and_bad_ones_are_one_line_errors(tmp_path):
    rng = np.random.default_rng(1)
    policy = fit(_simulated(rng.normal(size=len(FEATURES)), 50, rng))
    path = policy.save(tmp_path / "p.json")
    assert PromptPolicy.load(path) == policy and PromptPolicy.load(path).sha256() == policy.sha256()
    with pytest.raises(OutputExistsError):
        policy.save(path)
    data = json.loads(path.read_text())
    cases = {
        "missing.json": None,
        "text.json": b"\xff not json",
        "format.json": json.dumps({**data, "format": "x"}).encode(),
        "features.json": json.dumps({**data, "features": ["a"] * len(FEATURES)}).encode(),
        "nan.json": json.dumps({**data, "theta": [math.nan] * len(FEATURES)}).encode(),
        "short.json": json.dumps({**data, "mean": [0.0]}).encode(),
        "scale.json": json.dumps({**data, "scale": [0.0] * len(FEATURES)}).encode(),
        "keys.json": json.dumps({"format": data["format"], "version": 1}).encode(),
        "huge.json": b" " * (1 << 20) + b"{}",
    }
    for name, raw in cases.items():
        if raw is not None:
            (tmp_path / name).write_bytes(raw)
        with pytest.raises(InputError) as err:
            PromptPolicy.load(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)


def test_replies_and_reply_logprob(lm_dir):
    gen = cached_generator(lm_dir)
    turns = [{"role": "user", "content": "the cat"}]
    sampled = gen.replies(turns, 4, seed=3, do_sample=True, max_new_tokens=5)
    assert len(sampled) == 4 and sampled == gen.replies(turns, 4, seed=3, do_sample=True,
                                                         max_new_tokens=5)
    assert gen.complete(turns, max_new_tokens=5) == gen.replies(turns, 1, max_new_tokens=5)[0]
    score = gen.reply_logprob(turns, "the cat sat")
    assert math.isfinite(score) and score < 0
    assert gen.reply_logprob(turns, "") == -math.inf
    for bad in (0, 257, True):
        with pytest.raises(GeneratorError, match="n must"):
            gen.replies(turns, bad)


def test_propose_merges_duplicates_and_replays_with_its_seed(lm_dir):
    gen = cached_generator(lm_dir)
    kw = dict(instruction=DEFAULT_INSTRUCTION, examples=DEFAULT_EXAMPLES, samples=5,
              max_new_tokens=6)
    cands = propose(gen, "the   cat sat", seed=request_seed("the cat sat"), **kw)
    assert cands[0].text == "the cat sat" and cands[0].sources[0] == "request"
    assert len({c.text for c in cands}) == len(cands)
    assert sum(len(c.sources) for c in cands) <= 7
    assert all(len(c.features) == len(FEATURES) and all(map(math.isfinite, c.features))
               for c in cands)
    assert propose(gen, "the   cat sat", seed=request_seed("the cat sat"), **kw) == cands
    only_cats = propose(gen, "the cat sat", seed=1, keep=lambda t: " ".join(
        w for w in t.split() if w == "cat"), **kw)
    assert {c.text for c in only_cats} <= {"cat", "cat cat", "cat cat cat"}
    with pytest.raises(ConfigError):
        propose(gen, "x", samples=0, instruction="", examples=())


def _policy_file(tmp_path, weight_on="from_greedy"):
    theta = [0.0] * len(FEATURES)
    theta[FEATURES.index(weight_on)] = 1.0
    return str(PromptPolicy(theta=tuple(theta), mean=(0.0,) * len(FEATURES),
                            scale=(1.0,) * len(FEATURES), demonstrations=2, l2=1.0)
               .save(tmp_path / f"{weight_on}.json", overwrite=True))


def test_the_stage_takes_the_policys_choice_and_records_no_text(lm_dir, sd_pipe, keyring,
                                                                 tmp_path, monkeypatch):
    monkeypatch.setattr(TransformersTextGenerator, "complete",
                        lambda self, *a, **k: "a red seven")
    monkeypatch.setattr(TransformersTextGenerator, "replies",
                        lambda self, turns, n, **k: ("a blue cat",) * n)
    art = {}
    for weight in ("from_greedy", "votes", "from_request"):
        stage = PolicyPrompt(model=lm_dir, policy=_policy_file(tmp_path, weight), samples=3)
        art[weight] = trustgain.wrap(sd_pipe, [stage], keyring=keyring)(
            "gimme a scarlet 7", seed=0, num_inference_steps=2)
    assert art["from_greedy"].request.prompt == "a red seven"
    assert art["votes"].request.prompt == "a blue cat"
    assert art["from_request"].request.prompt == "gimme a scarlet 7"
    record = next(s for s in art["votes"].record.record["stages"]
                  if s["name"] == "prompt.policy")
    params = record["params"]
    assert params["candidates"] == [3] and params["chosen_sources"] == [["sample"] * 3]
    assert params["policy_sha256"] == PromptPolicy.load(_policy_file(tmp_path, "votes")).sha256()
    text = json.dumps(art["votes"].record.record)
    assert "scarlet" not in text and "blue cat" not in text
    kept = next(s for s in art["from_request"].record.record["stages"]
                if s["name"] == "prompt.policy")
    assert not kept["applied"] and "kept" in kept["reason"]


def test_the_stage_with_the_tiny_model_is_deterministic(lm_dir, sd_pipe, keyring, tmp_path):
    stage = trustgain.build_stage("prompt.policy", model=lm_dir, samples=2, max_new_tokens=4,
                                  policy=_policy_file(tmp_path, "logprob"))
    run = trustgain.wrap(sd_pipe, [stage], keyring=keyring)
    first = run(["the cat", "  "], seed=0, num_inference_steps=2)
    assert first.request.prompt[1] == "  "  # a blank prompt is never replaced
    assert run(["the cat", "  "], seed=0, num_inference_steps=2).request.prompt == \
        first.request.prompt


def test_stage_settings_are_checked(lm_dir, tmp_path):
    good = _policy_file(tmp_path)
    assert PolicyPrompt(model=lm_dir)._load() == PromptPolicy.most_likely()
    for bad in ({"policy": None}, {"policy": str(tmp_path / "none.json")},
                {"policy": good, "samples": 0},
                {"policy": good, "temperature": 0}, {"policy": good, "top_p": 1.5},
                {"policy": good, "seed": "1"}, {"policy": good, "examples": [["a"]]}):
        with pytest.raises((ConfigError, InputError)):
            PolicyPrompt(model=lm_dir, **bad)


def test_cli_proposes_a_corpus_and_fits_a_policy_from_marked_choices(lm_dir, tmp_path,
                                                                      capsys):
    from trustgain.cli.main import main

    asked = tmp_path / "requests.txt"
    asked.write_text("the cat sat\n\nred seven on a mat\nhello world\n")
    corpus = tmp_path / "corpus.jsonl"
    assert main(["prompt-policy", "propose", str(asked), "-o", str(corpus), "--model", lm_dir,
                 "--samples", "3", "--no-progress"]) == 0
    rows = [json.loads(x) for x in corpus.read_text().splitlines()]
    assert [r["request"] for r in rows] == ["the cat sat", "red seven on a mat", "hello world"]
    first = corpus.read_text()
    # a run killed after the first request (its last line torn) resumes and ends the same
    (tmp_path / "again.jsonl.partial").write_text(first.splitlines()[0] + "\n{\"req")
    assert main(["prompt-policy", "propose", str(asked), "-o", str(tmp_path / "again.jsonl"),
                 "--model", lm_dir, "--samples", "3", "--no-progress"]) == 0
    assert (tmp_path / "again.jsonl").read_text() == first
    assert "resuming: 1 of 3" in capsys.readouterr().err
    assert not (tmp_path / "again.jsonl.partial").exists()
    assert main(["prompt-policy", "propose", str(asked), "-o", str(corpus), "--model",
                 lm_dir]) == 1  # never overwrites unasked
    policy = tmp_path / "policy.json"
    assert main(["prompt-policy", "fit", str(corpus), "-o", str(policy)]) == 1  # none marked
    assert not policy.exists()
    for r in rows:  # the expert accepts the request as typed, when it has alternatives
        r["candidates"].append({"text": "x", "sources": ["sample"],
                                "features": [0.0] * len(FEATURES)})
        r["accepted"] = [0]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["prompt-policy", "fit", str(corpus), "-o", str(policy)]) == 0
    fitted = PromptPolicy.load(policy)
    assert fitted.demonstrations == 3 and fitted.theta[FEATURES.index("from_request")] > 0
    rows[1]["accepted"] = [99]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["prompt-policy", "fit", str(corpus), "-o", str(tmp_path / "p2.json")]) == 1
    (tmp_path / "empty.txt").write_text("\n \n")
    assert main(["prompt-policy", "propose", str(tmp_path / "empty.txt"), "-o",
                 str(tmp_path / "c2.jsonl"), "--model", lm_dir]) == 1


@pytest.mark.parametrize("line, says", [
    ("{", "line 1: not a corpus line"),
    ('{"request": "a", "candidates": [], "accepted": "0"}', "indices"),
    ('{"request": "a", "candidates": [{"text": "a", "sources": [], "features": [1]}], '
     '"accepted": []}', "features"),
    ('{"request": "a", "candidates": [], "accepted": [true]}', "indices"),
])
def test_bad_corpus_lines_are_one_line_errors(tmp_path, line, says):
    from trustgain.prompting.policy import read_corpus

    path = tmp_path / "c.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InputError, match=says) as err:
        read_corpus(path)
    assert "\n" not in str(err.value)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match="UTF-8"):
        read_corpus(path)
    path.write_text("\n")
    with pytest.raises(InputError, match="no demonstrations"):
        read_corpus(path)
