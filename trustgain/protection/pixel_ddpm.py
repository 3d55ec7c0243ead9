r"""Train a small pixel-space DDPM on a user's images, digits or natural 32x32 patches.

    python -m trustgain.protection.pixel_ddpm --data DIR|digits|patches -o OUT \
        [--size 32] [--steps N] [--batch 16] [--lr 2e-3] [--width 16] [--max-timestep T] \
        [--checkpoint-every 200] [--device cpu] [--threads 1] [--force]

The model is a diffusers ``UNet2DModel`` (three resolution levels, no attention, ~0.6M
parameters at the default width) with a cosine-schedule ``DDPMScheduler``; both are written
with ``save_pretrained`` as a ``DDPMPipeline`` folder, so ``DDPMPipeline.from_pretrained(OUT)``
samples from it and :func:`load_ddpm` loads it for the ``ddpm`` protection mode and for
DiffPure-like purification (:mod:`trustgain.protection.ddpm`). An exponential moving average of
the weights (diffusers' ``EMAModel``) is what gets saved.

Training is resumable: every ``--checkpoint-every`` steps the weights, the EMA, the optimizer,
the random states and the training settings are written atomically to
``OUT/.ddpm-checkpoint.pt``; a rerun with the same ``-o`` and the same settings (``--steps``
may differ) continues from there, and one with different settings (``--width``, ``--lr``,
other data, ...) is refused, naming them. ``--force`` starts over. The finished model is
written to a sibling temporary folder and renamed into place, so an interrupted run never
leaves a half-written model.

``-o`` must be new, empty, a folder this command wrote (a model, which needs ``--force`` to be
replaced, or an interrupted run's checkpoint) or, with ``--force``, another folder to replace.
A folder holding the training data, the current folder or the home folder is never replaced.
The output is checked (writable, not in the way) before any data loads. Training that
diverges (a loss or weight that is not finite) stops with an error and writes no model.

Folder data: 8-bit images, and 16-bit grayscale ones (scaled to [0, 1] at full precision);
32-bit integer and float images are skipped with the reason (convert them first).

``--max-timestep`` restricts training to the first timesteps: the protection mode and the
purifier only use noise levels up to about 0.3 of the schedule, and a model trained on those
alone learns them several times faster on a CPU (it cannot generate from pure noise then; the
saved config records the limit).

The code is split by task, and every public name is importable from here:
:mod:`~trustgain.protection.pixel_ddpm_model` (the UNet, the schedule, :func:`load_ddpm`),
:mod:`~trustgain.protection.pixel_ddpm_data` (training images),
:mod:`~trustgain.protection.pixel_ddpm_output` (the output folder and its checks),
:mod:`~trustgain.protection.pixel_ddpm_train` (:func:`train_ddpm`, checkpoints and resume) and
:mod:`~trustgain.protection.pixel_ddpm_cli` (the command).
"""

from __future__ import annotations

from trustgain.protection.pixel_ddpm_cli import EPILOG, main
from trustgain.protection.pixel_ddpm_data import (
    IMAGE_SUFFIXES,
    REFUSED_MODES,
    SIXTEEN_BIT_MODES,
    data_paths,
    digits_images,
    folder_images,
    image_files,
    named_images,
)
from trustgain.protection.pixel_ddpm_model import (
    PixelDDPM,
    build_scheduler,
    build_unet,
    load_ddpm,
)
from trustgain.protection.pixel_ddpm_output import (
    CHECKPOINT_NAME,
    MODEL_ENTRIES,
    PACKAGE,
    TRAINING_NAME,
    OutputInUseError,
    check_output,
)
from trustgain.protection.pixel_ddpm_train import RESUME_SETTINGS, train_ddpm

__all__ = [
    "CHECKPOINT_NAME",
    "EPILOG",
    "IMAGE_SUFFIXES",
    "MODEL_ENTRIES",
    "PACKAGE",
    "REFUSED_MODES",
    "RESUME_SETTINGS",
    "SIXTEEN_BIT_MODES",
    "TRAINING_NAME",
    "OutputInUseError",
    "PixelDDPM",
    "build_scheduler",
    "build_unet",
    "check_output",
    "data_paths",
    "digits_images",
    "folder_images",
    "image_files",
    "load_ddpm",
    "main",
    "named_images",
    "train_ddpm",
]

if __name__ == "__main__":
    raise SystemExit(main())
