"""Adapters between trustgain and generation libraries."""

from trustgain.generators.diffusers import DiffusersGenerator

__all__ = ["DiffusersGenerator"]
