"""The batch manifest: an append-only, fsync'd JSON-lines log of what a batch did, per input.

One manifest per output folder (``OUT_DIR/trustgain-manifest.jsonl``). Lines, in order:

- ``{"kind": "header", ...}`` once: format, job name and the job's settings (never secrets;
  key ids only). A rerun with other settings is refused rather than mixing two batches.
- ``{"kind": "run", ...}`` at the start of each invocation, ``{"kind": "end", ...}`` at its end.
- ``{"kind": "start", "input": REL, "files": [OUT, ...]}`` before an input's outputs are written:
  it marks those paths as this batch's own, so a rerun may replace them.
- ``{"kind": "item", "input": REL, "status": "ok", "input_sha256": ..., "files": {OUT: sha256}}``
  after they are written, or ``"status": "refused"`` with a ``reason``.

The manifest is locked (``flock``) while a batch runs, so two batches cannot write one folder.
A line torn by a crash (no final newline) is dropped on the next open. Hand-written because the
needs (append + fsync + lock + replay) are a few lines of the standard library; an embedded
database (sqlite) would hide the log from the user's ``cat`` and ``jq``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustgain.errors import TrustgainError

MANIFEST_NAME = "trustgain-manifest.jsonl"
FORMAT = "trustgain.batch"
FORMAT_VERSION = 1


class BatchError(TrustgainError):
    """An output folder cannot take this batch (nested in the input, other settings, busy)."""


@dataclass
class ManifestState:
    """What earlier runs recorded: per input, its last event; all paths this batch owns."""

    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    owned: set[str] = field(default_factory=set)

    def replay(self, entry: dict[str, Any]) -> None:
        kind = entry.get("kind")
        if kind == "start":
            self.last[entry["input"]] = entry
            self.owned.update(entry["files"])
        elif kind == "item":
            self.last[entry["input"]] = entry
            self.owned.update(entry.get("files") or {})


class Manifest:
    """An open, locked manifest; use :meth:`open` as a context manager."""

    def __init__(self, path: Path, fd: int, state: ManifestState) -> None:
        self.path = path
        self._fd = fd
        self.state = state

    @classmethod
    @contextlib.contextmanager
    def open(cls, out_dir: Path, *, job: str, settings: dict[str, Any]
             ) -> Iterator[Manifest]:
        """Open (or create) ``out_dir``'s manifest for ``job``; lock it; replay it."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / MANIFEST_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BatchError(
                    f"{out_dir} is in use by another running trustgain batch",
                    hint="wait for it to finish or choose another output folder",
                ) from None
            entries = _read(path, fd)
            header = {"kind": "header", "format": FORMAT, "version": FORMAT_VERSION,
                      "job": job, "settings": json.loads(json.dumps(settings))}
            manifest = cls(path, fd, ManifestState())
            if not entries:
                manifest.append(header)
                _fsync_dir(out_dir)
            else:
                _check_header(entries[0], header, path)
                for entry in entries[1:]:
                    manifest.state.replay(entry)
            yield manifest
        finally:
            os.close(fd)  # also releases the lock

    def append(self, entry: dict[str, Any], *, sync: bool = True) -> None:
        """Append one line; with ``sync`` it is on disk (fsync) before this returns."""
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode("utf-8"))
        if sync:
            os.fsync(self._fd)
        self.state.replay(entry)


def read_manifest(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete lines of ``out_dir``'s manifest (for reports and tests)."""
    path = Path(out_dir) / MANIFEST_NAME
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _read(path: Path, fd: int) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):  # a line torn by a crash: it never happened
        cut = data.rfind(b"\n") + 1
        os.ftruncate(fd, cut)
        data = data[:cut]
    entries = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or "kind" not in entry:
            raise BatchError(
                f"{path} is corrupt at line {number}",
                hint="it is not a trustgain batch manifest; choose another output folder",
            )
        entries.append(entry)
    return entries


def _check_header(found: dict[str, Any], wanted: dict[str, Any], path: Path) -> None:
    if found.get("kind") != "header" or found.get("format") != FORMAT:
        raise BatchError(f"{path} is not a trustgain batch manifest",
                         hint="choose another output folder")
    if found.get("version") != FORMAT_VERSION:
        raise BatchError(f"{path} has manifest version {found.get('version')}, "
                         f"this trustgain writes {FORMAT_VERSION}",
                         hint="finish that batch with the trustgain that started it")
    if found.get("job") != wanted["job"] or found.get("settings") != wanted["settings"]:
        theirs, ours = found.get("settings") or {}, wanted["settings"]
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        what = f"job {found.get('job')!r}" if found.get("job") != wanted["job"] else (
            "settings differing in " + ", ".join(diff))
        raise BatchError(
            f"{path.parent} holds a batch made with other {what}",
            hint="rerun with the same options and key to resume it, or choose another "
            "output folder",
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
