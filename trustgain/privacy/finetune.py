"""Fine-tune a diffusers text-to-image model, optionally with differential privacy (DP-SGD).

    from trustgain.privacy.finetune import finetune
    report = finetune("trustgain/models/trustgain-mini-sd", "my_images/", "out/",
                      dp=True, target_epsilon=8.0, delta=1e-5, trainable="lora")

DP goes through opacus (``PrivacyEngine.make_private``, hooks mode, Poisson sampling): each
record's gradient is clipped to ``max_grad_norm`` and Gaussian noise of std
``noise_multiplier * max_grad_norm`` is added to the sum. Either ``noise_multiplier`` is
given, or it is computed for ``target_epsilon`` by opacus' ``get_noise_multiplier`` (what
``make_private_with_epsilon`` calls) *before* the model is loaded, so that a ledger
(:class:`trustgain.privacy.ledger.Ledger`) can refuse the run before anything is spent.
The ledger is charged with the accountant's epsilon once, just before the model is written.

The UNet trains (``full``, ``attention``, ``lora`` or ``none``: :mod:`.finetune_trainable`); the
VAE and text encoder are frozen, so latents and text states are computed once, unless
``train_tokens`` also trains the text encoder's word embeddings (words the base model never
saw, e.g. new classes, start with untrained embeddings that the UNet cannot tell apart); the
states are then computed every step and opacus clips and noises those embeddings' per-record
gradients with the UNet's (:class:`~trustgain.privacy.finetune_run.TextUNet`). The loss is
the standard denoising MSE, reduced **per sample** to shape ``[B]`` and then averaged,
matching opacus' ``loss_reduction="mean"`` (it rescales by the expected batch size).

What DP here does not cover: the base model's own training data; the random seed (it draws
timesteps and initial LoRA weights only; the Poisson sampling and the DP noise use fresh OS
entropy, as opacus' ``secure_mode`` needs ``torchcsprng``, which is not a dependency).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustgain.digest import canonical_json, sha256_hex
from trustgain.errors import ConfigError, InputError, OutputExistsError, OutputWriteError
from trustgain.fileio import write_atomic
from trustgain.generators.loading import check_model_source
from trustgain.privacy import finetune_trainable as tr
from trustgain.privacy.accounting import ACCOUNTANTS, MAX_TARGET_EPSILON
from trustgain.privacy.finetune_card import CONFIG_KEY, FORMAT, card, record_view
from trustgain.privacy.finetune_data import dataset_digest, load_records


@dataclass(frozen=True)
class FinetuneReport:
    """What a fine-tune did and spent; ``privacy.json`` in the output holds the same."""

    out: str
    base_model: str
    dp: bool
    epsilon: float  # spent, by the accountant; math.inf without DP
    delta: float
    accountant: str | None
    sample_rate: float
    noise_multiplier: float | None
    max_grad_norm: float
    steps: int
    epochs: int
    batch_size: int
    lr: float
    n_records: int
    trainable: str
    trainable_params: int
    dataset_sha256: str
    final_loss: float
    seconds: float
    resumed_from_step: int
    ledger: str | None
    train_tokens: bool = False  # the text encoder's word embeddings trained too (under DP)
    noise_multiplicity: int = 1  # draws of (t, noise) averaged per record before clipping

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(*, n_records: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate, steps) exactly as opacus' ``DPDataLoader`` will run them."""
    per_epoch = math.ceil(n_records / batch_size)
    return 1.0 / per_epoch, epochs * per_epoch


