"""Crash test: a batch killed with SIGKILL midway and rerun ends with every output exactly once,
identical to a clean run, a consistent manifest, and every input byte-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_batch import ChunkedInvert, Invert, items, make_images, tree_digest

from trustgain.protection.batch import run_batch
from trustgain.protection.batch_manifest import MANIFEST_NAME, read_manifest

N = 40
KILL_AFTER = 8  # manifest item lines seen before the kill

SCRIPT = """
import sys
sys.path.insert(0, {here!r})
from test_batch import ChunkedInvert, Invert
from trustgain.protection.batch import run_batch
job = Invert(delay=0.02) if sys.argv[3] == "1" else ChunkedInvert(delay=0.02, batch_size=3)
run_batch(sys.argv[1], sys.argv[2], job, show_progress=False)
"""


def _count_items(manifest: Path) -> int:
    try:
        return manifest.read_bytes().count(b'"kind":"item"')
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("chunk", [1, 3])
def test_kill_9_midway_then_rerun(tmp_path, chunk):
    src, out, clean = tmp_path / "in", tmp_path / "out", tmp_path / "clean"
    make_images(src, N)
    before = tree_digest(src)
    script = SCRIPT.format(here=str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", script, str(src), str(out), str(chunk)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _count_items(out / MANIFEST_NAME) < KILL_AFTER and proc.poll() is None:
        assert time.monotonic() < deadline, "the batch never got going"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    done_before = _count_items(out / MANIFEST_NAME)
    assert KILL_AFTER <= done_before < N, "killed too late to test anything"

    job = Invert() if chunk == 1 else ChunkedInvert(batch_size=chunk)
    s = run_batch(src, out, job, show_progress=False)
    assert s.refused == 0 and s.skipped >= KILL_AFTER and s.done + s.skipped == N
    run_batch(src, clean, Invert(), show_progress=False)

    assert tree_digest(src) == before  # inputs untouched
    got, want = tree_digest(out), tree_digest(clean)
    got.pop(MANIFEST_NAME)
    want.pop(MANIFEST_NAME)
    assert got == want  # every output exactly once (no temp files), same bytes as a clean run
    final = {}
    for e in items(out):
        assert e["status"] == "ok"
        final[e["input"]] = e
    assert sorted(final) == sorted(before)
    for rel, e in final.items():
        assert e["input_sha256"] == before[rel]
        assert {k: got[k] for k in e["files"]} == e["files"]
    entries = read_manifest(out)
    assert entries[0]["kind"] == "header" and [e["kind"] for e in entries].count("run") == 2
