"""Prompt engineering stages (PREPARE phase)."""
