"""Architectures of trustgain-mini-sd: the stock diffusers/transformers classes, sized tiny.

Every part is a standard class (``AutoencoderKL``, ``CLIPTextModel``, ``CLIPTokenizer``,
``UNet2DConditionModel``, ``DDIMScheduler``), so the saved folder is an ordinary
``StableDiffusionPipeline`` that ``from_pretrained`` loads like any hub checkpoint.
Only the tokenizer's vocabulary is ours: BPE merges learnt with the ``tokenizers`` library on
the caption corpus, written in CLIP's vocab/merges form.
"""

from __future__ import annotations

from collections.abc import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 32
# diffusion schedule shared by training (DDPM noise) and sampling (DDIM)
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


def train_tokenizer(captions: Iterable[str], vocab_size: int = 512):
    """Learn BPE merges on ``captions`` and return a ``CLIPTokenizer`` using them.

    The pre-tokenizer mirrors CLIP's (lower-case, split on spaces, one token per digit) and
    words end with CLIP's ``</w>`` suffix, so the transformers class reads the result as is.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)])
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS], end_of_word_suffix="</w>",
        initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(captions, trainer)
    vocab: dict[str, int] = dict(tok.get_vocab())
    for ch in alphabet:  # every character, inside and at the end of a word
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = _merges(tok)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def _merges(tok) -> list[tuple[str, str]]:
    """The learnt merge list, in order (read from the BPE model's JSON form)."""
    import json

    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def make_vae(factor: int = 4):
    """AutoencoderKL: 3x32x32 RGB <-> 4 x (32/factor) x (32/factor) latents. ``factor`` 4 (the
    shipped model: three levels, 4x8x8 latents) or 2 (two levels, 4x16x16: four times the
    latent elements, for marks that live in the initial latents)."""
    from diffusers import AutoencoderKL

    widths = {4: (32, 64, 64), 2: (32, 64)}
    if factor not in widths:
        raise ValueError(f"latent factor must be 4 or 2, got {factor}")
    levels = len(widths[factor])
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=widths[factor], layers_per_block=1, latent_channels=4,
        norm_num_groups=16, sample_size=32)


def make_text_encoder(tokenizer):
    """A 3-layer CLIP text transformer of width 64 over ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256,
        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        projection_dim=64, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(cfg)


def make_unet(sample_size: int = 8):
    """UNet2DConditionModel on 4 x ``sample_size`` x ``sample_size`` latents (8 shipped),
    cross-attention to 64-wide text states."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(48, 96, 96),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=16)


def make_scheduler():
    """DDIM sampler over the training schedule (SD's settings: steps_offset=1)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def write_vocab_files(tokenizer_dir) -> None:
    """Add CLIP's classic ``vocab.json`` + ``merges.txt`` beside ``tokenizer.json``.

    transformers 5 saves only ``tokenizer.json``; the slow ``CLIPTokenizer`` of transformers
    4.x needs the two classic files, so both are written for older installs.
    """
    import json
    from pathlib import Path

    folder = Path(tokenizer_dir)
    model = json.loads((folder / "tokenizer.json").read_text())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
