"""Where and how a model runs: the device, and what this CPU can do fast.

``auto`` picks CUDA when present. Which runtime is fastest on a CPU is measured
(`specad.export.measure_runtimes`); the CPU features here are the fallback where nothing was
measured, and decide what is worth measuring.
"""

from __future__ import annotations

from pathlib import Path

import torch

from specad.errors import SpecadError

RUNTIMES = ("auto", "torch", "bf16", "onnx", "int8", "numpy")
"""How maps can be computed; each detector class lists those that apply to it."""


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present, else CPU; ``name`` (e.g. ``cpu``, ``cuda:1``) overrides."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SpecadError(f"unknown device '{name}'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecadError(f"device '{name}' requested but CUDA is not available")
    return device


def _cpuinfo(field: str) -> str:
    """A field of the first CPU in /proc/cpuinfo ('' where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return ""
    for line in cpuinfo.read_text().splitlines():
        if line.startswith(field):
            return line.partition(":")[2].strip()
    return ""


def _cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def cpu_has_amx() -> bool:
    """AMX tiles make bf16 convolutions several times faster than fp32; AVX-512 bf16 alone
    measured slower than fp32 (benchmarks/results-intel-avx512-vnni.md), so only AMX earns bf16
    by default."""
    return "amx_bf16" in _cpu_flags()


def cpu_has_vnni() -> bool:
    """VNNI int8 dot products: the int8 export ran 2.5x faster than the fp32 one with them."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & _cpu_flags())


def cpu_has_native_bf16() -> bool:
    """bf16 arithmetic in hardware; without it bf16 is emulated and far slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def cpu_model() -> str:
    """The CPU's model name, as runtime measurements record it."""
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_speed_flags() -> list[str]:
    """The CPU flags that decide which runtime can be fast, as measurements record them."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    flags = _cpu_flags()
    return [f for f in wanted if f in flags]
