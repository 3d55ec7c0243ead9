"""Adapters between trustgain and generation libraries."""

from trustgain.generators.diffusers import DiffusersGenerator
from trustgain.generators.multi import MultiGenerator
from trustgain.generators.text import TransformersTextGenerator

__all__ = ["DiffusersGenerator", "MultiGenerator", "TransformersTextGenerator"]
