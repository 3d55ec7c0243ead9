"""Surrogates on disk: ``<name>.safetensors`` per model plus ``surrogates.json``, written file
by file (:func:`save`) or as a whole new folder swapped into place (:func:`save_folder`, after
:func:`check_output`), and read back (:func:`load`, :func:`load_named`).

Part of :mod:`trustgain.protection.surrogates`, which re-exports its public names.
"""

from __future__ import annotations

import errno
import json
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trustgain.errors import InputError, OutputExistsError, OutputWriteError, TrustgainError
from trustgain.fileio import write_atomic, write_folder
from trustgain.protection.archs import make_net
from trustgain.protection.surrogates_adapters import Classifier, wrap

CONFIG_NAME = "surrogates.json"


def _files(models: dict[str, Classifier], meta: dict[str, Any]) -> dict[str, bytes]:
    """What :func:`save` writes: ``<name>.safetensors`` per model, then ``surrogates.json``."""
    from safetensors.torch import save

    files, entries = {}, {}
    for name, model in models.items():
        state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
        files[f"{name}.safetensors"] = save(state)
        entries[name] = {"arch": name.split("-")[0], "file": f"{name}.safetensors"}
    doc = {"format": "trustgain.surrogates", "version": 1, "models": entries, **meta}
    files[CONFIG_NAME] = (json.dumps(doc, indent=2) + "\n").encode()
    return files


def save(models: dict[str, Classifier], folder: str | Path, *, meta: dict[str, Any],
         overwrite: bool = False) -> Path:
    """Write ``<name>.safetensors`` per model and ``surrogates.json`` (architectures, classes)
    into ``folder``, each file atomically, ``surrogates.json`` last; other files there stay.

    Without ``overwrite`` nothing is written when any of these files exists. To replace a
    whole surrogates folder at once (never a mix of old and new files), use
    :func:`save_folder`.
    """
    folder = Path(folder)
    files = _files(models, meta)
    if not overwrite:
        for name in files:
            if (folder / name).exists():
                raise OutputExistsError(folder / name)
    for name, data in files.items():
        write_atomic(folder / name, data, overwrite=overwrite)
    return folder


def _ours(name: str) -> bool:
    """A file a surrogates folder holds: models, the config, an interrupted write's temp file."""
    return (name == CONFIG_NAME or name.endswith(".safetensors")
            or (name.startswith(".") and name.endswith(".tmp")))


def _exists_error(folder: Path) -> OutputExistsError:
    err = OutputExistsError(folder)
    err.hint = "choose another folder, or pass --force to replace it"
    return err


def check_output(folder: str | Path, *, replace: bool = False) -> None:
    """Refuse now, before any training, an output folder :func:`save_folder` could not write:
    a file in the way, a folder holding anything but surrogates (never replaced), existing
    surrogates without ``replace``, or a place this process may not write."""
    folder = Path(folder).resolve()
    if folder.exists():
        if not folder.is_dir():
            raise TrustgainError(f"{folder} is a file, not a folder",
                                 hint="choose a folder path for -o")
        try:
            names = sorted(p.name for p in folder.iterdir())
        except OSError as exc:
            raise OutputWriteError(folder, exc) from None
        foreign = [n for n in names if not _ours(n)]
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise TrustgainError(
                f"{folder} holds files that are not surrogates ({', '.join(foreign[:3])}{more}); "
                "refusing to replace it", hint="choose a new or empty folder for -o")
        if names and not replace:
            raise _exists_error(folder)
        base = folder.parent
    else:
        base = next(p for p in folder.parents if p.exists())
        if not base.is_dir():
            raise OutputWriteError(folder, NotADirectoryError(
                errno.ENOTDIR, f"{base} is a file, not a folder"))
    try:  # the only reliable test of writability (ACLs, read-only mounts, root): try it
        probe = base / f".{folder.name}.{secrets.token_hex(4)}.probe"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise OutputWriteError(folder, exc) from None


def save_folder(models: dict[str, Classifier], folder: str | Path, *, meta: dict[str, Any],
                replace: bool = False) -> Path:
    """Write the surrogates as a whole new ``folder``: into a hidden sibling folder first,
    then renamed into place, so a reader (or a crash, a full disk, Ctrl-C) never sees a mix
    of old and new files. With ``replace`` an existing surrogates folder is swapped out (a
    folder holding other files is always refused; see :func:`check_output`)."""
    folder = Path(folder).resolve()
    check_output(folder, replace=replace)
    files = _files(models, meta)

    def write(tmp: Path) -> None:
        for name, data in files.items():
            write_atomic(tmp / name, data)

    # check again just before the swap: the folder may have changed while we trained
    write_folder(folder, write, replace=replace,
                 check=lambda: check_output(folder, replace=replace))
    return folder


def load(folder: str | Path) -> list[Classifier]:
    """Surrogates saved by :func:`save`, wrapped and in eval mode."""
    return list(load_named(folder).values())


def load_named(folder: str | Path, names: Iterable[str] | None = None
               ) -> dict[str, Classifier]:
    """Like :func:`load`, keyed by the names they were saved under; with ``names``, only
    those of them the folder holds (the other files are not read). A folder whose files do
    not fit its ``surrogates.json`` raises :class:`~trustgain.errors.InputError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    hint = "train surrogates with python -m trustgain.protection.surrogates"
    try:
        doc = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder} holds no readable {CONFIG_NAME} ({exc})", hint=hint) from None
    try:
        n_classes, channels = int(doc["n_classes"]), int(doc.get("channels", 3))
        entries = [(name, e["arch"], e["file"]) for name, e in doc["models"].items()]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(f"{folder / CONFIG_NAME} is not a surrogates file (it needs models "
                         "and n_classes)", hint=hint) from None
    if names is not None:
        wanted = set(names)
        entries = [e for e in entries if e[0] in wanted]
    models = {}
    for name, arch, file in entries:
        net = make_net(arch, n_classes, channels)
        try:
            net.load_state_dict(load_file(str(folder / file)))
        except (OSError, SafetensorError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{folder / file} does not fit {CONFIG_NAME} ({arch}, {n_classes} "
                             f"classes, {channels} channels): {first}", hint=hint) from None
        models[name] = wrap(arch, net, channels)
    return models
