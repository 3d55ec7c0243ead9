"""Resumable, crash-safe batches over folders of any size, serially or as Ray tasks.

:func:`run_batch` applies a :class:`Job` (a picklable function from an input file's bytes to
output bytes, e.g. protect or recover one image) to every image under ``IN_DIR`` and writes the
results under ``OUT_DIR`` with the same relative paths (suffix ``job.output_suffix``).

Guarantees:

- Inputs are never written: ``OUT_DIR`` equal to or inside ``IN_DIR`` is refused, and so is any
  output path that resolves to an input.
- Outputs are written atomically (:func:`trustgain.fileio.write_atomic`), then recorded in the
  append-only, fsync'd manifest (:mod:`trustgain.protection.batch_manifest`).
- A rerun after a crash (even ``kill -9``) skips inputs whose manifest record still matches the
  input's and the outputs' SHA-256, redoes the rest, and replaces only files this batch wrote,
  so every output exists exactly once. A file in the way that the batch did not write, or an
  output changed after the batch recorded it, is refused for that input, never overwritten.
- A bad input (unreadable, corrupt, unsupported) is refused with a reason and the batch goes on.

With ``ray_address`` the same job runs as Ray tasks (``ray.init(address)``, or a local
``ray.init(num_cpus=workers)`` for ``"local"``): input bytes go to the task and output bytes come
back, so workers need no shared file system, and only this driver writes files and the manifest
(as results arrive, through ``ray.wait``), which keeps the crash and resume guarantees.
The job object, derived key included, travels to the workers through Ray's object store: on a
cluster over an untrusted network, enable Ray's TLS (``RAY_USE_TLS``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from trustgain.cli.common import collect_images, progress
from trustgain.errors import InputError, TrustgainError
from trustgain.fileio import write_atomic
from trustgain.protection.batch_manifest import MANIFEST_NAME, BatchError, Manifest

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}


@dataclass(frozen=True)
class Produced:
    """A job's result for one input: the main output, extra files and facts to record."""

    data: bytes
    extras: tuple[tuple[str, bytes], ...] = ()  # (suffix after the output's name, bytes)
    info: dict[str, Any] = field(default_factory=dict)  # JSON-safe, no secrets
    warning: str | None = None  # done, but the user should know (e.g. approximate result)


@dataclass(frozen=True)
class Refused:
    """A job declined one input; ``reason`` is a one-line message for the user."""

    reason: str


class Job(Protocol):
    """Per-input work; must be picklable for Ray, and deterministic enough to redo."""

    name: str
    output_suffix: str  # the main output's suffix, e.g. ".png"
    extra_suffixes: tuple[str, ...]  # extra outputs: main output's name + suffix
    companions: tuple[str, ...]  # optional inputs read beside each input: its name + suffix

    def settings(self) -> dict[str, Any]:
        """JSON-safe settings recorded in the manifest header (key ids, never keys)."""

    def __call__(self, data: bytes, image_id: str, companions: dict[str, bytes]
                 ) -> Produced | Refused:
        """Process one input's bytes (``companions``: suffix -> bytes of those present);
        ``image_id`` is the input's path relative to ``IN_DIR``."""


@dataclass
class Summary:
    """What one invocation did; ``refusals`` and ``warnings`` list ``(input, message)``."""

    done: int = 0
    skipped: int = 0
    refused: int = 0
    seconds: float = 0.0
    manifest: str = ""
    refusals: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "skipped": self.skipped, "refused": self.refused,
                "seconds": round(self.seconds, 3), "manifest": self.manifest,
                "refusals": [{"input": i, "reason": r} for i, r in self.refusals],
                "warnings": [{"input": i, "warning": w} for i, w in self.warnings]}


@dataclass(frozen=True)
class _Item:
    src: Path
    rel: str  # input path relative to IN_DIR (posix): manifest key and image id
    files: tuple[str, ...]  # outputs relative to OUT_DIR: main first, then extras
    refusal: str | None = None


