"""Training recipe of trustgain-mini-sd: VAE first, then text encoder and UNet together.

Called by ``python -m trustgain.models.train mini-sd``. The loops are short and written out
here (rather than with ``accelerate`` or diffusers' example scripts, which are not
dependencies and expect hub checkpoints) so that every seed, split and schedule is visible.

1. Data: 30 augmented renderings of each of the 1,437 *train* scans (``data.augmented_set``,
   seed 1), each with its caption; the judge's test split is never used.
2. Tokenizer: BPE merges learnt on those captions (``build.train_tokenizer``).
3. VAE: L1 + MSE + 1e-4 KL on freshly augmented batches; frozen afterwards, and
   ``scaling_factor`` = 1 / std of its latents.
4. Text encoder + UNet: epsilon prediction on the DDPM schedule (1000 steps), 10% of
   captions dropped to the empty prompt (classifier-free guidance), AdamW with warm-up then a
   constant rate, and an exponential moving average of the weights, which is what is saved.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import build, data


@dataclass
class SDRecipe:
    """Every knob of the recipe; the defaults are what shipped (see the model card)."""

    seed: int = 0
    copies: int = 30
    vae_steps: int = 1500
    vae_batch: int = 64
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    steps: int = 1800
    batch: int = 512
    lr: float = 7e-4
    warmup: int = 300  # 0 or 1: no warm-up
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1
    max_minutes: float | None = None  # stop the UNet loop early; the steps done are recorded
    latent_factor: int = 4  # VAE down-sampling: 4 -> 4x8x8 latents (shipped), 2 -> 4x16x16
    unet_from: str | None = None  # fine-tune this mini-sd's text encoder + UNet, not from scratch
    log: dict[str, Any] = field(default_factory=dict)


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def train_vae(recipe: SDRecipe, images: np.ndarray, device: str):
    """Train the AutoencoderKL on fresh augmentations of ``images`` (the train scans)."""
    _seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed + 100)
    ink = data.upsample(images).to(device)
    vae = build.make_vae(recipe.latent_factor).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.vae_lr, total_steps=recipe.vae_steps, pct_start=0.05)
    t0 = time.time()
    bar = tqdm(range(recipe.vae_steps), desc="vae", mininterval=2.0)
    for _ in bar:
        idx = rng.integers(0, len(ink), recipe.vae_batch)
        x = data.render(ink[idx], data.draw_looks(len(idx), rng), rng)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / post.mean[0].numel()
        rec_loss = (rec - x).abs().mean() + F.mse_loss(rec, x)
        loss = rec_loss + recipe.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(rec=f"{rec_loss.item():.4f}", kl=f"{kl.item():.2f}", refresh=False)
    recipe.log["vae_seconds"] = round(time.time() - t0, 1)
    recipe.log["vae_final_rec_loss"] = round(rec_loss.item(), 5)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_all(vae, x: torch.Tensor, device: str, chunk: int = 512,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (kept so each epoch draws fresh latents)."""
    means, stds = [], []
    for i in tqdm(range(0, len(x), chunk), desc="encode", mininterval=2.0):
        post = vae.encode(x[i:i + chunk].to(device)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds)