def denoising_loss(unet: Any, latents: torch.Tensor, states: torch.Tensor, *,
                   alphas: torch.Tensor, prediction: str,
                   generator: torch.Generator) -> torch.Tensor:
    """Per-sample denoising MSE, shape ``[B]``: each record's loss depends on it alone.

    Timesteps and noise come from ``generator`` (on the CPU, so a seed means the same draws
    on every device) and are moved to the latents' device.
    """
    b, dev = latents.shape[0], latents.device
    t = torch.randint(0, len(alphas), (b,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator).to(dev)
    a = alphas[t].view(-1, *([1] * (latents.dim() - 1))).to(dev)
    t = t.to(dev)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    target = noise if prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
    return per_sample_mse(unet(noisy, t, states).sample, target)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every dimension but the first: shape ``[B]``.

    The trap it guards: ``F.mse_loss(reduction="none")`` is ``[B, C, H, W]`` and the default
    reduction mixes the batch; opacus clips per record, so the loss must be per record.
    """
    if pred.dim() < 2 or pred.shape != target.shape:
        raise ValueError(f"need batched predictions and targets of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def _check_writable(out: Path) -> None:
    """Fail before hours of training when OUT's folder cannot take the result."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{out.name}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputWriteError(parent, exc) from None


def _check_args(dp: bool, target_epsilon: float | None, noise_multiplier: float | None,
                delta: float, max_grad_norm: float, epochs: int, batch_size: int, lr: float,
                ledger: Any, accountant: str) -> None:
    if dp:
        if (target_epsilon is None) == (noise_multiplier is None):
            raise ConfigError("with dp=True give exactly one of target_epsilon and "
                              "noise_multiplier")
        if target_epsilon is not None and not 0 < target_epsilon <= MAX_TARGET_EPSILON:
            raise ConfigError(f"target_epsilon must be in (0, {MAX_TARGET_EPSILON:g}], not "
                              f"{target_epsilon!r}")
        if noise_multiplier is not None and not 0 < noise_multiplier < math.inf:
            raise ConfigError(f"noise_multiplier must be a finite number > 0, not "
                              f"{noise_multiplier!r}")
        if not 0 < delta < 1:
            raise ConfigError(f"delta must be in (0, 1), not {delta!r}")
        if accountant not in ACCOUNTANTS:
            raise ConfigError(f"unknown accountant {accountant!r}; known: "
                              f"{', '.join(sorted(ACCOUNTANTS))}")
    else:
        if target_epsilon is not None or noise_multiplier is not None:
            raise ConfigError("target_epsilon/noise_multiplier need dp=True")
        if ledger is not None:
            raise ConfigError("a fine-tune without DP cannot be charged to a privacy ledger "
                              "(its epsilon is infinite)", hint="pass dp=True")
    if not 0 < max_grad_norm < math.inf:
        raise ConfigError(f"max_grad_norm must be > 0, not {max_grad_norm!r}")
    if epochs < 1 or batch_size < 1 or not 0 < lr < math.inf:
        raise ConfigError(f"epochs and batch_size must be >= 1 and lr a finite number > 0, not "
                          f"{epochs!r}, {batch_size!r}, {lr!r}")


def _load_pipeline(model: str | os.PathLike[str]) -> Any:
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    check_model_source(str(model))
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        pipe = DiffusionPipeline.from_pretrained(str(model))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load model {model}: {exc}".splitlines()[0]) from None
    finally:
        dlogging.set_verbosity(verbosity)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if getattr(pipe, part, None) is None:
            raise InputError(f"{model} has no {part}; fine-tuning needs a latent text-to-image "
                             "pipeline (UNet, VAE, text encoder, tokenizer)")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def _encode(pipe: Any, images: np.ndarray, captions: list[str], chunk: int = 64,
            tokens: bool = False,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """VAE posterior (mean, std), text states per caption, and the empty prompt's states
    (with ``tokens``: the token ids instead of the states, which then train)."""
    vae, te, tok = pipe.vae, pipe.text_encoder, pipe.tokenizer
    dev = vae.device
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    means, stds = [], []
    for i in range(0, len(x), chunk):
        post = vae.encode(x[i:i + chunk].to(dev)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())

    def states(texts: list[str]) -> torch.Tensor:
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        if tokens:
            return ids
        return torch.cat([te(ids[i:i + chunk].to(dev))[0].cpu()
                          for i in range(0, len(ids), chunk)])

    return torch.cat(means), torch.cat(stds), states(captions), states([""])[0]


def _checkpoint_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.checkpoint.pt")


def finetune(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str] | tuple[np.ndarray, list[str]],
    out: str | os.PathLike[str],
    *,
    dp: bool,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    delta: float = 1e-5,
    max_grad_norm: float = 1.0,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-4,
    trainable: str = "full",
    train_tokens: bool = False,
    lora_rank: int = 4,
    accountant: str = "prv",
    seed: int = 0,
    ledger: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    physical_batch_size: int | None = None,
    cfg_dropout: float = 0.1,
    noise_multiplicity: int = 1,
    checkpoint_every: int = 50,
    overwrite: bool = False,
    device: str = "cpu",
) -> FinetuneReport:
    """Fine-tune ``model``'s UNet on ``data`` and write the pipeline to ``out``.

    ``data``: an imagefolder (images + ``metadata.jsonl``) or ``(images, captions)``.
    DP: ``dp=True`` with ``target_epsilon`` or ``noise_multiplier``; ``accountant`` "prv" or
    "rdp". ``ledger``: a :class:`~trustgain.privacy.ledger.Ledger` file checked before and
    charged after. ``resume``: continue from ``out``'s checkpoint (``.OUT.checkpoint.pt``
    beside it) if its settings match. ``physical_batch_size`` splits Poisson batches to cap
    memory (opacus ``BatchMemoryManager``); it does not change the privacy accounting.
    ``device``: where the UNet trains ("cpu", "cuda"); the output is the same pipeline.
    ``noise_multiplicity`` K: each record's loss is the mean over K draws of (timestep,
    noise, latent sample, caption dropout) before its gradient is clipped (Dockhorn et al.
    2023, "Differentially Private Diffusion Models", noise multiplicity): the same privacy
    cost per step, a less noisy per-record gradient, K times the compute.
    """
    from trustgain.privacy.finetune_run import Run

    t0 = time.time()
    out = Path(out)
    _check_args(dp, target_epsilon, noise_multiplier, delta, max_grad_norm, epochs,
                batch_size, lr, ledger, accountant)
    if trainable not in tr.TRAINABLE:
        raise ConfigError(f"unknown trainable {trainable!r}; known: {', '.join(tr.TRAINABLE)}")
    if not (isinstance(noise_multiplicity, int) and noise_multiplicity >= 1):
        raise ConfigError(f"noise_multiplicity must be an integer >= 1, not "
                          f"{noise_multiplicity!r}")
    if trainable == "none" and not train_tokens:
        raise ConfigError("trainable 'none' trains nothing without train_tokens",
                          hint="add --train-tokens, or choose full, attention or lora")
    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    if physical_batch_size is not None and not (
            isinstance(physical_batch_size, int) and physical_batch_size >= 1):
        raise ConfigError(f"physical_batch_size must be an integer >= 1, not "
                          f"{physical_batch_size!r}")
    _check_writable(out)
    pipe = _load_pipeline(model).to(device)
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    resolution = pipe.unet.config.sample_size * scale
    images, captions = load_records(data, resolution=resolution)
    digest = dataset_digest(images, captions)
    n = len(images)
    sample_rate, steps = plan(n_records=n, batch_size=batch_size, epochs=epochs)
    sigma = None
    book = None
    if dp:
        from trustgain.privacy.accounting import epsilon_spent, noise_for_epsilon

        sigma = noise_multiplier or noise_for_epsilon(
            accountant=accountant, target_epsilon=target_epsilon, sample_rate=sample_rate,
            steps=steps, delta=delta)
        if ledger is not None:
            from trustgain.privacy.ledger import Ledger

            projected = epsilon_spent(accountant=accountant, noise_multiplier=sigma,
                                      sample_rate=sample_rate, steps=steps, delta=delta)
            book = Ledger(ledger)
            book.check(epsilon=projected, delta=delta)  # refuse before anything is spent
    settings = dict(model=str(model), dataset_sha256=digest, dp=dp, noise_multiplier=sigma,
                    sample_rate=sample_rate, steps=steps, batch_size=batch_size, lr=lr,
                    trainable=trainable, lora_rank=lora_rank, max_grad_norm=max_grad_norm,
                    accountant=accountant if dp else None, delta=delta, seed=seed,
                    cfg_dropout=cfg_dropout, train_tokens=train_tokens,
                    noise_multiplicity=noise_multiplicity)
    torch.manual_seed(seed)
    encoded = _encode(pipe, images, captions, tokens=train_tokens)
    run = Run(pipe=pipe, encoded=encoded, settings=settings,
              scaling=float(pipe.vae.config.scaling_factor),
              physical_batch_size=physical_batch_size, progress=progress)
    ckpt = _checkpoint_path(out)
    start = run.restore(ckpt) if resume and ckpt.is_file() else 0
    run.train(start, checkpoint=lambda s: write_atomic(ckpt, run.state(s), overwrite=True,
                                                       mode=0o600),
              every=checkpoint_every)
    epsilon = run.epsilon(delta) if dp else math.inf
    report = FinetuneReport(
        out=str(out), base_model=str(model), dp=dp, epsilon=epsilon, delta=delta if dp else 1.0,
        accountant=accountant if dp else None, sample_rate=sample_rate, noise_multiplier=sigma,
        max_grad_norm=max_grad_norm, steps=steps, epochs=epochs, batch_size=batch_size, lr=lr,
        n_records=n, trainable=trainable, trainable_params=run.n_trainable,
        dataset_sha256=digest, final_loss=run.final_loss(), seconds=round(time.time() - t0, 1),
        resumed_from_step=start, ledger=str(ledger) if ledger is not None else None,
        train_tokens=train_tokens, noise_multiplicity=noise_multiplicity)
    marker = _charged_path(out)
    if book is not None:  # charge before the model (the release) is written
        what = f"finetune {out.name} (data sha256 {digest[:16]})"
        spend = {"what": what, "epsilon": epsilon, "delta": delta, "accountant": accountant,
                 "ledger": str(Path(ledger).resolve()),
                 "settings_sha256": sha256_hex(canonical_json(_jsonable(settings)))}
        if not (resume and _already_charged(marker, spend)):  # a rerun after a failed write
            book.charge(what=what, accountant=accountant, epsilon=epsilon, delta=delta)
            write_atomic(marker, canonical_json(spend), overwrite=True, mode=0o600)
    _write_output(pipe, run, report, out, overwrite)
    ckpt.unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    return report


def _charged_path(out: Path) -> Path:
    """Beside OUT until it is written: the charge made for it. A run whose model could not be
    written (full disk) is charged once, and its resumed rerun, with the same settings and
    the same epsilon, only writes. A run with --restart is new training and pays again."""
    return out.with_name(f".{out.name}.charged.json")


def _already_charged(marker: Path, spend: dict[str, Any]) -> bool:
    import json

    try:
        return json.loads(marker.read_text()) == json.loads(canonical_json(spend))
    except (OSError, ValueError):
        return False


def _write_output(pipe: Any, run: Any, report: FinetuneReport, out: Path,
                  overwrite: bool) -> None:
    """The whole pipeline, privacy.json and README.md, swapped into place at once."""
    import json

    import diffusers
    import opacus

    import trustgain

    facts = dict(report.as_dict(), format=FORMAT, trustgain_version=trustgain.__version__,
                 opacus_version=opacus.__version__, diffusers_version=diffusers.__version__)
    run.finish()
    pipe.unet.register_to_config(**{CONFIG_KEY: record_view(_jsonable(facts))})
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "privacy.json").write_text(json.dumps(_jsonable(facts), indent=2) + "\n")
        (tmp / "README.md").write_text(card(facts))
    except OSError as exc:  # the checkpoint stays, so a rerun resumes and only writes
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputWriteError(out, exc) from None
    if out.exists():
        if not overwrite:
            shutil.rmtree(tmp)
            raise OutputExistsError(out)
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def _jsonable(facts: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: a non-DP epsilon is written as the string "inf"."""
    return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v)
            for k, v in facts.items()}


def _stderr_tqdm(total: int, initial: int, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="finetune", disable=disable,
                file=sys.stderr, dynamic_ncols=True, mininterval=1.0)


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()