@dataclass
class _Task:
    item: _Item
    data: bytes | None = None  # None: nothing to compute (skipped or refused)
    companions: dict[str, bytes] = field(default_factory=dict)
    sha: str | None = None  # SHA-256 of the input and its companions (see _digest)
    verdict: str = "run"  # run | skip | refused
    reason: str = ""


def run_batch(
    in_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    job: Job,
    *,
    ray_address: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    on_result: Callable[[str, str, str], None] | None = None,
) -> Summary:
    """Run ``job`` on every image under ``in_dir``; outputs and manifest under ``out_dir``.

    ``ray_address``: None runs in this process; ``"local"`` starts a local Ray with
    ``workers`` CPUs (default: all); anything else is passed to ``ray.init(address=...)``.
    If Ray is already initialised in this process, that Ray is used as it is.
    ``on_result(input, status, detail)`` is called per input as it is settled.
    """
    started = time.perf_counter()
    in_root, out_root = _check_folders(Path(in_dir), Path(out_dir))
    items = _plan(collect_images([str(in_root)], IMAGE_SUFFIXES), out_root, job)
    summary = Summary(manifest=str(out_root / MANIFEST_NAME))
    with Manifest.open(out_root, job=job.name, settings=job.settings()) as manifest:
        manifest.append({"kind": "run", "at": _now(), "inputs": len(items),
                         "ray": ray_address is not None}, sync=False)
        _remove_stale_temps(out_root, manifest.state.owned)
        inputs = {item.src.resolve() for item in items}
        tasks = (_prepare(item, out_root, manifest, inputs, job.companions) for item in items)
        if ray_address:
            results = _execute_ray(tasks, job, ray_address, workers)
        elif _chunk_size(job) > 1:
            results = _execute_chunked(tasks, job)
        else:
            results = ((task, job(task.data, task.item.rel, task.companions)
                        if task.data is not None else None) for task in tasks)
        for task, result in progress(results, total=len(items), desc=job.name,
                                     disable=not show_progress):
            status, detail = _settle(task, result, out_root, manifest)
            if status == "ok":
                summary.done += 1
                if isinstance(result, Produced) and result.warning:
                    summary.warnings.append((task.item.rel, result.warning))
            elif status == "skipped":
                summary.skipped += 1
            else:
                summary.refused += 1
                summary.refusals.append((task.item.rel, detail))
            if on_result is not None:
                on_result(task.item.rel, status, detail)
        summary.seconds = time.perf_counter() - started
        manifest.append({"kind": "end", "at": _now(), "done": summary.done,
                         "skipped": summary.skipped, "refused": summary.refused,
                         "seconds": round(summary.seconds, 3)})
    return summary


def _execute_chunked(tasks: Iterator[_Task], job: Any
                     ) -> Iterator[tuple[_Task, Produced | Refused | None]]:
    """Serial path for jobs with ``call_many``: ``job.batch_size`` inputs per call.

    Tasks with nothing to compute are settled at once; the others as their chunk finishes, so
    a crash loses at most one chunk of work (it is redone on the rerun).
    """
    pending: list[_Task] = []
    for task in tasks:
        if task.data is None:
            yield task, None
            continue
        pending.append(task)
        if len(pending) >= _chunk_size(job):
            yield from _run_chunk(pending, job)
            pending = []
    yield from _run_chunk(pending, job)


def _run_chunk(pending: list[_Task], job: Any
               ) -> Iterator[tuple[_Task, Produced | Refused | None]]:
    if not pending:
        return
    outs = job.call_many([(t.data, t.item.rel, t.companions) for t in pending])
    yield from zip(pending, outs, strict=True)


