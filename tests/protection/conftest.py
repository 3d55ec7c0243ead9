"""One torch thread for every protection test (see ``one_torch_thread`` in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Applies the shared fixture to every test in this folder."""
