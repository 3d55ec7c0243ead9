"""Detection of ``watermark.latent`` from images: VAE-encode, DDIM-invert, read the mark.

Inversion uses diffusers' own ``DDIMInverseScheduler`` (built from the pipeline's scheduler
config) with the UNet conditioned on the empty prompt and no guidance, over the same number of
steps as generation, batched and on whatever device the pipeline sits (CPU here). The loop is
written out because diffusers ships inversion only inside specific pipelines (DiffEdit,
Pix2Pix-Zero) that also need a caption model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DDIMInverseScheduler
from PIL import Image

from trustgain.keys import DerivedKey
from trustgain.watermark.latent import LEVELS, STAGE, LatentReading, read_latent_mark
from trustgain.watermark.latent_reliability import Reliability


def model_size(pipe: object) -> tuple[int, int]:
    """The (height, width) in pixels the pipeline generates by default."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor  # type: ignore[attr-defined]
    return int(size), int(size)


def images_to_tensor(images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """RGB PIL images, resized (bicubic) to ``size`` = (h, w) where needed, as [-1, 1] NCHW."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def encode(pipe: object, pixels: torch.Tensor, encoder: object | None = None) -> torch.Tensor:
    """VAE posterior means, scaled as the UNet sees latents.

    ``encoder``: another ``AutoencoderKL`` to encode with (a detector-side encoder tuned by
    :mod:`trustgain.watermark.detector_train`; for trustgain-mini-sd
    :func:`trustgain.models.load_detector_vae`); the pipeline's own VAE by default. It must
    share the pipeline VAE's latent space (same scaling factor).
    """
    vae = pipe.vae if encoder is None else encoder  # type: ignore[attr-defined]
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


@torch.no_grad()
def ddim_invert(
    pipe: object,
    latents: torch.Tensor,
    *,
    num_inference_steps: int,
    prompt: str | Sequence[str] = "",
    refine: int = 0,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Run DDIM backwards from clean latents to the initial noise, conditioned on ``prompt``
    (one for all, or one per latent) with classifier-free ``guidance_scale`` (1: none).

    Plain DDIM inversion evaluates the noise at the step's start instead of its end;
    ``refine`` > 0 adds that many fixed-point iterations per step (the noise re-evaluated at
    the current estimate of the end), which makes each step the exact inverse of the sampler's
    step when it converges, at ``1 + refine`` UNet calls per step.
    """
    unet = pipe.unet  # type: ignore[attr-defined]
    scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)  # type: ignore[attr-defined]
    scheduler.set_timesteps(num_inference_steps)
    prompts = [prompt] * latents.shape[0] if isinstance(prompt, str) else list(prompt)
    guided = guidance_scale != 1.0
    embeds, empty = pipe.encode_prompt(  # type: ignore[attr-defined]
        prompts, unet.device, 1, guided, negative_prompt=[""] * len(prompts) if guided else None
    )
    x = latents.to(device=unet.device, dtype=unet.dtype)
    embeds = embeds.to(unet.dtype)
    if guided:
        embeds = torch.cat([empty.to(unet.dtype), embeds])

    def noise(sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not guided:
            return unet(sample, t, encoder_hidden_states=embeds).sample
        uncond, cond = unet(torch.cat([sample, sample]), t, encoder_hidden_states=embeds
                            ).sample.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    for t in scheduler.timesteps:
        nxt = scheduler.step(noise(x, t), int(t), x)
        for _ in range(refine):
            nxt = scheduler.step(noise(nxt.prev_sample, t), int(t), x)
        x = nxt.prev_sample
    return x.float().cpu()


def invert_images(
    pipe: object,
    images: Sequence[Image.Image],
    *,
    num_inference_steps: int,
    batch_size: int = 64,
    refine: int = 0,
    encoder: object | None = None,
    prompt: str | Sequence[str] = "",
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Initial-noise estimates for ``images`` (resized to the model's size first), encoded
    with ``encoder`` (see :func:`encode`) or the pipeline's VAE, inverted conditioned on
    ``prompt`` (one for all or one per image) with ``guidance_scale`` (see
    :func:`ddim_invert`)."""
    if not isinstance(prompt, str) and len(prompt) != len(images):
        raise ValueError(f"{len(prompt)} prompts for {len(images)} images")
    size = model_size(pipe)
    out = []
    for start in range(0, len(images), batch_size):
        pixels = images_to_tensor(images[start : start + batch_size], size)
        part = prompt if isinstance(prompt, str) else list(prompt[start : start + batch_size])
        out.append(ddim_invert(
            pipe, encode(pipe, pixels, encoder), num_inference_steps=num_inference_steps,
            refine=refine, prompt=part, guidance_scale=guidance_scale,
        ))
    return torch.cat(out)


def unzoom(image: Image.Image, scale: float, size: tuple[int, int]) -> tuple[Image.Image, tuple]:
    """Undo a centre crop to ``scale`` of the side, resized back to ``size``: shrink the image by
    ``scale`` into the centre of a ``size`` canvas filled with its border's median colour.
    Returns the canvas and the pasted box (left, top, right, bottom) in pixels.
    """
    h, w = size
    image = image.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0))
    sw, sh = round(w * scale), round(h * scale)
    left, top = (w - sw) // 2, (h - sh) // 2
    canvas = Image.new("RGB", (w, h), fill)
    canvas.paste(image.resize((sw, sh), Image.Resampling.BICUBIC), (left, top))
    return canvas, (left, top, left + sw, top + sh)


def aligned_mask(box: tuple, factor: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Latent elements whose ``factor`` x ``factor`` pixel cell lies inside ``box``."""
    c, h, w = shape
    rows = np.array([box[1] <= i * factor and (i + 1) * factor <= box[3] for i in range(h)])
    cols = np.array([box[0] <= j * factor and (j + 1) * factor <= box[2] for j in range(w)])
    return np.broadcast_to(rows[:, None] & cols[None, :], (c, h, w)).ravel().copy()


Candidate = tuple[float, torch.Tensor, "np.ndarray | None"]


def invert_candidates(
    pipe: object,
    images: Sequence[Image.Image],
    *,
    num_inference_steps: int,
    scales: Sequence[float] = (1.0,),
    batch_size: int = 64,
    refine: int = 0,
    encoder: object | None = None,
    prompt: str | Sequence[str] = "",
    masked: bool = False,
    guidance_scale: float = 1.0,
) -> list[Candidate]:
    """Inverted latents of ``images`` as given (scale 1) and after :func:`unzoom` to each other
    scale, each with a mask of the elements to read: None (all) unless ``masked``, then for an
    un-zoomed candidate only the elements whose cell lies inside the restored region.

    Reading all elements is the default because it measured better: on 1,000 held-out
    trustgain-mini-sd samples cropped to half the area, TPR at 1e-6 0.38 unmasked against
    0.22 masked with reliability weights, 0.16 against 0.12 with |z|-rank weights; the cells
    on the region's edge still carry part of the mark, and the weights keep the rest from
    adding much noise."""
    size = model_size(pipe)
    config = pipe.unet.config  # type: ignore[attr-defined]
    factor = size[0] // config.sample_size
    shape = (config.in_channels, config.sample_size, config.sample_size)
    out: list[Candidate] = []
    for scale in scales:
        mask, todo = None, list(images)
        if scale != 1.0:
            pairs = [unzoom(image, scale, size) for image in images]
            todo = [canvas for canvas, _ in pairs]
            mask = aligned_mask(pairs[0][1], factor, shape) if masked else None
        inverted = invert_images(
            pipe, todo, num_inference_steps=num_inference_steps, batch_size=batch_size,
            refine=refine, encoder=encoder, prompt=prompt, guidance_scale=guidance_scale,
        )
        out.append((scale, inverted, mask))
    return out


def read_candidates(
    candidates: Sequence[Candidate],
    key: DerivedKey,
    *,
    payload_bits: int = 64,
    nonces: Sequence[bytes | Sequence[bytes]] | None = None,
    nonce_space: int = 256,
    expected_payloads: Sequence[str] | None = None,
    fpr: float = 1e-6,
    levels: int = LEVELS,
    reliability: Reliability | None = None,
) -> list[LatentReading]:
    """Read every candidate and keep, per image, the best (see :func:`best_of`: the candidates
    share the image, so they are not independent, and the p-value is multiplied by their
    number). ``levels`` and ``reliability``: the weights, see :func:`read_latent_mark`."""
    reads = []
    for scale, inverted, mask in candidates:
        readings = []
        for i in range(inverted.shape[0]):
            readings += read_latent_mark(
                inverted[i : i + 1], key, payload_bits=payload_bits, fpr=fpr,
                nonce_space=nonce_space, nonces=None if nonces is None else [nonces[i]],
                expected_payload=None if expected_payloads is None else expected_payloads[i],
                mask=mask, levels=levels, reliability=reliability,
            )
        reads.append([dataclasses.replace(r, scale=scale) for r in readings])
    return best_of(reads, fpr)


def average_candidates(a: Sequence[Candidate], b: Sequence[Candidate]) -> list[Candidate]:
    """The element-wise mean of two inversions of the same images (e.g. under the empty and
    a guessed prompt), candidate by candidate: read once, it needs no correction for the two
    inversions, because the keystream is independent of the image and so of any function of
    it (the null stays exact), while the two inversions' errors partly cancel."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} candidates against {len(b)}")
    out = []
    for (sa, ia, ma), (sb, ib, _) in zip(a, b, strict=True):
        if sa != sb or ia.shape != ib.shape:
            raise ValueError("the two inversions must hold the same images at the same scales")
        out.append((sa, (ia + ib) / 2, ma))
    return out


def best_of(reads: Sequence[Sequence[LatentReading]], fpr: float) -> list[LatentReading]:
    """Per image, the reading with the smallest p-value among ``len(reads)`` readings of it
    (``reads[j][i]``: read ``j`` of image ``i``), its p-value multiplied by ``len(reads)``
    (Bonferroni; the reads share the image, so they are not independent and nothing sharper
    holds in general). Each read's p-value may already be corrected for its own candidates:
    the corrections multiply, and the result stays a valid p-value under the null."""
    if not reads:
        raise ValueError("no candidates to read")
    k = len(reads)
    best = [min(group, key=lambda r: r.p_value) for group in zip(*reads, strict=True)]
    return [
        dataclasses.replace(r, p_value=min(1.0, k * r.p_value), detected=k * r.p_value <= fpr)
        for r in best
    ]


def detect_latent(
    images: Sequence[Image.Image],
    pipe: object,
    key: DerivedKey,
    *,
    num_inference_steps: int,
    payload_bits: int = 64,
    nonces: Sequence[bytes | Sequence[bytes]] | None = None,
    nonce_space: int = 256,
    expected_payloads: Sequence[str] | None = None,
    fpr: float = 1e-6,
    batch_size: int = 64,
    refine: int = 0,
    scales: Sequence[float] = (1.0,),
    levels: int = LEVELS,
    encoder: object | None = None,
    prompt: str | Sequence[str] | Callable[[list[Image.Image]], Sequence[str]] = "",
    reliability: Reliability | None = None,
    guidance_scale: float = 1.0,
    also_unprompted: bool = False,
    prompted_reliability: Reliability | None = None,
    combine: str = "best",
) -> list[LatentReading]:
    """Detect the latent mark in ``images`` generated (or not) by ``pipe``.

    ``nonces`` and ``expected_payloads`` come from each image's provenance record (the stage's
    ``nonces`` and ``payload`` params) when it has one (an image's entry may list several
    nonces, all of a record of several outputs when which one it is is unknown: one inversion,
    each tried, see :func:`~trustgain.watermark.latent.read_latent_mark`); without them the
    detector tries the
    ``nonce_space`` counter nonces and decodes the payload blind (see
    :func:`trustgain.watermark.latent.read_latent_mark` for both statistics).
    ``scales`` < 1 also try undoing a centre crop to that side ratio (:func:`unzoom`), at one
    more inversion each (all elements read; see :func:`invert_candidates`).
    ``encoder``: a detector-side VAE to encode with (see :func:`encode`). ``prompt``: the
    generation prompt(s), where the verifier knows them (records keep only a digest of the
    request): inverting under the prompt recovers more signs; a wrong prompt only costs power.
    Or a function that guesses each image's prompt from the image itself (a captioner; for
    trustgain-mini-sd :func:`trustgain.models.guess_digit_prompts`, its judge naming the
    digit): under JPEG 50 the guess recovered 0.687 of the signs against 0.689 with the true
    prompt and 0.666 with the empty one (100 samples, mark VAE, guidance 4).
    ``guidance_scale``: the generation's classifier-free guidance, used with a ``prompt`` (the
    inversion then undoes the sampler's own steps: on trustgain-mini-sd with its mark VAE,
    JPEG 50 sign accuracy 0.663 with the empty prompt, 0.672 with the prompt unguided, 0.688
    with the prompt at the sampler's guidance 4; 100 held-out samples). It costs two UNet
    calls per step instead of one, and has no effect without a prompt.
    ``reliability``: per-element weights fitted for this model and encoder
    (:mod:`trustgain.watermark.latent_reliability`; for trustgain-mini-sd with its detector
    encoder :func:`trustgain.models.load_reliability`) instead of the ``levels`` |z|-ranks.
    ``also_unprompted`` (with a ``prompt``): invert both ways, under the empty prompt (read
    with ``reliability``) and under the prompt (read with ``prompted_reliability``, default
    ``reliability``), and keep the better read at twice its p-value (:func:`best_of`). Meant
    for a guessed prompt (when the guess is wrong the empty read still stands), and for a
    given one when the encoder was tuned for the empty-prompt inversion (the mark VAE's since
    its end-to-end phase: TPR at 1e-6 under JPEG 50 0.952 under the true prompt alone on 3,000
    samples; 0.9895 empty, 0.993 empty or guessed on 6,000; BENCHMARKS.md). Earlier, on 1,000
    trustgain-mini-sd samples with the previous mark VAE (record mode, scales 1 and 0.7071),
    TPR at 1e-6 under JPEG 50 was 0.964 with the empty prompt alone, 0.981 with the judge's guess
    alone, 0.982 both ways (0.989 with the true prompt); under noise 0.05, 0.982, 0.967 (the
    judge misnames 6.9% of noisy digits), 0.995 both ways (0.997 with the true prompt).
    ``combine`` (with ``also_unprompted``): ``"best"``, the better of the two reads at twice
    its p-value, or ``"average"``, one read of the two inversions' element-wise mean
    (:func:`average_candidates`, with ``reliability``), no correction. With the judge's guess
    on trustgain-mini-sd (mark VAE, 3,000 samples): JPEG 50 0.997 averaged against 0.995 best,
    noise 0.05 0.994 against 0.995 (the mean cannot fall back on the empty read when the guess
    is wrong), so ``"best"`` stays the default.
    The null stays exact whatever the encoder, prompt and weights, because the keystream is
    independent of the image and of all three (a guessed prompt depends on the image alone).
    """
    from trustgain.watermark.latent import _check_key, hex_to_bits

    _check_key(key)  # checked before the (slow) inversion, as the rest below
    if combine not in ("best", "average"):
        raise ValueError(f"combine must be 'best' or 'average', got {combine!r}")
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
    images = list(images)
    bad = [type(im).__name__ for im in images if not isinstance(im, Image.Image)]
    if bad:
        raise TypeError(f"images must be PIL images, got a {bad[0]}")
    for text in expected_payloads or ():
        if text is not None:
            hex_to_bits(text, payload_bits)
    if callable(prompt):
        prompt = list(prompt(images))
    prompted = bool(prompt) if isinstance(prompt, str) else any(prompt)
    ways = [("", 1.0, False)] if also_unprompted and prompted else []
    ways.append((prompt, guidance_scale, prompted))

    def read(candidates: list[Candidate], weights: Reliability | None) -> list[LatentReading]:
        return read_candidates(
            candidates, key, payload_bits=payload_bits, nonces=nonces,
            nonce_space=nonce_space, expected_payloads=expected_payloads, fpr=fpr,
            levels=levels, reliability=weights,
        )

    inverted = [invert_candidates(
        pipe, images, num_inference_steps=num_inference_steps, scales=scales,
        batch_size=batch_size, refine=refine, encoder=encoder, prompt=told,
        guidance_scale=guidance,
    ) for told, guidance, _ in ways]
    if len(ways) == 2 and combine == "average":
        mean = average_candidates(*inverted)
        return [dataclasses.replace(r, prompted=True) for r in read(mean, reliability)]
    reads = []
    for candidates, (_, _, under_prompt) in zip(inverted, ways, strict=True):
        weights = prompted_reliability if under_prompt and prompted_reliability else reliability
        reads.append([dataclasses.replace(r, prompted=under_prompt)
                      for r in read(candidates, weights)])
    return reads[0] if len(reads) == 1 else best_of(reads, fpr)


def inversion_guidance(prompt: object, given: float | None, params: Mapping[str, Any] | None,
                       ) -> float:
    """The guidance to invert with: 1 without a prompt (the empty prompt's guided noise is its
    unguided one, at twice the cost), else ``given``, else the generation's as the stage
    recorded it in ``params``, else 1 (records from before it was kept)."""
    if not prompt:
        return 1.0
    if given is not None:
        return float(given)
    return float((params or {}).get("guidance_scale") or 1.0)


def detect_with_record(
    images: Sequence[Image.Image],
    pipe: object,
    key: DerivedKey,
    record: Mapping[str, Any],
    *,
    num_inference_steps: int | None = None,
    fpr: float = 1e-6,
    refine: int = 0,
    scales: Sequence[float] = (1.0,),
    encoder: object | None = None,
    prompt: str | Callable[[list[Image.Image]], Sequence[str]] = "",
    reliability: Reliability | None = None,
    guidance_scale: float | None = None,
    also_unprompted: bool = False,
    prompted_reliability: Reliability | None = None,
    combine: str = "best",
) -> list[LatentReading]:
    """Detect with the nonces and payload of a provenance record (``images[i]`` is output i);
    ``encoder``, ``prompt``, ``reliability``, ``also_unprompted``, ``prompted_reliability`` and
    ``combine`` as in :func:`detect_latent`.
    ``guidance_scale`` (used with a ``prompt``): None takes the record's (the generation's,
    where the run set one), else 1 (unguided)."""
    stage = next((s for s in record.get("stages", ()) if s.get("name") == STAGE), None)
    if stage is None:
        raise ValueError(f"the record has no '{STAGE}' stage")
    params = stage["params"]
    if params.get("key_id") != key.key_id:
        raise ValueError(f"the record was marked under {params.get('key_id')}, not {key.key_id}")
    steps = num_inference_steps or params.get("num_inference_steps")
    if steps is None:
        raise ValueError("the record does not say how many steps generated it; pass them")
    nonces = [bytes.fromhex(n) for n in params["nonces"]][: len(images)]
    return detect_latent(
        images, pipe, key, num_inference_steps=int(steps), payload_bits=params["payload_bits"],
        nonces=nonces, expected_payloads=[params["payload"]] * len(nonces), fpr=fpr,
        refine=refine, scales=scales, encoder=encoder, prompt=prompt, reliability=reliability,
        guidance_scale=inversion_guidance(prompt, guidance_scale, params),
        also_unprompted=also_unprompted, prompted_reliability=prompted_reliability,
        combine=combine,
    )