def _check_folders(in_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    if not in_dir.is_dir():
        raise InputError(f"{in_dir} is not a folder")
    in_root, out_root = in_dir.resolve(), out_dir.resolve()
    if out_root == in_root or in_root in out_root.parents:
        where = "the input folder" if out_root == in_root else "inside the input folder"
        raise BatchError(
            f"output folder {out_dir} is {where}",
            hint="choose an output folder outside the input folder; inputs are never replaced",
        )
    if out_root.exists() and not out_root.is_dir():
        raise BatchError(f"{out_dir} exists and is not a folder")
    return in_root, out_root


def _plan(found: list[tuple[Path, Path]], out_root: Path, job: Job) -> list[_Item]:
    items, claimed = [], {}
    inputs = {src.resolve() for src, _ in found}
    for src, rel in found:
        out = rel.with_suffix(job.output_suffix).as_posix()
        files = (out, *(out + s for s in job.extra_suffixes))
        refusal = None
        clash = next((claimed[f] for f in files if f in claimed), None)
        if clash is not None:
            refusal = f"its output {out} would also be the output of {clash}; rename one"
        elif any((out_root / f).resolve() in inputs for f in files):
            refusal = f"its output {out} would replace an input"
        else:
            claimed.update(dict.fromkeys(files, rel.as_posix()))
        items.append(_Item(src, rel.as_posix(), files, refusal))
    return items


def _prepare(item: _Item, out_root: Path, manifest: Manifest, inputs: set[Path],
             companions: tuple[str, ...]) -> _Task:
    """Decide skip / refuse / run for one input; mark the outputs as ours before running."""
    if item.refusal:
        return _Task(item, verdict="refused", reason=item.refusal)
    try:
        data = item.src.read_bytes()
        extra = {s: p.read_bytes() for s in companions
                 if (p := item.src.with_name(item.src.name + s)).is_file()}
    except OSError as exc:
        return _Task(item, verdict="refused", reason=f"cannot read: {exc.strerror}")
    sha = _digest(data, extra)
    last = manifest.state.last.get(item.rel)
    if last and last["kind"] == "item" and last["status"] == "ok":
        recorded = last["files"]
        current = {f: _sha_or_none(out_root / f) for f in recorded}
        if last["input_sha256"] == sha and list(recorded) == list(item.files):
            if current == recorded:
                return _Task(item, sha=sha, verdict="skip")
            changed = [f for f in recorded if current[f] not in (None, recorded[f])]
            if changed:
                return _Task(item, sha=sha, verdict="refused", reason=(
                    f"output {changed[0]} was changed after this batch wrote it; "
                    "delete it to redo this input"))
    for f in item.files:
        path = out_root / f
        if (path.exists() or path.is_symlink()) and f not in manifest.state.owned:
            return _Task(item, sha=sha, verdict="refused", reason=(
                f"{f} exists and was not written by this batch; move it away"))
        if path.exists() and path.resolve() in inputs:
            return _Task(item, sha=sha, verdict="refused", reason=f"{f} is an input")
    manifest.append({"kind": "start", "input": item.rel, "files": list(item.files)}, sync=False)
    return _Task(item, data=data, companions=extra, sha=sha)


def _settle(task: _Task, result: Produced | Refused | None, out_root: Path,
            manifest: Manifest) -> tuple[str, str]:
    """Write one result's files and its manifest line; return (status, detail)."""
    item = task.item
    if task.verdict == "skip":
        return "skipped", "already done"
    if task.verdict == "refused" or isinstance(result, Refused):
        reason = task.reason if task.verdict == "refused" else result.reason
        manifest.append({"kind": "item", "input": item.rel, "status": "refused",
                         "input_sha256": task.sha, "reason": reason})
        return "refused", reason
    assert isinstance(result, Produced)
    main = item.files[0]
    blobs = {main: result.data, **{main + suffix: b for suffix, b in result.extras}}
    if sorted(blobs) != sorted(item.files):
        raise TypeError(f"job {type(result).__name__} returned files {sorted(blobs)}, "
                        f"declared {sorted(item.files)}")
    try:
        for f in (*item.files[1:], main):  # the main output last: it marks completion
            path = out_root / f
            write_atomic(path, blobs[f], overwrite=path.exists() and f in manifest.state.owned)
    except OSError as exc:  # disk full, permissions: every later write would fail too
        raise BatchError(f"cannot write under {out_root}: {exc.strerror or exc}",
                         hint="free space or fix permissions, then rerun to resume") from None
    except TrustgainError as exc:  # e.g. OutputExistsError: a file appeared in the way
        manifest.append({"kind": "item", "input": item.rel, "status": "refused",
                         "input_sha256": task.sha, "reason": str(exc)})
        return "refused", str(exc)
    manifest.append({"kind": "item", "input": item.rel, "status": "ok", "input_sha256": task.sha,
                     "files": {f: hashlib.sha256(b).hexdigest() for f, b in blobs.items()},
                     "info": result.info, "warning": result.warning})
    return "ok", item.files[0]


def _execute_ray(tasks: Iterator[_Task], job: Job, address: str, workers: int | None
                 ) -> Iterator[tuple[_Task, Produced | Refused | None]]:
    """Run the tasks that need work as Ray tasks; yield results as they come back."""
    try:
        import ray
    except ImportError:
        raise BatchError("--ray needs the ray package", hint="pip install 'ray>=2.9'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False,
                     log_to_driver=False)
        else:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, TimeoutError, ValueError) as exc:  # no cluster there
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise BatchError(f"--ray={address}: cannot connect to a Ray cluster ({first})",
                                 hint="start one (ray start --head) or give a reachable "
                                      "ADDRESS; --ray without ADDRESS starts a local Ray"
                                 ) from None
    try:
        remote = ray.remote(num_cpus=1)(_run_in_worker)
        job_ref = ray.put(job)
        size = _chunk_size(job)
        window = (4 if size == 1 else 2) * max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: dict[Any, list[_Task]] = {}
        chunk: list[_Task] = []

        def submit() -> None:
            inputs = [(t.data, t.item.rel, t.companions) for t in chunk]
            pending[remote.remote(job_ref, inputs, size > 1)] = list(chunk)
            chunk.clear()

        for task in tasks:
            if task.data is None:
                yield task, None
                continue
            chunk.append(task)
            if len(chunk) >= size:
                submit()
            while len(pending) >= window:
                yield from _collect(ray, pending)
        if chunk:
            submit()
        while pending:
            yield from _collect(ray, pending)
    finally:
        if started_here:
            ray.shutdown()


