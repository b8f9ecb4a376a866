"""The one place that decides the torch device and dtype."""
from __future__ import annotations

import re
import sys

import torch

from superpos.errors import ConfigError, SuperposError

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
    if spec is not None and not isinstance(spec, str):
        raise SuperposError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
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
    if re.fullmatch(r"cuda(:[0-9]{1,4})?", spec):
        if not torch.cuda.is_available():
            raise ConfigError("device", f"{{field}} {spec} requested but no CUDA device is available (use cpu or auto)")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError("device", f"{{field}} {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise SuperposError(f"unknown device {spec!r} (expected auto, cpu, cuda or cuda:N)")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU of compute capability 8.0 or later
    (Ampere on), or a CPU with AVX512-BF16 or AMX (read from /proc/cpuinfo; elsewhere, no). Where it does not,
    torch emulates bfloat16 and it is slower than float32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """A dtype name (float32, bfloat16, float16) as a torch dtype; ``auto``: bfloat16 where ``device`` runs it
    natively (``native_bfloat16``), float32 elsewhere."""
    if isinstance(name, torch.dtype):
        return name
    if name.lower() == "auto":
        return torch.bfloat16 if native_bfloat16(device or torch.device("cpu")) else torch.float32
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise SuperposError(f"unknown dtype '{name}' (expected one of {', '.join(sorted(set(DTYPES)))})") from None


_kept_freed_memory = False
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_GLIBC_MMAP_MAX = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit


def keep_freed_memory() -> bool:
    """On glibc, let freed CPU tensors' memory be reused instead of handed back to the kernel.

    torch's CPU allocator is plain malloc: a training step frees and re-allocates (latents × d) gradients of
    tens of MB, glibc returns them to the kernel (mmap/trim), and every step pays the page faults again —
    measured as 10–20 ms of ``fill_``/``mul`` on a 9,216 × 576 step. Raising the mmap and trim thresholds (what
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` or jemalloc/tcmalloc do for torch on CPU) keeps that
    memory mapped; the cost is that the process keeps its peak heap. Called once by CPU training and by CPU harvests
    (each batch frees its residuals); a no-op elsewhere. Returns whether the setting took."""
    global _kept_freed_memory
    if _kept_freed_memory or not sys.platform.startswith("linux"):
        return _kept_freed_memory
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        _kept_freed_memory = bool(libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_MAX)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, …): leave malloc alone
        _kept_freed_memory = False
    return _kept_freed_memory
