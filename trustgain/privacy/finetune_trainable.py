"""Which UNet weights a fine-tune trains, and the checks that they really do (or do not) move.

* ``full``: every UNet parameter.
* ``attention``: only the self- and cross-attention modules (``attn1``/``attn2``: their Q, K,
  V and output projections), as DP-LDM does (Lyu et al., TMLR 2024).
* ``lora``: low-rank adapters from ``peft`` on those projections (``to_q``, ``to_k``,
  ``to_v``, ``to_out.0``), added through diffusers' ``add_adapter`` and fused into the weights
  before saving, so the output is a plain pipeline.

Known traps guarded here (meta-pytorch/opacus#820: with some peft versions opacus' hooks are
not registered on LoRA layers, "training appears normal but models are unusable"):
:func:`check_gradients` requires a finite per-sample gradient (DP) or gradient for every
trainable tensor after the first backward pass, and :class:`Fingerprint` proves after a step
that every trainable tensor moved and every frozen one did not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trustgain.errors import ConfigError, TrustgainError

TRAINABLE = ("full", "attention", "lora", "none")  # none: only with train_tokens
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class TrainingCheckFailed(TrustgainError):
    """A fine-tune's weights did not update as they must (frozen moved or trainable stuck)."""


def select(unet: torch.nn.Module, trainable: str, *, lora_rank: int = 4,
           seed: int = 0) -> list[tuple[str, torch.nn.Parameter]]:
    """Mark the ``trainable`` part of ``unet`` (in place) and return its (name, parameter)s."""
    if trainable not in TRAINABLE:
        raise ConfigError(f"unknown trainable {trainable!r}; known: {', '.join(TRAINABLE)}")
    unet.requires_grad_(False)
    if trainable == "none":  # the UNet stays frozen; the caller trains word embeddings
        return []
    if trainable == "full":
        unet.requires_grad_(True)
    elif trainable == "attention":
        found = False
        for name, module in unet.named_modules():
            if name.rsplit(".", 1)[-1] in ("attn1", "attn2"):
                module.requires_grad_(True)
                found = True
        if not found:
            raise ConfigError("this UNet has no attn1/attn2 attention modules",
                              hint="use --trainable full or lora")
    else:
        if lora_rank < 1:
            raise ConfigError(f"lora_rank must be >= 1, not {lora_rank!r}")
        from peft import LoraConfig

        torch.manual_seed(seed)  # the Gaussian init of lora_A
        cfg = LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                         target_modules=list(LORA_TARGETS), lora_dropout=0.0)
        try:
            unet.add_adapter(cfg)
        except ValueError as exc:
            raise ConfigError(f"cannot add LoRA adapters: {exc}",
                              hint="use --trainable full") from None
    params = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"trainable={trainable!r} selects no parameters of this UNet")
    return params


def finish(unet: torch.nn.Module, trainable: str) -> None:
    """Fuse LoRA adapters into the base weights and drop them (no-op for other modes)."""
    if trainable == "lora":
        unet.fuse_lora()
        unet.unload_lora()


def check_gradients(params: list[tuple[str, torch.nn.Parameter]], *, dp: bool) -> None:
    """Every trainable tensor got a finite (per-sample) gradient in the last backward pass."""
    missing, bad = [], []
    for name, p in params:
        g = getattr(p, "grad_sample", None) if dp else p.grad
        if isinstance(g, list):
            g = g[-1] if g else None
        if g is None:
            missing.append(name)
        elif not torch.isfinite(g).all():
            bad.append(name)
    if missing:
        what = "per-sample gradient (opacus hooks not attached?)" if dp else "gradient"
        raise TrainingCheckFailed(
            f"{len(missing)} trainable tensors got no {what}, e.g. {missing[0]}",
            hint="check the opacus/peft versions (meta-pytorch/opacus#820)")
    if bad:
        raise TrainingCheckFailed(f"non-finite gradients in {len(bad)} tensors, e.g. {bad[0]}",
                                  hint="lower the learning rate")


@dataclass(frozen=True)
class Fingerprint:
    """Per-tensor (sum, sum of squares) in float64: cheap to keep, changes when a tensor does.

    Used instead of a copy of the weights, which would double memory on a large UNet.
    """

    values: dict[str, tuple[float, float]]

    @classmethod
    def of(cls, named: list[tuple[str, torch.Tensor]]) -> Fingerprint:
        with torch.no_grad():
            return cls({n: (float(t.double().sum()), float(t.double().square().sum()))
                        for n, t in named})

    def changed(self, named: list[tuple[str, torch.Tensor]]) -> list[str]:
        now = Fingerprint.of(named).values
        return [n for n, v in self.values.items() if now[n] != v]


def check_moved(before: Fingerprint, params: list[tuple[str, torch.nn.Parameter]]) -> None:
    """After an optimizer step: every trainable tensor changed and stays finite."""
    moved = set(before.changed(params))
    stuck = [n for n, _ in params if n not in moved]
    if stuck:
        raise TrainingCheckFailed(
            f"{len(stuck)} of {len(params)} trainable tensors did not change in a step, "
            f"e.g. {stuck[0]}", hint="check the opacus/peft versions (meta-pytorch/opacus#820)")
    for n, p in params:
        if not torch.isfinite(p).all():
            raise TrainingCheckFailed(f"trainable tensor {n} is not finite after a step",
                                      hint="lower the learning rate")


def check_frozen(before: Fingerprint, named: list[tuple[str, torch.Tensor]]) -> None:
    """Every frozen tensor is exactly as it was."""
    moved = before.changed(named)
    if moved:
        raise TrainingCheckFailed(f"{len(moved)} frozen tensors changed, e.g. {moved[0]}")
