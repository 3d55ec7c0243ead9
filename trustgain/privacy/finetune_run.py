"""The training loop of :func:`trustgain.privacy.finetune.finetune`: opacus set-up, steps,
checkpoints (trainable weights, optimizer, accountant, step) and resume.

Empty Poisson batches (possible with a small sampling rate) still make a DP step: the
per-sample gradients are set to empty tensors, so opacus adds noise to a zero sum and the
accountant counts the step, as DP-SGD with Poisson sampling requires. Skipping them would
leave the accountant right but change the mechanism.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from trustgain.errors import ConfigError, InputError
from trustgain.privacy import finetune_trainable as tr


def _entropy_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from the OS: Poisson sampling and DP noise must not be replayable."""
    seed = int.from_bytes(os.urandom(8), "little") >> 1
    return torch.Generator(device=device).manual_seed(seed)


def merge_rows(params: list[torch.Tensor], n: int, k: int) -> None:
    """Per-sample gradients of n*k rows (each record's k rows adjacent) -> n per-record ones,
    the mean of each record's rows, before opacus clips: one record, one clipped gradient,
    whatever k is (noise multiplicity).

    opacus scales each row's gradient to that row's own loss (loss_reduction "mean"), so the
    mean over a record's rows is the gradient of its mean loss over its k draws."""
    for p in params:
        rows = getattr(p, "grad_sample", None)
        if not isinstance(rows, torch.Tensor) or rows.shape[0] != n * k:
            raise AssertionError(f"expected {n * k} per-sample gradients, got "
                                 f"{getattr(rows, 'shape', type(rows))}")
        p.grad_sample = rows.view(n, k, *rows.shape[1:]).mean(1)


class TextUNet(torch.nn.Module):
    """UNet conditioned on token ids through the text encoder, for ``train_tokens``: the
    word embeddings train with the UNet, so opacus clips and noises them per record too.
    Returns the UNet's output object (``.sample``), as the UNet does."""

    def __init__(self, unet: Any, text_encoder: Any) -> None:
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> Any:
        return self.unet(noisy, t, self.text_encoder(ids)[0])


