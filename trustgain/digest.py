"""Canonical encodings and SHA-256 digests of requests, outputs and items.

Canonical JSON is RFC 8785 (JCS) through the ``rfc8785`` package, so any JCS implementation
can recompute a signed record's bytes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
import rfc8785
from PIL import Image

from trustgain.errors import ConfigError


def canonical_json(value: Any) -> bytes:
    """RFC 8785 bytes of a JSON value; raises ConfigError for values JSON cannot hold."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ConfigError(f"value is not canonical JSON: {exc}") from None


class StrictJSONError(ValueError):
    """JSON that parsers may read differently: a duplicated key, NaN or Infinity."""


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"duplicate key {short_repr(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not JSON")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` for signed or secret-bearing files, refusing what parsers disagree on.

    Python keeps the last of duplicated keys, other parsers the first: a signed file read
    two ways must not verify, so duplicates raise :class:`StrictJSONError`, as do ``NaN`` and
    ``Infinity`` (not JSON; no RFC 8785 form). Other errors are ``json.loads``'s own.
    """
    return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant)


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr`` of an untrusted value for a one-line message: escaped and cut short."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sha256_hex(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def pixels_sha256(image: Image.Image) -> str:
    """Digest of decoded pixels (mode, size, raw bytes): survives lossless re-encoding."""
    header = f"image:{image.mode}:{image.width}x{image.height}:".encode()
    return sha256_hex(header, image.tobytes())


def output_sha256(output: Any) -> str:
    """Digest of one generator output: a PIL image, an array or tensor, or text."""
    if isinstance(output, Image.Image):
        return pixels_sha256(output)
    if _is_tensor(output):
        output = output.detach().cpu().contiguous().numpy()
    if isinstance(output, np.ndarray):
        array = np.ascontiguousarray(output)
        return sha256_hex(f"array:{array.dtype.str}:{array.shape}:".encode(), array.tobytes())
    if isinstance(output, str):
        return sha256_hex(b"text:", output.encode("utf-8"))
    raise ConfigError(f"cannot digest an output of type {type(output).__name__}")


def outputs_sha256(outputs: Iterable[Any]) -> list[str]:
    return [output_sha256(o) for o in outputs]


def item_sha256(item: Any) -> str:
    """Digest of everything a stage may change in an item (request, latents, hooks, outputs)."""
    parts = [canonical_json(item.request.to_dict())]
    if item.latents is not None:
        parts.append(output_sha256(item.latents).encode())
    parts.append(
        ",".join(f"{h.stage}:{'+'.join(h.tensor_inputs)}" for h in item.step_hooks).encode()
    )
    parts.extend(d.encode() for d in outputs_sha256(item.outputs))
    parts.append(canonical_json(_jsonable(dict(item.notes))))
    return sha256_hex(*parts)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else str(value)
    if isinstance(value, np.ndarray) or _is_tensor(value):
        return output_sha256(value)
    return repr(value)


def _is_tensor(value: Any) -> bool:
    """A torch tensor, without importing torch (a tensor exists only once torch is imported):
    keeps ``import trustgain`` and the CLI's start-up free of torch's import time."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)
