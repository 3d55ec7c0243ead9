"""Surrogate models for protection: small architectures trained here, and adapters that plug
any torch classifier, a diffusers VAE encoder or a transformers image classifier into the PGD
core.

Every surrogate is a ``torch.nn.Module`` taking ``[B, C, H, W]`` floats in [0, 1] (normalisation
and resizing live inside). Classifiers return logits; feature surrogates (the VAE encoder,
PhotoGuard's "encoder attack", arXiv 2302.06588) instead expose ``reference(x)`` and
``adv_loss(x, ref)`` (the PGD core maximises it).

The architectures live in :mod:`trustgain.protection.archs` (plain ``torch.nn``; why no package
fits is said there). Weights are saved with safetensors.

Command: ``python -m trustgain.protection.surrogates --data DIR -o OUT`` trains them on a
folder (subfolders = classes; a flat folder = one class per image, labelled by patch source).
Everything it can check is checked before training (architecture names, numbers, device, that
OUT can be written and is new, or replaced with ``--force``); OUT appears whole or not at all
(written in a hidden sibling folder, then renamed into place). Hidden folders are skipped; a
class folder without a readable image, images beside class folders, and 16-bit or float
images (which ``trustgain protect`` refuses) are refused with the file or folder named.

The code is split by task, and every name is importable from here:
:mod:`~trustgain.protection.surrogates_adapters` (the adapters above, :func:`wrap`),
:mod:`~trustgain.protection.surrogates_train` (training, :func:`predict`),
:mod:`~trustgain.protection.surrogates_files` (save and load),
:mod:`~trustgain.protection.surrogates_data` (reading a training folder) and
:mod:`~trustgain.protection.surrogates_cli` (the command).
"""

from __future__ import annotations

from trustgain.errors import ConfigError
from trustgain.protection.archs import ARCHS, make_net
from trustgain.protection.surrogates_adapters import (
    Classifier,
    FeatureSurrogate,
    HFImageClassifier,
    JudgeSurrogate,
    VAEEncoderSurrogate,
    resize,
    to_tensor,
    wrap,
)
from trustgain.protection.surrogates_cli import EPILOG, build_parser, main
from trustgain.protection.surrogates_data import IMAGE_SUFFIXES, folder_dataset, read_image
from trustgain.protection.surrogates_files import (
    CONFIG_NAME,
    check_output,
    load,
    load_named,
    save,
    save_folder,
)
from trustgain.protection.surrogates_train import (
    augmented_batches,
    predict,
    train,
    train_sklearn,
)

__all__ = [
    "ARCHS",
    "CONFIG_NAME",
    "EPILOG",
    "IMAGE_SUFFIXES",
    "Classifier",
    "ConfigError",
    "FeatureSurrogate",
    "HFImageClassifier",
    "JudgeSurrogate",
    "VAEEncoderSurrogate",
    "augmented_batches",
    "build_parser",
    "check_output",
    "folder_dataset",
    "load",
    "load_named",
    "main",
    "make_net",
    "predict",
    "read_image",
    "resize",
    "save",
    "save_folder",
    "to_tensor",
    "train",
    "train_sklearn",
    "wrap",
]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
