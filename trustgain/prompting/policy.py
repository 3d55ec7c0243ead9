"""A prompt-engineering policy imitated from expert choices (Liu et al., arXiv 2502.11386).

The paper's mechanism in three parts, each measured by ``python -m trustgain.bench
prompt-policy``:

1. **A corpus per request** (:func:`propose`): the request itself, a chat model's greedy
   rewrite and ``samples`` sampled rewrites (the ``prompt.rewrite`` instruction and few-shot
   turns), each reduced by ``keep`` (e.g. to the words the image model reads), duplicates
   merged. These are the operations the policy chooses between.
2. **Features of each (request, candidate) pair** (:data:`FEATURES`), generic, with no
   knowledge of the image model's subjects: where the candidate came from, how many sampled
   rewrites agree on it, how strongly the samples support the words it adds (on average and
   the weakest one: self-consistency at the word level), how much of the
   request it keeps, the chat model's mean log-probability of it as the rewrite, its length
   and repeated words.
3. **A reward learned from demonstrations** (:func:`fit`): an expert (a person, or a quality
   judge looking at the generated images) marks the acceptable candidates of a few requests;
   maximum-entropy inverse RL fits a linear reward ``r = theta . phi`` under which the expert's
   choices are most likely. A request is one decision with no state transition, so MaxEnt
   IRL's likelihood is exactly the conditional logit ``P(a | s) = exp r(s, a) / sum_b exp
   r(s, b)`` over that request's own candidates; several acceptable candidates enter as
   ``log sum_{a in accepted} P(a | s)``. The policy takes the candidate of highest reward;
   a service that may retry takes the next ones in order (the paper's interactive rounds).

Why the fit is written here (20 lines over scipy's L-BFGS): ``imitation`` (AIRL, GAIL) pins
gymnasium 0.29 and stable-baselines3 2.2 and wants an environment with transitions;
scikit-learn's logistic regression cannot express per-request candidate sets of varying size
or a set of accepted choices; statsmodels' ``ConditionalLogit`` has no set-valued outcome.

The paper's corpus, expert data and quality assessor are not public; this is our reading.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trustgain.errors import ConfigError, InputError
from trustgain.prompting.rewrite import conversation, first_line

FEATURES = ("from_request", "from_greedy", "votes", "new_words", "support", "support_min",
            "kept", "logprob", "words", "repeats")
FORMAT = "trustgain.prompt-policy"
#: Lowest log-probability feature (an empty candidate scores -inf).
_LOGPROB_FLOOR = -20.0


@dataclass(frozen=True)
class Candidate:
    """One proposed prompt: its text, where it came from, and its :data:`FEATURES`."""

    text: str
    sources: tuple[str, ...]
    features: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "sources": list(self.sources),
                "features": list(self.features)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(str(data["text"]), tuple(map(str, data["sources"])),
                   tuple(float(v) for v in data["features"]))


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def propose(llm: Any, request: str, *, instruction: str, examples: tuple[tuple[str, str], ...],
            samples: int = 6, temperature: float = 0.9, top_p: float = 0.95, seed: int = 0,
            keep: Callable[[str], str] | None = None,
            max_new_tokens: int = 40) -> list[Candidate]:
    """The candidate prompts for ``request`` with their features (see the module docstring).

    ``llm`` is a :class:`~trustgain.generators.text.TransformersTextGenerator`; ``keep`` maps
    a text to what the image model would be given (default: the text with its spaces
    normalised). Candidates that ``keep`` leaves empty are dropped; the request's own
    candidate comes first when it survives.
    """
    if samples < 1:
        raise ConfigError(f"samples must be at least 1, not {samples}")
    keep = keep or (lambda text: " ".join(text.split()))
    turns = conversation(request, instruction, examples)
    greedy = first_line(llm.complete(turns, max_new_tokens=max_new_tokens))
    sampled = [first_line(text) for text in llm.replies(
        turns, samples, seed=seed, do_sample=True, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens)]
    kept = [keep(text) for text in [request, greedy, *sampled]]
    sources: dict[str, list[str]] = {}
    for source, text in zip(["request", "greedy"] + ["sample"] * len(sampled), kept,
                            strict=True):
        if text.strip():
            sources.setdefault(text, []).append(source)
    proposals = [set(_words(text)) for text in kept[1:]]
    asked = _words(kept[0])
    out = []
    for text, came in sources.items():
        words = _words(text)
        new = [w for w in dict.fromkeys(words) if w not in asked]
        backing = [sum(w in p for p in proposals) / len(proposals) for w in new]
        support, support_min = (float(np.mean(backing)), min(backing)) if new else (0.0, 0.0)
        kept_share = (sum(w in words for w in asked) / len(asked)) if asked else 1.0
        logprob = max(llm.reply_logprob(turns, text), _LOGPROB_FLOOR)
        votes = sum(s != "request" for s in came) / len(proposals)
        values = ("request" in came, "greedy" in came, votes, len(new), support, support_min,
                  kept_share, logprob, len(words), len(words) - len(set(words)))
        out.append(Candidate(text, tuple(came), tuple(float(v) for v in values)))
    return out


def request_seed(request: str, seed: int = 0) -> int:
    """A sampling seed that depends on the request and ``seed`` only (the same request gets
    the same corpus)."""
    digest = hashlib.sha256(f"{seed}\0{request}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class PromptPolicy:
    """A linear reward over standardised :data:`FEATURES`; higher is better."""

    theta: tuple[float, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    demonstrations: int
    l2: float
    features: tuple[str, ...] = FEATURES

    def __post_init__(self) -> None:
        d = len(self.features)
        if self.features != FEATURES:
            raise ConfigError(f"policy features {list(self.features)} are not this version's "
                              f"{list(FEATURES)}")
        values = (*self.theta, *self.mean, *self.scale)
        if (len(self.theta), len(self.mean), len(self.scale)) != (d, d, d) or not all(
                isinstance(v, float) and math.isfinite(v) for v in values):
            raise ConfigError(f"a policy needs {d} finite numbers in theta, mean and scale")
        if not all(s > 0 for s in self.scale):
            raise ConfigError("policy scales must be positive")

    @classmethod
    def most_likely(cls) -> PromptPolicy:
        """The fixed rule "highest mean log-probability under the chat model" (no fit)."""
        theta = tuple(float(f == "logprob") for f in FEATURES)
        return cls(theta=theta, mean=(0.0,) * len(FEATURES), scale=(1.0,) * len(FEATURES),
                   demonstrations=0, l2=0.0)

    def rewards(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """The reward of each candidate."""
        if not candidates:
            return np.zeros(0)
        x = (np.array([c.features for c in candidates]) - self.mean) / self.scale
        return x @ np.array(self.theta)

    def rank(self, candidates: Sequence[Candidate]) -> list[int]:
        """Candidate indices from best to worst (ties keep the proposal order)."""
        rewards = self.rewards(candidates)
        return sorted(range(len(candidates)), key=lambda i: -rewards[i])

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": 1, "features": list(self.features),
                           "theta": list(self.theta), "mean": list(self.mean),
                           "scale": list(self.scale), "demonstrations": self.demonstrations,
                           "l2": self.l2}, indent=1) + "\n"

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        from trustgain.fileio import write_atomic

        return write_atomic(path, self.to_json().encode(), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> PromptPolicy:
        path = Path(path)
        try:
            raw = path.read_bytes()
            if len(raw) > 1 << 20:
                raise InputError(f"{path} is over 1 MiB: not a prompt policy")
            data = json.loads(raw)
        except OSError as exc:
            raise InputError(f"cannot read prompt policy {path}: {exc.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{path} is not JSON: not a prompt policy") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != 1:
            raise InputError(f"{path} is not a version-1 {FORMAT} file")
        try:
            return cls(theta=tuple(map(float, data["theta"])),
                       mean=tuple(map(float, data["mean"])),
                       scale=tuple(map(float, data["scale"])),
                       demonstrations=int(data["demonstrations"]), l2=float(data["l2"]),
                       features=tuple(map(str, data["features"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: malformed prompt policy ({exc})") from None
        except ConfigError as exc:
            raise InputError(f"{path}: {exc}") from None


def fit(demonstrations: Sequence[tuple[Sequence[Candidate], Sequence[int]]], *,
        l2: float = 1.0) -> PromptPolicy:
    """Maximum-entropy IRL from ``(candidates, accepted indices)`` pairs (module docstring).

    Demonstrations whose expert accepted nothing, or everything, say nothing about the reward
    and are left out (the count kept is recorded). ``l2`` is the Gaussian prior's weight on
    the standardised reward weights.
    """
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    if isinstance(l2, bool) or not isinstance(l2, int | float) or not 0 <= l2 < math.inf:
        raise ConfigError(f"l2 must be a finite number >= 0, not {l2!r}")
    used = []
    for candidates, accepted in demonstrations:
        ok = sorted(set(accepted))
        if any(not 0 <= i < len(candidates) for i in ok):
            raise ConfigError("an accepted index is not one of the demonstration's candidates")
        if 0 < len(ok) < len(candidates):
            used.append((np.array([c.features for c in candidates]), ok))
    if len(used) < 2:
        raise ConfigError(f"{len(used)} informative demonstration(s): need at least 2 where "
                          "the expert accepted some candidates and not others")
    stacked = np.concatenate([x for x, _ in used])
    mean, scale = stacked.mean(0), stacked.std(0)
    scale[scale < 1e-9] = 1.0
    data = [((x - mean) / scale, ok) for x, ok in used]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        total, grad = 0.5 * l2 * theta @ theta, l2 * theta
        for x, ok in data:
            r = x @ theta
            p_all = np.exp(r - logsumexp(r))
            p_ok = np.exp(r[ok] - logsumexp(r[ok]))
            total += logsumexp(r) - logsumexp(r[ok])
            grad = grad + p_all @ x - p_ok @ x[ok]
        return float(total), grad

    theta = minimize(loss, np.zeros(len(FEATURES)), jac=True, method="L-BFGS-B").x
    return PromptPolicy(theta=tuple(map(float, theta)), mean=tuple(map(float, mean)),
                        scale=tuple(map(float, scale)), demonstrations=len(used),
                        l2=float(l2))


def corpus_line(request: str, candidates: Sequence[Candidate]) -> str:
    """One JSON line of a corpus file: the request, its candidates, and an empty
    ``accepted`` list for the expert to fill with candidate indices."""
    return json.dumps({"request": request, "candidates": [c.as_dict() for c in candidates],
                       "accepted": []}, ensure_ascii=False)


def read_corpus(path: str | Path) -> list[tuple[list[Candidate], list[int]]]:
    """The ``(candidates, accepted)`` demonstrations of a corpus file (JSON lines written by
    :func:`corpus_line`, ``accepted`` filled in); every fault is one line naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read corpus {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text: not a corpus file") from None
    out = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            cands = [Candidate.from_dict(c) for c in row["candidates"]]
            accepted = row["accepted"]
            if not isinstance(accepted, list) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in accepted):
                raise ValueError("accepted must be a list of candidate indices")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{path}, line {number}: not a corpus line ({exc})") from None
        if any(len(c.features) != len(FEATURES) or not all(map(math.isfinite, c.features))
               for c in cands):
            raise InputError(f"{path}, line {number}: candidates need {len(FEATURES)} finite "
                             "features (a corpus from another version?)")
        if any(not 0 <= i < len(cands) for i in accepted):
            raise InputError(f"{path}, line {number}: accepted index out of range "
                             f"(0..{len(cands) - 1})")
        out.append((cands, accepted))
    if not out:
        raise InputError(f"{path} holds no demonstrations")
    return out
