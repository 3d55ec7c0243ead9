"""``metadata.jsonl`` of an image folder (Hugging Face ``imagefolder``), read safely.

One JSON object per line, ``{"file_name": "0001.png", "text": "a red seven"}``. Shared by
DP fine-tuning (every line needs a caption) and the membership audit (captions optional).
The ``datasets`` library reads the same layout but copies it into a cache and does not
refuse names that leave the folder; the checks here are what a privacy tool needs.
"""

from __future__ import annotations

import json
from pathlib import Path

from trustgain.digest import short_repr
from trustgain.errors import InputError

METADATA = "metadata.jsonl"
_HINT = 'each line: {"file_name": "x.png", "text": "a caption"}'


def read_metadata(folder: Path, *, need_text: bool) -> list[tuple[Path, str, str]]:
    """``(path, file_name, text)`` per line of ``folder/metadata.jsonl``, in file order.

    Refused with the line number: text that is not UTF-8, a line that is not a JSON object,
    a missing or non-string ``file_name`` (or ``text`` when ``need_text``), a name that
    points outside ``folder`` (``../x``, an absolute path, a symlink leading out), and a
    name listed twice (each image is one record, the unit differential privacy protects).
    """
    meta = folder / METADATA
    try:
        # "\n" only: str.splitlines() also breaks at U+2028/U+2029/U+0085, legal inside JSON
        lines = [line.rstrip("\r") for line in meta.read_text(encoding="utf-8").split("\n")]
    except UnicodeDecodeError:
        raise InputError(f"{meta}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{meta}: not readable ({exc.strerror or exc})") from None
    root = folder.resolve()
    seen: dict[str, int] = {}
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{meta}:{n}"
        try:
            row = json.loads(line)
        except ValueError:
            raise InputError(f"{where}: not a JSON object", hint=_HINT) from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: not a JSON object", hint=_HINT)
        name = row.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}: 'file_name' must be a non-empty string", hint=_HINT)
        text = row.get("text", None if need_text else "")
        if not isinstance(text, str):
            missing = "missing" if text is None else "not a string"
            raise InputError(f"{where}: 'text' is {missing}", hint=_HINT)
        path = (folder / name).resolve()
        if root not in path.parents:
            raise InputError(f"{where}: {short_repr(name)} points outside {folder}")
        key = str(path)
        if key in seen:
            raise InputError(
                f"{where}: {short_repr(name)} is listed again (first on line {seen[key]})",
                hint="list each image once: each image is one record",
            )
        seen[key] = n
        rows.append((path, name, text))
    return rows
