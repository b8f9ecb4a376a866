"""The one place that decides the torch device and dtype."""
from __future__ import annotations

import sys

import torch

from .errors import ConfigError, SuperposError

_said_cpu_fallback = False

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → CUDA when present (else CPU, said once); ``cpu``; ``cuda``/``cuda:N`` (must exist)."""
    global _said_cpu_fallback
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if not _said_cpu_fallback:
            print("superpos: no CUDA device found, running on CPU", file=sys.stderr)
            _said_cpu_fallback = True
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device", f"{{field}} {spec} requested but no CUDA device is available (use cpu or auto)")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError("device", f"{{field}} {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise SuperposError(f"unknown device '{spec}' (expected auto, cpu, cuda or cuda:N)")


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """A dtype name (float32, bfloat16, float16) as a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise SuperposError(f"unknown dtype '{name}' (expected one of {', '.join(sorted(set(DTYPES)))})") from None
