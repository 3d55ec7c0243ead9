"""``trustgain protect`` and ``trustgain recover``: reversible protection of image folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import click

from trustgain.cli.common import (
    FiniteFloat,
    emit,
    json_option,
    keyring_option,
    load_keyring,
    note,
    progress_option,
)
from trustgain.errors import ConfigError

ray_option = click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Run as Ray tasks: a local Ray without ADDRESS, else ray.init(ADDRESS) "
    "(e.g. auto, ray://host:10001). Give it after IN_DIR, or as --ray=ADDRESS. Workers "
    "must be able to read --surrogate folders; the derived residual key travels to them "
    "in Ray's object store (enable Ray TLS on untrusted networks).",
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=None,
    help="CPUs of a local Ray (--ray without ADDRESS) [default: all].",
)


def _key(keyring_path: str | None) -> tuple[bytes, str]:
    from trustgain.protection.batch_jobs import KEY_PURPOSE, KEY_STAGE

    derived = load_keyring(keyring_path).derive(KEY_STAGE, KEY_PURPOSE)
    return derived.material, derived.key_id


def _check_ray(ray_address: str | None, workers: int | None) -> None:
    if workers is not None and ray_address != "local":
        raise click.UsageError("--workers sets the CPUs of a local Ray: use it with --ray "
                               "and no ADDRESS")


def _report(summary: Any, key_id: str, as_json: bool, verb: str) -> None:
    for rel, reason in summary.refusals:
        note(f"{rel}: refused ({reason})")
    for rel, warning in summary.warnings:
        note(f"{rel}: warning: {warning}")
    emit({"key_id": key_id, **summary.as_dict()}, as_json,
         f"{summary.done} {verb}, {summary.skipped} already done, {summary.refused} refused "
         f"in {summary.seconds:.1f} s; manifest {summary.manifest}")
    if summary.refused:
        raise SystemExit(1)


def class_folders(in_dir: Path) -> tuple[str, ...]:
    """The class names of a class-wise poison: IN_DIR's visible subfolders, sorted (so the
    same folder gives the same classes on a rerun)."""
    names = tuple(sorted(p.name for p in in_dir.iterdir()
                         if p.is_dir() and not p.name.startswith(".")))
    if len(names) < 2:
        raise click.UsageError(f"a class-wise poison needs one subfolder per class in {in_dir} "
                               f"(found {len(names)}); e.g. {in_dir}/cats/*.png, "
                               f"{in_dir}/dogs/*.png")
    return names


@click.command()
@click.argument("in_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (mirrors IN_DIR; must not be inside it).")
@click.option("--method", type=click.Choice(["pgd", "ddpm", "poison"]), default="pgd",
              show_default=True, help="pgd: adversarial examples; ddpm: RAEDiff-style DDPM "
              "bias (self-recoverable); poison: for data that will be trained on.")
@click.option("--poison", "poison_kind", type=click.Choice(["targeted", "untargeted", "grating",
              "shortcut"]), default=None, help="With --method poison: targeted/untargeted "
              "(error-maximizing, against the surrogates) [default: targeted], or a class-wise "
              "pattern (grating, shortcut): one class per subfolder of IN_DIR, no surrogates.")
@click.option("--eps", type=click.IntRange(1, 64), default=8, show_default=True,
              help="L-infinity budget in 8-bit pixel units (8 = 8/255).")
@click.option("--steps", type=click.IntRange(0, 10_000), default=20, show_default=True,
              help="Attack iterations.")
@click.option("--surrogate", "surrogates", multiple=True, type=click.Path(file_okay=False,
              exists=True), help="Surrogate folder (python -m trustgain.protection.surrogates); "
              "repeat for an ensemble [default: the embedded digits judge].")
@click.option("--weight", "weights", multiple=True, type=FiniteFloat(0),
              help="With --method pgd: the loss weight of each --surrogate, in the same order "
              "(one per --surrogate) [default: 1 each]; e.g. to lean on one ensemble more "
              "than another.")
@click.option("--ddpm", "ddpm_path", type=click.Path(file_okay=False, exists=True), default=None,
              help="Pixel DDPM folder for --method ddpm "
              "(python -m trustgain.protection.pixel_ddpm).")
@click.option("--residual", "store", type=click.Choice(["png", "sidecar", "both"]),
              default="png", show_default=True,
              help="Where the sealed residual goes: a PNG chunk, a .rae sidecar, or both.")
@keyring_option
@ray_option
@workers_option
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="torch threads for the work in this process [default: torch's]; on a busy "
                   "machine 1 is often fastest. Ray workers always use 1.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Same-size images per forward pass, here or per Ray task. A crash "
                   "redoes at most one batch; an image's result can differ from "
                   "--batch-size 1 by floating-point rounding only.")
@json_option
@progress_option
def protect(in_dir: str, out_dir: str, method: str, poison_kind: str | None, eps: int,
            steps: int,
            surrogates: tuple[str, ...], weights: tuple[float, ...], ddpm_path: str | None,
            store: str,
            keyring_path: str | None,
            ray_address: str | None, workers: int | None, threads: int | None,
            batch_size: int, as_json: bool, no_progress: bool) -> None:
    """Protect every image under IN_DIR against unauthorized models; exactly reversible.

    Outputs are PNG (same relative paths) with a sealed residual from which `trustgain
    recover` and your keyring restore the original pixels bit for bit. A manifest in OUT_DIR
    records every input; rerunning the same command after a crash resumes it. Unreadable
    or unsupported images (alpha, 16-bit, CMYK, palette) are refused with a reason and the
    rest go on; exit code 1 if any was refused.

    \b
    Examples:
      trustgain protect photos/ -o protected/
      trustgain protect photos/ -o protected/ --eps 8 --steps 40 --surrogate surrogates/
      trustgain protect photos/ -o protected/ --surrogate cnn/ --surrogate vit/ \\
          --weight 1 --weight 0.5                                    # per-surrogate weights
      trustgain protect photos/ -o protected/ --residual sidecar --json --threads 1
      trustgain protect digits/ -o protected/ --method ddpm --ddpm my-ddpm/
      trustgain protect dataset/ -o protected/ --method poison --poison grating
                                   # dataset/<class>/*.png: one grating per class
      trustgain protect photos/ -o protected/ --ray                # local Ray, all CPUs
      trustgain protect photos/ -o protected/ --ray=auto           # the running Ray cluster
    """
    from trustgain.protection.api import ProtectConfig

    _check_ray(ray_address, workers)
    from trustgain.protection.batch import run_batch
    from trustgain.protection.batch_jobs import ProtectJob, load_surrogates, surrogate_digest

    if (method == "ddpm") != (ddpm_path is not None):
        raise click.UsageError("--method ddpm needs --ddpm PATH, and --ddpm needs --method ddpm")
    extra: dict[str, object] = {"ddpm": str(Path(ddpm_path).resolve())} if ddpm_path else {}
    classes: tuple[str, ...] = ()
    if poison_kind is not None:
        if method != "poison":
            raise click.UsageError("--poison needs --method poison")
        extra["poison"] = poison_kind
    if poison_kind in ("grating", "shortcut"):
        classes = class_folders(Path(in_dir))
        extra["n_classes"] = len(classes)
    if weights and (method != "pgd" or len(weights) != len(surrogates)):
        raise click.UsageError(f"--weight goes with --method pgd, one per --surrogate "
                               f"({len(weights)} --weight for {len(surrogates)} --surrogate)")
    config = ProtectConfig(method=method, eps=eps, steps=steps, extra=extra,
                           weights=tuple(weights) if weights else None)
    if method != "pgd" and importlib.util.find_spec(f"trustgain.protection.{method}") is None:
        raise ConfigError(f"protection method {method!r} is not available in this build",
                          hint="use --method pgd")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    key, key_id = _key(keyring_path)
    folders = tuple(str(Path(s).resolve()) for s in surrogates)
    load_surrogates(folders)  # a bad folder fails here, once, not once per image
    job = ProtectJob(config=config, key=key, key_id=key_id, store=store, surrogates=folders,
                     surrogate_digests=tuple(surrogate_digest(f) for f in folders),
                     batch_size=batch_size, classes=classes)
    summary = run_batch(in_dir, out_dir, job, ray_address=ray_address, workers=workers,
                        show_progress=not no_progress)
    if not folders and not classes:
        note("no --surrogate given: the attack targets the embedded digits judge only; for "
             "other images train surrogates first: python -m trustgain.protection.surrogates "
             "--data DIR -o SURROGATES")
    _report(summary, key_id, as_json, "protected")


@click.command()
@click.argument("in_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder for the recovered originals (PNG; must not be inside IN_DIR).")
@click.option("--lenient", is_flag=True,
              help="Apply the residual even to a modified (e.g. re-encoded) protected image; "
              "the result is then approximate and recorded as such.")
@keyring_option
@ray_option
@workers_option
@json_option
@progress_option
def recover(in_dir: str, out_dir: str, lenient: bool, keyring_path: str | None,
            ray_address: str | None, workers: int | None, as_json: bool,
            no_progress: bool) -> None:
    """Restore the original pixels of protected images under IN_DIR, bit for bit.

    The residual is read from each PNG's chunk, else from its .rae sidecar. A wrong key, a
    modified residual or a modified image is refused with the reason (exit code 1); with
    --lenient a modified image is recovered approximately. Resumable like `protect`.

    \b
    Examples:
      trustgain recover protected/ -o originals/
      trustgain recover downloaded/ -o originals/ --lenient --json
    """
    from trustgain.protection.batch import run_batch
    from trustgain.protection.batch_jobs import RecoverJob

    _check_ray(ray_address, workers)

    key, key_id = _key(keyring_path)
    job = RecoverJob(key=key, key_id=key_id, lenient=lenient)
    summary = run_batch(in_dir, out_dir, job, ray_address=ray_address, workers=workers,
                        show_progress=not no_progress)
    _report(summary, key_id, as_json, "recovered")


__all__ = ["protect", "recover"]
