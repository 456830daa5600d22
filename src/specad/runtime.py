"""Where and how a model runs: the device, and what this CPU can do fast.

``auto`` picks CUDA when present. Which runtime is fastest on a CPU is measured
(`specad.export.measure_runtimes`); the CPU features here are the fallback where nothing was
measured, and decide what is worth measuring.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import torch
from pydantic import AfterValidator

from specad.errors import SpecadError

RUNTIMES = ("auto", "torch", "bf16", "onnx", "int8", "numpy")
"""How maps can be computed; each detector class lists those that apply to it."""


DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
"""What ``--device`` (and ``train.device``, ``--set device=``) may name: specad runs on CPUs and
CUDA GPUs; torch's other device types (mps, meta, xla ...) are not ones its models support."""


def check_device_name(name: str) -> str:
    """``name`` if it is one `DEVICE_NAME` allows (whether that device is here is
    `pick_device`'s to say), else a `ValueError` saying what is allowed."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise ValueError(
            f"device {str(name)[:40]!r} is not one specad runs on: auto, cpu, cuda, cuda:N"
        )
    return name


DeviceName = Annotated[str, AfterValidator(check_device_name)]
"""auto, cpu, cuda or cuda:N (`DEVICE_NAME`), in a config or ``--set``; whether it is here is
checked when the run starts."""


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present, else CPU; ``name`` (``cpu``, ``cuda``, ``cuda:1``) overrides. A device
    this machine does not have is a one-line `SpecadError`."""
    try:
        check_device_name(name)
    except ValueError as err:
        raise SpecadError(str(err)) from err
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SpecadError(f"device '{name}' requested but CUDA is not available")
    index, count = int(name.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise SpecadError(
            f"device '{name}' requested but this machine has {count} CUDA device(s) "
            f"(cuda:0..cuda:{count - 1})"
        )
    return torch.device(name)


def available_memory(device: torch.device | None = None) -> int:
    """Bytes that can still be allocated on ``device`` (default: host memory): free GPU memory,
    or the host's available memory, less where a cgroup (a container's limit) allows less."""
    if device is not None and device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = _meminfo_kib("MemAvailable") * 1024
    if not free:  # no /proc/meminfo: the free pages the OS reports
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit == "max":
            return free
        return min(free, max(0, int(limit) - int((cgroup / "memory.current").read_text())))
    except (OSError, ValueError):  # no cgroup v2 limit here
        return free


def _meminfo_kib(field: str) -> int:
    """A field of /proc/meminfo in KiB (0 where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


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
    measured slower than fp32 (benchmarks/speed/results-intel-avx512-vnni.md), so only AMX earns
    bf16 by default."""
    return "amx_bf16" in _cpu_flags()


def cpu_has_vnni() -> bool:
    """VNNI int8 dot products: with them the int8 export runs faster than the fp32 one
    (benchmarks/speed/results-intel-avx512-vnni.md)."""
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
