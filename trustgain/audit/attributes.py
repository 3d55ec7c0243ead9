"""Attribute readers for balance audits: each maps an output image to one group name.

A reader is ``fn(images) -> list[str]`` over PIL images, registered under a name with the
groups it can return, so a stage can be configured from ``trustgain.json``. Built in:
``ink_colour`` for trustgain-mini-sd (the nearest of its seven inks to the mean bright colour).
Users register their own (a face-attribute classifier, a style tagger) with
:func:`register_attribute`. Written here because the readers are the project's own models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustgain.errors import ConfigError

Reader = Callable[[Sequence[Any]], list[str]]


@dataclass(frozen=True)
class Attribute:
    name: str
    groups: tuple[str, ...]
    read: Reader


_ATTRIBUTES: dict[str, Attribute] = {}


def register_attribute(name: str, groups: Sequence[str], read: Reader) -> Attribute:
    """Make ``read`` available to balance audits as ``name`` (re-registering replaces it)."""
    if not isinstance(name, str) or not name or not callable(read):
        raise ConfigError("an attribute needs a name and a reader function")
    groups = tuple(str(g) for g in groups)
    if len(groups) < 2 or len(set(groups)) != len(groups):
        raise ConfigError(f"attribute {name!r} needs two or more distinct groups")
    _ATTRIBUTES[name] = Attribute(name, groups, read)
    return _ATTRIBUTES[name]


def attribute(name: str) -> Attribute:
    if name not in _ATTRIBUTES:
        raise ConfigError(f"unknown attribute {name!r}; known: {', '.join(sorted(_ATTRIBUTES))}",
                          hint="register one with trustgain.audit.attributes.register_attribute")
    return _ATTRIBUTES[name]


def ink_colour_of(pixels: np.ndarray) -> str:
    """The nearest trustgain-mini-sd ink to the mean colour of the bright pixels of an RGB
    array in [0, 1] (H, W, 3), scaled so its largest channel is 1 as the inks are; ``none``
    when nothing is bright."""
    from trustgain.models.data import COLORS

    bright = pixels.max(axis=-1) > 0.35
    if not bright.any():
        return "none"
    mean = pixels[bright].mean(axis=0)
    mean = mean / max(float(mean.max()), 1e-6)
    names = list(COLORS)
    inks = np.array([COLORS[c] for c in names])
    return names[int(np.linalg.norm(inks - mean, axis=1).argmin())]


def _ink_colours(images: Sequence[Any]) -> list[str]:
    out = []
    for image in images:
        array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image,
                           dtype=np.float64)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ConfigError(f"ink_colour reads RGB images, not an array of shape {array.shape}")
        out.append(ink_colour_of(array / 255.0 if array.max() > 1.0 else array))
    return out


def _register_builtins() -> None:
    from trustgain.models.data import COLORS

    register_attribute("ink_colour", (*COLORS, "none"), _ink_colours)


_register_builtins()
