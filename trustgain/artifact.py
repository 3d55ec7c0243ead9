"""The result of a trusted generation: outputs, encoded files with the record, the record."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from trustgain.digest import output_sha256, pixels_sha256, sha256_hex
from trustgain.errors import ConfigError, InputError, OutputExistsError
from trustgain.fileio import write_atomic
from trustgain.provenance import embed
from trustgain.provenance.record import SignedRecord
from trustgain.provenance.verify import sidecar_path
from trustgain.types import GenerationRequest

if TYPE_CHECKING:
    from trustgain.provenance.credentials import ContentCredentials

FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
TEXT = "text/plain"
_SUFFIXES = {"image/png": (".png",), "image/jpeg": (".jpg", ".jpeg"), TEXT: (".txt", ".md")}


@dataclass(frozen=True)
class EncodedFile:
    """One output as a file: an image with its signed record embedded, or UTF-8 text (whose
    record can only be the sidecar)."""

    media_type: str
    data: bytes
    #: Which output of the record this file is (outputs that are not files are skipped).
    output_index: int | None = None


@dataclass(frozen=True)
class Artifact:
    outputs: tuple[Any, ...]
    record: SignedRecord
    files: tuple[EncodedFile, ...] = ()
    #: The request as finally run (after PREPARE/SCHEDULE stages, with the seed drawn).
    request: GenerationRequest | None = None

    @property
    def images(self) -> list[Image.Image]:
        return [o for o in self.outputs if isinstance(o, Image.Image)]

    @property
    def texts(self) -> list[str]:
        return [o for o in self.outputs if isinstance(o, str)]

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        index: int = 0,
        overwrite: bool = False,
        sidecar: bool = True,
        credentials: ContentCredentials | None = None,
    ) -> Path:
        """Write file ``index`` with its embedded record, and the record beside it.

        A text output is written as UTF-8; its record goes only beside it (``sidecar`` must
        stay on), since a text file has nowhere to embed one. ``credentials``: also add C2PA
        Content Credentials to an image (:mod:`trustgain.provenance.credentials`).
        """
        if isinstance(index, bool) or not isinstance(index, int):
            raise ConfigError(f"index must be an integer, not {index!r}")
        if not self.files:
            raise ConfigError("this artifact has no encodable outputs (output_type was not 'pil')")
        if not 0 <= index < len(self.files):
            raise ConfigError(
                f"index {index} out of range; the artifact has {len(self.files)} files"
            )
        file = self.files[index]
        path = Path(path)
        if file.media_type == TEXT and not sidecar:
            raise ConfigError("a text output's record can only be its sidecar; keep sidecar=True")
        if path.suffix.lower() not in _SUFFIXES[file.media_type]:
            raise ConfigError(
                f"{path.name}: an {file.media_type} output needs a "
                f"{' or '.join(_SUFFIXES[file.media_type])} file name"
            )
        side = sidecar_path(path)
        for target in (path, side) if sidecar else (path,):  # checked first: never half a
            if target.is_dir():                                # pair written
                raise ConfigError(f"{target} is a folder; a file goes there")
        if sidecar and side.exists() and not overwrite:
            raise OutputExistsError(side)
        if credentials is not None and file.media_type == TEXT:
            raise ConfigError("Content Credentials are for images; a text output has its "
                              "sidecar record")
        data = file.data if credentials is None else credentials.sign(file.data)
        write_atomic(path, data, overwrite=overwrite)
        if sidecar:
            at = index if file.output_index is None else file.output_index
            text = self.record.to_json(at, indent=2) + "\n"
            write_atomic(side, text.encode("utf-8"), overwrite=overwrite)
        elif overwrite and side.is_file():
            side.unlink()  # it described the file just replaced, not this one
        return path


def encode_outputs(
    outputs: Sequence[Any], output_format: str, jpeg_quality: int
) -> tuple[list[bytes | None], list[dict[str, Any]]]:
    """Encode image outputs and compute what the record binds for every output.

    Images get ``file_sha256`` (the encoded bytes, before the record is embedded) and
    ``pixels_sha256`` (the decoded pixels of those bytes); text gets ``file_sha256`` of its
    UTF-8 bytes (the file :meth:`Artifact.save` writes) and ``sha256``; other outputs a
    ``sha256``.
    """
    if output_format not in FORMATS:
        raise ConfigError(f"unknown output format '{output_format}'; known: {', '.join(FORMATS)}")
    files: list[bytes | None] = []
    entries: list[dict[str, Any]] = []
    for i, output in enumerate(outputs):
        if isinstance(output, str):
            data = output.encode("utf-8")
            files.append(data)
            entries.append({"index": i, "media_type": TEXT, "file_sha256": sha256_hex(data),
                            "sha256": output_sha256(output)})
            continue
        if not isinstance(output, Image.Image):
            files.append(None)
            entries.append({"index": i, "sha256": output_sha256(output)})
            continue
        buf = io.BytesIO()
        if output_format == "png":
            output.save(buf, format="PNG")
        else:
            output.convert("RGB").save(buf, format="JPEG", quality=jpeg_quality)
        data = buf.getvalue()
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()
            pixels = pixels_sha256(decoded)
        files.append(data)
        entries.append(
            {
                "index": i,
                "media_type": FORMATS[output_format],
                "file_sha256": sha256_hex(data),
                "pixels_sha256": pixels,
            }
        )
    return files, entries


def attach_record(files: Sequence[bytes | None], signed: SignedRecord) -> tuple[EncodedFile, ...]:
    out = []
    for i, data in enumerate(files):
        if data is None:
            continue
        try:
            kind = embed.media_type(data)
        except InputError:  # text: the record goes beside it when saved
            out.append(EncodedFile(TEXT, data, i))
            continue
        out.append(EncodedFile(kind, embed.embed(data, signed.to_json(i)), i))
    return tuple(out)
