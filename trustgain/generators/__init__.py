"""Adapters between trustgain and generation libraries."""

from trustgain.generators.diffusers import DiffusersGenerator
from trustgain.generators.multi import MultiGenerator

__all__ = ["DiffusersGenerator", "MultiGenerator"]