def _chunk_size(job: Any) -> int:
    """Inputs per call: ``job.batch_size`` for jobs with ``call_many``, else 1."""
    return max(1, int(getattr(job, "batch_size", 1))) if hasattr(job, "call_many") else 1


def _collect(ray: Any, pending: dict[Any, list[_Task]]
             ) -> Iterator[tuple[_Task, Produced | Refused]]:
    ready, _ = ray.wait(list(pending), num_returns=1)
    for ref in ready:
        tasks = pending.pop(ref)
        try:
            results = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, TrustgainError):  # e.g. a ConfigError: one line, no trace
                raise exc.cause from None
            raise
        yield from zip(tasks, results, strict=True)


def _run_in_worker(job: Job, inputs: list[tuple[bytes, str, dict[str, bytes]]], many: bool
                   ) -> list[Produced | Refused]:
    """The Ray task body: one torch thread per worker (a worker is one CPU); a chunk of
    inputs through ``job.call_many``, or one input through ``job``."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return job.call_many(inputs) if many else [job(*inputs[0])]


def _digest(data: bytes, companions: dict[str, bytes]) -> str:
    """SHA-256 of the input; with companions, of each part's digest and name in turn."""
    if not companions:
        return hashlib.sha256(data).hexdigest()
    h = hashlib.sha256(hashlib.sha256(data).digest())
    for suffix in sorted(companions):
        h.update(suffix.encode() + b"\0" + hashlib.sha256(companions[suffix]).digest())
    return h.hexdigest()


def _remove_stale_temps(out_root: Path, owned: set[str]) -> None:
    """Delete temporary files that a crash left behind while writing this batch's outputs."""
    folders: dict[Path, set[str]] = {}
    for f in owned:
        path = out_root / f
        folders.setdefault(path.parent, set()).add(path.name)
    for folder, names in folders.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith(".") and name.endswith(".tmp") and entry.is_file():
                target = name[1:-4].rsplit(".", 1)[0]  # write_atomic: .{name}.{random}.tmp
                if target in names:
                    os.unlink(entry.path)


def _sha_or_none(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except (FileNotFoundError, IsADirectoryError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["BatchError", "Job", "Produced", "Refused", "Summary", "run_batch"]
