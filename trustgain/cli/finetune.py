"""``trustgain finetune``: fine-tune a diffusers model on an image folder, with or without DP."""

from __future__ import annotations

import math

import click

from trustgain.cli.common import FiniteFloat, emit, json_option, note, progress_option
from trustgain.privacy.accounting import MAX_TARGET_EPSILON


def _check_dp_flags(dp: bool, target_epsilon: float | None, noise_multiplier: float | None,
                    ledger: str | None) -> None:
    """The flag combinations, in the flags' own names (the library speaks of arguments)."""
    if dp and (target_epsilon is None) == (noise_multiplier is None):
        raise click.UsageError("with --dp give one of --target-epsilon and --noise-multiplier")
    if not dp:
        given = [f for f, v in (("--target-epsilon", target_epsilon),
                                ("--noise-multiplier", noise_multiplier),
                                ("--ledger", ledger)) if v is not None]
        if given:
            raise click.UsageError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} "
                                   "--dp")


@click.command()
@click.option("--data", "data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Image folder with metadata.jsonl ({\"file_name\", \"text\"} per line).")
@click.option("--model", default=None,
              help="Diffusers model id or folder [default: the embedded trustgain-mini-sd].")
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Folder for the fine-tuned pipeline (must not exist).")
@click.option("--dp/--no-dp", default=False, show_default=True,
              help="Differentially private training (DP-SGD, opacus).")
@click.option("--target-epsilon", type=FiniteFloat(0, MAX_TARGET_EPSILON, lo_open=True),
              default=None,
              help="With --dp: the epsilon to spend; the noise is chosen for it.")
@click.option("--noise-multiplier", type=FiniteFloat(0, lo_open=True), default=None,
              help="With --dp: the noise (sigma) instead of a target epsilon.")
@click.option("--delta", type=FiniteFloat(0, 1, lo_open=True), default=1e-5, show_default=True,
              help="With --dp: delta (keep it below 1 / number of images).")
@click.option("--max-grad-norm", type=FiniteFloat(0, lo_open=True), default=1.0,
              show_default=True,
              help="Per-image gradient clipping norm C.")
@click.option("--accountant", type=click.Choice(["prv", "rdp"]), default="prv",
              show_default=True, help="Privacy accountant (opacus).")
@click.option("--trainable", type=click.Choice(["full", "attention", "lora", "none"]),
              default="full", show_default=True,
              help="UNet weights to train (none: only the word embeddings, with --train-tokens).")
@click.option("--train-tokens", is_flag=True,
              help="Also train the text encoder's word embeddings (under DP too): for words "
                   "the base model never saw, such as new classes.")
@click.option("--lora-rank", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Expected batch size (Poisson sampling makes it vary with --dp).")
@click.option("--physical-batch-size", type=click.IntRange(min=1), default=None,
              help="With --dp: split batches to cap memory; accounting is unchanged.")
@click.option("--noise-multiplicity", type=click.IntRange(min=1), default=1, show_default=True,
              help="Average each record's loss over K (timestep, noise) draws before it is "
                   "clipped: same privacy cost, less noisy gradients, K times the compute.")
@click.option("--lr", type=FiniteFloat(0, lo_open=True), default=1e-4, show_default=True,
              help="AdamW learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ledger", type=click.Path(dir_okay=False), default=None,
              help="Privacy ledger of the dataset: refused if over budget, charged after.")
@click.option("--restart", is_flag=True,
              help="Ignore a checkpoint of an interrupted run (default: resume from it).")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@json_option
@progress_option
def finetune(data, model, out, dp, target_epsilon, noise_multiplier, delta, max_grad_norm,
             accountant, trainable, train_tokens, lora_rank, epochs, batch_size,
             physical_batch_size, noise_multiplicity, lr, seed, ledger, restart, force, as_json,
             no_progress) -> None:
    """Fine-tune a text-to-image model's UNet; the spent privacy goes into its model card.

    \b
    Examples:
      trustgain finetune --data photos/ -o my-model --dp --target-epsilon 8 --delta 1e-5
      trustgain finetune --data photos/ --model ./base -o my-model --dp \\
          --noise-multiplier 1.1 --trainable lora --epochs 20 --ledger photos.ledger.json
      trustgain finetune --data photos/ -o plain-model --no-dp --trainable attention
      trustgain finetune --data new-classes/ --model ./base -o out --dp \\
          --target-epsilon 8 --train-tokens    # captions use words the base never saw
      trustgain finetune --data photos/ -o my-model --dp --target-epsilon 8 \\
          --noise-multiplicity 4 --physical-batch-size 32   # 4 draws per record
    An interrupted run resumes from its checkpoint (.OUT.checkpoint.pt) when rerun with the
    same settings. OUT gets the pipeline, README.md (model card) and privacy.json.
    """
    from trustgain.privacy.finetune import finetune as run

    _check_dp_flags(dp, target_epsilon, noise_multiplier, ledger)

    if model is None:
        from trustgain.models import mini_sd_path

        model = str(mini_sd_path())
    report = run(model, data, out, dp=dp, target_epsilon=target_epsilon,
                 noise_multiplier=noise_multiplier, delta=delta, max_grad_norm=max_grad_norm,
                 epochs=epochs, batch_size=batch_size, lr=lr, trainable=trainable,
                 train_tokens=train_tokens, lora_rank=lora_rank, accountant=accountant,
                 seed=seed, ledger=ledger,
                 resume=not restart, progress=not no_progress,
                 physical_batch_size=physical_batch_size,
                 noise_multiplicity=noise_multiplicity, overwrite=force)
    if report.resumed_from_step:
        note(f"resumed from step {report.resumed_from_step}")
    facts = report.as_dict()
    if math.isinf(report.epsilon):
        facts["epsilon"] = "inf"
        human = f"wrote {out}: {report.steps} steps, NOT differentially private"
    else:
        human = (f"wrote {out}: {report.steps} steps, spent epsilon={report.epsilon:.4g} "
                 f"delta={report.delta:.3g} ({report.accountant}, q={report.sample_rate:.4g}, "
                 f"sigma={report.noise_multiplier:.4g})")
    emit(facts, as_json, human)