class Run:
    """One fine-tune in progress (built by ``finetune``; not a public API)."""

    def __init__(self, *, pipe: Any, encoded: tuple[torch.Tensor, ...], settings: dict[str, Any],
                 scaling: float, physical_batch_size: int | None, progress: bool) -> None:
        from diffusers import DDPMScheduler

        self.pipe, self.settings, self.scaling = pipe, settings, scaling
        self.mean, self.std, self.states, self.empty = encoded
        self.progress = progress
        self.physical = physical_batch_size
        s = settings
        sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.alphas = sched.alphas_cumprod.float()
        self.prediction = sched.config.prediction_type
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(f"prediction_type {self.prediction!r} is not supported; "
                              "known: epsilon, v_prediction")
        self.gen = torch.Generator().manual_seed(s["seed"] + 1)
        unet = pipe.unet.train()
        pipe.vae.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        self.params = tr.select(unet, s["trainable"], lora_rank=s["lora_rank"], seed=s["seed"])
        self.tokens = bool(s["train_tokens"])
        if self.tokens:  # states are then computed per step from the ids in ``encoded``
            words = pipe.text_encoder.get_input_embeddings().weight
            words.requires_grad_(True)
            self.params.append(("text_encoder.token_embedding.weight", words))
            pipe.text_encoder.train()
        self.n_trainable = sum(p.numel() for _, p in self.params)
        ids = {id(p) for _, p in self.params}
        self.frozen = [(f"unet.{n}", p) for n, p in unet.named_parameters() if id(p) not in ids]
        self.frozen += [(f"vae.{n}", p) for n, p in pipe.vae.named_parameters()]
        self.frozen += [(f"text_encoder.{n}", p) for n, p in pipe.text_encoder.named_parameters()
                        if id(p) not in ids]
        self.frozen_print = tr.Fingerprint.of(self.frozen)
        opt = torch.optim.AdamW([p for _, p in self.params], lr=s["lr"], weight_decay=0.0)
        loader = DataLoader(TensorDataset(torch.arange(len(self.mean))),
                            batch_size=s["batch_size"], shuffle=not s["dp"],
                            generator=_entropy_generator() if s["dp"] else self.gen)
        self.engine = None
        self.model: Any = TextUNet(unet, pipe.text_encoder) if self.tokens else unet
        if s["dp"]:
            from opacus import PrivacyEngine
            from opacus.validators import ModuleValidator

            errors = ModuleValidator.validate(self.model, strict=False)
            if errors:
                raise ConfigError(f"opacus cannot train this UNet: {errors[0]}",
                                  hint="opacus.validators.ModuleValidator.fix may help")
            with warnings.catch_warnings():  # said in finetune's docstring instead
                warnings.filterwarnings("ignore", message="Secure RNG turned off")
                self.engine = PrivacyEngine(accountant=s["accountant"])
            self.model, opt, loader = self.engine.make_private(
                module=self.model, optimizer=opt, data_loader=loader,
                noise_multiplier=s["noise_multiplier"], max_grad_norm=s["max_grad_norm"],
                poisson_sampling=True, noise_generator=_entropy_generator(unet.device),
                grad_sample_mode="hooks")
            if abs(loader.sample_rate - s["sample_rate"]) > 1e-12:  # plan() must match opacus
                raise AssertionError(f"opacus samples at {loader.sample_rate}, "
                                     f"planned {s['sample_rate']}")
        self.opt, self.loader = opt, loader
        self.losses: list[float] = []

    # -- one step -----------------------------------------------------------------------
    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn(self.mean[idx].shape, generator=self.gen)
        latents = (self.mean[idx] + self.std[idx] * eps) * self.scaling
        states = self.states[idx]
        drop = torch.rand(len(idx), generator=self.gen) < self.settings["cfg_dropout"]
        states = torch.where(drop.view(-1, *([1] * (states.dim() - 1))), self.empty[None],
                             states)  # text states, or token ids with ``train_tokens``
        dev = self.pipe.unet.device
        return latents.to(dev), states.to(dev)

    def _backward(self, idx: torch.Tensor) -> None:
        from trustgain.privacy.finetune import denoising_loss

        if len(idx) == 0:  # empty Poisson batch: a noise-only DP step
            for _, p in self.params:
                p.grad_sample = p.new_zeros((0, *p.shape))
            return
        k = self.settings["noise_multiplicity"]
        latents, states = self._batch(idx.repeat_interleave(k))  # k rows per record
        per_sample = denoising_loss(self.model, latents, states, alphas=self.alphas,
                                    prediction=self.prediction, generator=self.gen)
        loss = per_sample.mean()
        with warnings.catch_warnings():  # inputs never need gradients here; expected
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        if k > 1 and self.settings["dp"]:
            merge_rows([p for _, p in self.params], len(idx), k)
        self.losses.append(float(loss.detach()))

    def _step(self) -> bool:
        """optimizer.step(); True if it was a real (logical) step, not a skipped micro-step."""
        if not self.settings["dp"]:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.params],
                                           self.settings["max_grad_norm"])
        self.opt.step()
        return not getattr(self.opt, "_is_last_step_skipped", False)

    def _batches(self) -> Any:
        """Endless stream of index batches (physical ones if a memory cap is set)."""
        while True:
            if self.physical and self.settings["dp"]:
                from opacus.utils.batch_memory_manager import BatchMemoryManager

                with BatchMemoryManager(data_loader=self.loader, optimizer=self.opt,
                                        max_physical_batch_size=self.physical) as ml:
                    for (idx,) in ml:
                        yield idx
            else:
                for (idx,) in self.loader:
                    yield idx

    def train(self, start: int, *, checkpoint: Callable[[int], Any], every: int) -> None:
        from trustgain.privacy.finetune import _stderr_tqdm

        total = self.settings["steps"]
        bar = _stderr_tqdm(total, start, not self.progress)
        step, first = start, True
        moved_print = tr.Fingerprint.of(self.params)
        check_at = min(start + 2, total)  # LoRA's zero-initialised B: A moves from step 2 on
        try:
            for idx in self._batches():
                if step >= total:
                    break
                self._backward(idx)
                if first and len(idx):
                    tr.check_gradients(self.params, dp=self.settings["dp"])
                    first = False
                real = self._step()
                # every micro-step: opacus keeps the clipped sum across skipped (physical)
                # steps and drops only the per-sample gradients it already used
                self.opt.zero_grad(set_to_none=True)
                if not real:
                    continue
                step += 1
                bar.update(1)
                if self.losses:
                    bar.set_postfix(loss=f"{np.mean(self.losses[-20:]):.4f}", refresh=False)
                if step == check_at:
                    tr.check_moved(moved_print, self.params)
                if every and step % every == 0 and step < total:
                    checkpoint(step)
        finally:
            bar.close()
        tr.check_frozen(self.frozen_print, self.frozen)

    # -- results, checkpoints -----------------------------------------------------------
    def epsilon(self, delta: float) -> float:
        return float(self.engine.accountant.get_epsilon(delta=delta))

    def final_loss(self) -> float:
        return float(np.mean(self.losses[-20:])) if self.losses else float("nan")

    def finish(self) -> None:
        if self.engine is not None and hasattr(self.model, "_close"):
            self.model._close()  # drop opacus hooks and grad_sample attributes
        tr.finish(self.pipe.unet, self.settings["trainable"])
        self.pipe.unet.eval()
        self.pipe.text_encoder.eval().requires_grad_(False)

    def state(self, step: int) -> bytes:
        from trustgain.privacy.finetune import checkpoint_bytes

        return checkpoint_bytes({
            "format": "trustgain.finetune-checkpoint/1",
            "settings": self.settings,
            "step": step,
            "trainable": {n: p.detach().clone() for n, p in self.params},
            "optimizer": self.opt.state_dict(),
            "accountant": self.engine.accountant.state_dict() if self.engine else None,
            "losses": self.losses[-100:],
            "generator": self.gen.get_state(),
        })

    def restore(self, path: Any) -> int:
        """Load a checkpoint written by :meth:`state`; returns the step to continue from."""
        try:
            ck = torch.load(io.BytesIO(path.read_bytes()), weights_only=True,
                            map_location="cpu")
        except Exception as exc:  # a torn or foreign file: say so, do not guess
            raise InputError(f"cannot read checkpoint {path}: {exc}",
                             hint="delete it or pass resume=False") from None
        if ck.get("format") != "trustgain.finetune-checkpoint/1":
            raise InputError(f"{path} is not a trustgain fine-tune checkpoint")
        diff = sorted(k for k in self.settings if ck["settings"].get(k) != self.settings[k])
        if diff:
            raise ConfigError(f"checkpoint {path} was made with other settings "
                              f"({', '.join(diff)})", hint="delete it or pass resume=False")
        with torch.no_grad():
            for n, p in self.params:
                p.copy_(ck["trainable"][n])
        self.opt.load_state_dict(ck["optimizer"])
        if self.engine is not None:
            self.engine.accountant.load_state_dict(ck["accountant"])
        self.losses = list(ck["losses"])
        self.gen.set_state(ck["generator"])
        return int(ck["step"])