def load_for_finetune(folder: str, latent_size: int):
    """Tokenizer, text encoder and UNet of an earlier mini-sd, ready to train further.

    The UNet is fully convolutional, so it runs on any latent size; its ``sample_size``
    (the pipeline's default image size) is set to ``latent_size``.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet",
                                                torch_dtype=torch.float32)
    unet.register_to_config(sample_size=latent_size)
    return tokenizer, text_encoder.float(), unet.float()


def train_unet(recipe: SDRecipe, tokenizer, latents: tuple[torch.Tensor, torch.Tensor],
               captions: list[str], scaling: float, device: str, init=None):
    """Train text encoder + UNet jointly; returns their EMA copies (eval mode, on CPU).

    ``init``: (text_encoder, unet) to continue from (``SDRecipe.unet_from``); fresh ones
    are built otherwise.
    """
    from diffusers import DDPMScheduler

    _seed(recipe.seed + 1)
    gen = torch.Generator().manual_seed(recipe.seed + 2)
    if init is None:
        text_encoder = build.make_text_encoder(tokenizer)
        unet = build.make_unet(int(latents[0].shape[-1]))
    else:
        text_encoder, unet = init
    text_encoder = text_encoder.to(device).train().requires_grad_(True)
    unet = unet.to(device).train().requires_grad_(True)
    noise_sched = DDPMScheduler(**build.SCHEDULE)
    alphas = noise_sched.alphas_cumprod.to(device)
    ids = tokenizer(captions, padding="max_length", max_length=build.MAX_TOKENS,
                    truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=build.MAX_TOKENS,
                      return_tensors="pt").input_ids[0]
    mean, std = latents
    mean, std, ids, empty = mean.to(device), std.to(device), ids.to(device), empty.to(device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(recipe.warmup, 1)))  # warmup 0: none
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    t0 = time.time()
    done, losses = 0, []
    bar = tqdm(range(recipe.steps), desc="unet", mininterval=2.0)
    for step in bar:
        idx = torch.randint(0, len(mean), (recipe.batch,), generator=gen).to(device)
        eps0 = torch.randn(mean[idx].shape, generator=gen).to(device)
        z0 = (mean[idx] + std[idx] * eps0) * scaling
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (recipe.batch,),
                          generator=gen).to(device)
        noise = torch.randn(z0.shape, generator=gen).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        tok = ids[idx]
        drop = (torch.rand(recipe.batch, generator=gen) < recipe.cfg_dropout).to(device)
        tok = torch.where(drop[:, None], empty[None], tok)
        states = text_encoder(tok)[0]
        pred = unet(zt, t, states).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        done = step + 1
        if step % 50 == 0:
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)
        if recipe.max_minutes is not None and time.time() - t0 > 60 * recipe.max_minutes:
            break
    bar.close()
    recipe.log["unet_steps_done"] = done
    recipe.log["unet_seconds"] = round(time.time() - t0, 1)
    if losses:
        recipe.log["unet_final_loss"] = round(float(np.mean(losses[-20:])), 5)
    return ema_text.cpu().requires_grad_(False), ema_unet.cpu().requires_grad_(False)


def train_mini_sd(recipe: SDRecipe, device: str, vae_from: str | None = None):
    """Run the whole recipe; returns the assembled ``StableDiffusionPipeline`` (on CPU).

    ``vae_from``: folder of an earlier mini-sd whose tokenizer and VAE are reused (stage 3 is
    skipped), e.g. one written with ``--steps 0``. ``recipe.unet_from``: folder of an earlier
    mini-sd whose tokenizer, text encoder and UNet are trained further on this VAE's latents
    (e.g. the shipped model moved to a factor-2 VAE), with their own tokenizer.
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    t_start = time.time()
    images, labels = data.load_split("train")
    x, _, captions = data.augmented_set(images, labels, recipe.copies, seed=recipe.seed + 1,
                                        device=device)
    init = None
    if vae_from:
        tokenizer = CLIPTokenizer.from_pretrained(vae_from, subfolder="tokenizer")
        vae = AutoencoderKL.from_pretrained(vae_from, subfolder="vae").to(device).eval()
        vae.requires_grad_(False)
        recipe.log["vae_from"] = str(vae_from)
        recipe.latent_factor = 2 ** (len(vae.config.block_out_channels) - 1)  # what it is
    else:
        tokenizer = build.train_tokenizer(captions)
        vae = train_vae(recipe, images, device)
    if recipe.unet_from:
        latent_size = 32 // recipe.latent_factor
        # the tokenizer belongs to the text encoder (the VAE never sees text): keep theirs
        tokenizer, text_encoder, unet = load_for_finetune(recipe.unet_from, latent_size)
        init = (text_encoder, unet)
        recipe.log["unet_from"] = str(recipe.unet_from)
    mean, std = encode_all(vae, x, device)
    del x
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    scaling = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=scaling)
    recipe.log["scaling_factor"] = round(scaling, 5)
    recipe.log["latent_shape"] = list(mean.shape[1:])
    text_encoder, unet = train_unet(recipe, tokenizer, (mean, std), captions, scaling, device,
                                    init)
    recipe.log["total_seconds"] = round(time.time() - t_start, 1)
    return StableDiffusionPipeline(
        vae=vae.cpu(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=build.make_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
