"""``trustgain audit``: privacy audits of a model (membership inference)."""

from __future__ import annotations

import click

from trustgain.cli.common import device_option, emit, json_option, note, progress_option
from trustgain.errors import InputError
from trustgain.generators.loading import LATENT_T2I_PARTS, load_pipeline


@click.group()
def audit() -> None:
    """Audit a model for privacy leaks."""


def _load_pipe(model: str, device: str):
    return load_pipeline(model, device, need=LATENT_T2I_PARTS, purpose="the audit")


@audit.command()
@click.option("--model", required=True, help="Audited model: diffusers folder, hub id, or "
              "trustgain-mini-sd.")
@click.option("--members", required=True, type=click.Path(file_okay=False, exists=True),
              help="Folder of training images (captions in metadata.jsonl, optional).")
@click.option("--nonmembers", required=True, type=click.Path(file_okay=False, exists=True),
              help="Folder of images from the same distribution never trained on.")
@click.option("--reference", default=None,
              help="Model the audited one was fine-tuned from: scores become loss drops.")
@click.option("--timesteps", default="25,50,100,200,300,500", show_default=True,
              help="Comma-separated timesteps at which the denoising loss is measured.")
@click.option("--draws", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Noise draws per image and timestep.")
@click.option("--fpr", default=0.01, show_default=True, type=click.FloatRange(0, 1,
              min_open=True, max_open=True), help="False-positive rate for the TPR figure.")
@click.option("--seed", default=0, show_default=True, type=int, help="Noise and bootstrap seed.")
@device_option()
@json_option
@progress_option
def membership(model, members, nonmembers, reference, timesteps, draws, fpr, seed, device,
               as_json, no_progress):
    """Membership-inference audit: can an attacker tell training images from others?

    Scores each image by its denoising loss (lower = more likely a training image),
    then reports ROC AUC and TPR at a low FPR with 95% bootstrap intervals. AUC near 0.5:
    the attack fails; near 1: the model leaks membership. Not a proof of privacy.

    \b
    Examples:
      trustgain audit membership --model ./my-finetune --members train/ --nonmembers held/
      trustgain audit membership --model ./my-finetune --reference trustgain-mini-sd \\
          --members train/ --nonmembers held/ --json
    """
    from trustgain.privacy.membership import audit_membership, load_audit_set

    try:
        steps = tuple(int(t) for t in timesteps.split(","))
    except ValueError:
        raise InputError(f"--timesteps {timesteps!r} is not a comma-separated list of "
                         "integers") from None
    mem, non = load_audit_set(members), load_audit_set(nonmembers)
    pipe = _load_pipe(model, device)
    ref = _load_pipe(reference, device) if reference else None
    note(f"auditing {len(mem)} members against {len(non)} non-members ...")
    try:
        report = audit_membership(pipe, mem, non, reference=ref, timesteps=steps, draws=draws,
                                  seed=seed, fpr=fpr)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    lo, hi = report.auc_ci
    tlo, thi = report.tpr_ci
    emit(
        {"model": model, **report.to_dict()},
        as_json,
        f"AUC {report.auc:.3f} [{lo:.3f}, {hi:.3f}]  "
        f"TPR@FPR={fpr:g} {report.tpr_at_fpr:.3f} [{tlo:.3f}, {thi:.3f}]  "
        f"({report.attack} attack, {report.n_members} members, "
        f"{report.n_nonmembers} non-members, 95% bootstrap intervals)",
    )


def _register() -> None:
    from trustgain.cli.memorization import memorization, memorization_index

    audit.add_command(memorization_index)
    audit.add_command(memorization)


_register()
