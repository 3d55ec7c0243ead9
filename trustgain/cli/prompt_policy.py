"""``trustgain prompt-policy``: propose candidate prompts, then fit a policy from your choices."""

from __future__ import annotations

import json
from pathlib import Path

import click

from trustgain.cli.common import device_option, note, progress, progress_option
from trustgain.errors import InputError, OutputExistsError
from trustgain.fileio import write_atomic


@click.group(name="prompt-policy")
def prompt_policy() -> None:
    """The prompt policy of the ``prompt.policy`` stage, fitted from an expert's choices.

    \b
    1. trustgain prompt-policy propose requests.txt -o corpus.jsonl
    2. mark the good candidates: in each line set "accepted" to their indices, e.g. [0, 2]
    3. trustgain prompt-policy fit corpus.jsonl -o policy.json
    4. use it: stage prompt.policy with policy=policy.json
    """


@prompt_policy.command()
@click.argument("requests", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The corpus (JSON lines) to write.")
@click.option("--model", default="smollm2", show_default=True,
              help="Chat model: smollm2, a transformers id or folder, or a .gguf file.")
@click.option("--preset", type=click.Choice(["default", "digits"]), default="default",
              show_default=True, help="Rewrite instruction and examples (digits: "
              "trustgain-mini-sd's preset).")
@click.option("--known-words", is_flag=True,
              help="Keep only the words the embedded image model's tokenizer reads whole.")
@click.option("--samples", type=click.IntRange(1, 64), default=6, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing output.")
@device_option()
@progress_option
def propose(requests: str, output: str, model: str, preset: str, known_words: bool,
            samples: int, force: bool, device: str, no_progress: bool) -> None:
    """Write the candidate prompts of each request (one per line of REQUESTS) for marking.

    \b
    Example:
      trustgain prompt-policy propose requests.txt -o corpus.jsonl --preset digits --known-words
    """
    from trustgain.generators.text import cached_generator
    from trustgain.prompting import rewrite as rw
    from trustgain.prompting.policy import corpus_line, request_seed
    from trustgain.prompting.policy import propose as propose_candidates

    if Path(output).exists() and not force:  # before the long work, not after it
        raise OutputExistsError(Path(output))
    try:
        lines = [x.strip() for x in Path(requests).read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise InputError(f"{requests} is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"cannot read {requests}: {exc.strerror}") from None
    asked = [x for x in lines if x]
    if not asked:
        raise InputError(f"{requests} holds no requests (one per line)")
    instruction, examples = ((rw.DIGITS_INSTRUCTION, rw.DIGITS_EXAMPLES) if preset == "digits"
                             else (rw.DEFAULT_INSTRUCTION, rw.DEFAULT_EXAMPLES))
    keep = None
    if known_words:
        from trustgain.models import load_mini_sd

        tokenizer = load_mini_sd("cpu").tokenizer
        keep = lambda text: rw.known_words_only(text, tokenizer)  # noqa: E731
    llm = cached_generator(model, device)
    partial = Path(f"{output}.partial")  # one finished request per line: a rerun resumes
    done = _finished(partial, asked)
    if done:
        note(f"resuming: {len(done)} of {len(asked)} requests already proposed in {partial}")
    with open(partial, "w" if not done else "a", encoding="utf-8") as fh:
        for r in progress(asked[len(done):], desc="proposing", disable=no_progress):
            line = corpus_line(r, propose_candidates(
                llm, r, instruction=instruction, examples=examples, samples=samples,
                seed=request_seed(r), keep=keep))
            fh.write(line + "\n")
            fh.flush()
            done.append(line)
    write_atomic(output, "".join(x + "\n" for x in done).encode("utf-8"), overwrite=force)
    partial.unlink()
    count = sum(len(json.loads(x)["candidates"]) for x in done)
    note(f"{output}: {len(asked)} requests, {count} candidates; set each line's "
         '"accepted" to the indices of the good ones, then: trustgain prompt-policy fit '
         f"{output} -o policy.json")


def _finished(partial: Path, asked: list[str]) -> list[str]:
    """The lines of an interrupted run that match the start of ``asked`` (a torn last line,
    or a different request list, is dropped and redone)."""
    if not partial.is_file():
        return []
    done = []
    for line, request in zip(partial.read_text(encoding="utf-8").splitlines(), asked,
                             strict=False):
        try:
            if json.loads(line)["request"] != request:
                break
        except (json.JSONDecodeError, KeyError, TypeError):
            break
        done.append(line)
    partial.write_text("".join(x + "\n" for x in done), encoding="utf-8")
    return done


@prompt_policy.command()
@click.argument("corpus", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The policy file (JSON) to write.")
@click.option("--l2", type=click.FloatRange(0, None), default=1.0, show_default=True,
              help="Weight of the Gaussian prior on the reward weights.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
def fit(corpus: str, output: str, l2: float, force: bool) -> None:
    """Fit the policy's reward from a marked corpus (maximum-entropy inverse RL).

    \b
    Example:
      trustgain prompt-policy fit corpus.jsonl -o policy.json
    """
    from trustgain.errors import ConfigError
    from trustgain.prompting.policy import FEATURES, read_corpus
    from trustgain.prompting.policy import fit as fit_policy

    demos = read_corpus(corpus)
    try:
        policy = fit_policy(demos, l2=l2)
    except ConfigError as exc:
        raise InputError(f"{corpus}: {exc}") from None
    policy.save(output, overwrite=force)
    weights = ", ".join(f"{f} {t:+.2f}" for f, t in zip(FEATURES, policy.theta, strict=True))
    note(f"{output}: fitted on {policy.demonstrations} of {len(demos)} demonstrations "
         f"(the others accepted none or all); weights {weights}")
