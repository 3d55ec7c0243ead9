"""Is a torch device usable here? One answer for the CLI and the benchmarks, given before any
model loads, instead of torch's "Torch not compiled with CUDA enabled" traceback later."""

from __future__ import annotations


def device_problem(value: str) -> str | None:
    """Why ``value`` is not a torch device this machine can use, or None when it is."""
    if value == "cpu":
        return None
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        return f"'{value}' is not a torch device (cpu, cuda, cuda:1, mps)"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"'{value}': this torch build or machine has no CUDA GPU; use cpu"
        if device.index is not None and device.index >= count:
            return f"'{value}': this machine has {count} CUDA GPU(s)"
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else (
            f"'{value}': Apple MPS is not available here; use cpu")
    if device.type == "cpu":
        return None
    return f"'{value}': trustgain runs on cpu, cuda or mps"
