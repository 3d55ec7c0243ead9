from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_ddim_pipeline, tiny_lm, tiny_sd_pipeline, tiny_tokenizer_lm

from trustgain import KeyRing


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own TRUSTGAIN_HOME and no passphrase from the environment."""
    monkeypatch.setenv("TRUSTGAIN_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("TRUSTGAIN_PASSPHRASE", raising=False)
    monkeypatch.delenv("TRUSTGAIN_DEBUG", raising=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: on small shared machines several threads make tiny models many times
    slower (measured 3-30x on 2 busy cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def keyring() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture(scope="session")
def other_keyring() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture(scope="session")
def sd_pipe():
    return tiny_sd_pipeline()


@pytest.fixture(scope="session")
def ddim_pipe():
    return tiny_ddim_pipeline()


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory):
    """A folder holding a tiny chat LM and its tokenizer (``from_pretrained`` loads it)."""
    path = tmp_path_factory.mktemp("chat-lm")
    tiny_lm().save_pretrained(path)
    tiny_tokenizer_lm().save_pretrained(path)
    return str(path)
