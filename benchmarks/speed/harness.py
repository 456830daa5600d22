"""Measurement plumbing shared by both benchmark sides.

It imports neither specad nor anomalib, so the same code times both, each in its own venv: any
difference in the numbers then comes from the models, not from how they were measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

SIZE = 256  # image side of every case, as in the paper
OUT = Path(__file__).resolve().parents[1] / "out"  # benchmarks/out, shared and git-ignored
RESULT_TAG = "BENCH-RESULT "  # marks the child's result line among whatever else it prints
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16")

Case = dict[str, Any]  # task, model, path, channels, batch: JSON-friendly for the child's argv
Prepare = Callable[[Case], Callable[[], object]]


def case(task: str, model: str, path: str, channels: int, batch: int) -> Case:
    return {"task": task, "model": model, "path": path, "channels": channels, "batch": batch}


def label(c: Case) -> str:
    return f"{c['model']} {c['path']} {c['channels']}ch {c['task']} b{c['batch']}"


def random_images(batch: int, channels: int, seed: int) -> torch.Tensor:
    """Inputs from numpy's generator, so both venvs (different torch versions) see equal pixels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((batch, channels, SIZE, SIZE), dtype=np.float32))


def set_threads() -> int:
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs torch counts for one call (convolutions and matmuls, backward included)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def time_calls(fn: Callable[[], object], reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def matmul_peak(n: int = 2048) -> dict[str, float]:
    """Best GFLOP/s of an n x n matmul per dtype: the ceiling for the models' GFLOP/s.

    bf16 only where the CPU computes it natively: elsewhere torch emulates it, single-threaded,
    and one 2048^3 product took minutes (an AVX2-only EPYC), so it is not measured.
    """
    peaks = {}
    dtypes = [("fp32", torch.float32)]
    if set(NATIVE_BF16) & set(machine()["cpu_flags"]):
        dtypes.append(("bf16", torch.bfloat16))
    for name, dtype in dtypes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        best = min(time_calls(lambda a=a, b=b: a @ b, reps=10, warmup=2))
        peaks[name] = 2 * n**3 / best / 1e9
    return peaks


def cpu_family(info: dict[str, Any]) -> str:
    """A file-name key for results per CPU family, e.g. ``intel-avx512-vnni`` or ``amd-avx2``."""
    cpu = info["cpu"].lower()
    vendor = "intel" if "intel" in cpu else "amd" if "amd" in cpu else "cpu"
    flags = info["cpu_flags"]
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
    extras = [x for x in ("vnni", "amx") if any(x in f for f in flags)]
    return "-".join([vendor, isa, *extras])


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in cpuinfo.splitlines())
    }
    flags = fields.get("flags", "").split()
    return {
        "cpu": fields.get("model name") or platform.processor(),
        "cpu_id": " ".join(
            f"{k} {fields.get(k, '?')}" for k in ("cpu family", "model", "stepping")
        ),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_case(c: Case, prepare: Prepare, reps: int, warmup: int) -> dict[str, Any]:
    """Build, count, time. The FLOP count doubles as a first, untimed warm-up call.

    A step may carry ``flop_reference``, a torch call doing the same arithmetic, for runtimes
    the counter cannot see (onnxruntime), and ``runtime``, the name of what it ran.
    """
    threads = set_threads()
    base = peak_rss_mb()
    step = prepare(c)
    flops = count_flops(getattr(step, "flop_reference", step))
    step()
    times = time_calls(step, reps, warmup)
    return {
        **c,
        "runtime": getattr(step, "runtime", c["path"]),
        "threads": threads,
        "times_s": times,
        "median_s": statistics.median(times),
        "flops": flops,
        "rss_base_mb": base,
        "rss_peak_mb": peak_rss_mb(),
    }


def _run_child(script: str, c: Case, reps: int, warmup: int) -> dict[str, Any]:
    """One case in a fresh interpreter, so peak RSS belongs to that case alone."""
    cmd = [sys.executable, script, "--case", json.dumps(c)]
    cmd += ["--reps", str(reps), "--warmup", str(warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {**c, "error": f"exit {proc.returncode}: {tail[0]}"}


def main(side: str, script: str, cases: list[Case], prepare: Prepare) -> None:
    """CLI of a side: run every case in a child process and write ``out/<side>.json``."""
    parser = argparse.ArgumentParser(description=f"Speed benchmark, {side} side.")
    parser.add_argument("--reps", type=int, default=7, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--match", default="", help="only cases whose label contains this")
    parser.add_argument("--out", type=Path, default=OUT / f"{side}.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # set by the parent for its children
    args = parser.parse_args()
    if args.case:
        result = run_case(json.loads(args.case), prepare, args.reps, args.warmup)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    set_threads()
    info = machine() | {"side": side, "matmul_peak_gflops": matmul_peak()}
    results = []
    chosen = [c for c in cases if args.match in label(c)]
    native_bf16 = bool(set(NATIVE_BF16) & set(info["cpu_flags"]))
    for i, c in enumerate(chosen, 1):
        print(f"{side}: [{i}/{len(chosen)}] {label(c)} ...", file=sys.stderr, flush=True)
        if "bf16" in c["path"] and not native_bf16:  # emulated: minutes per call, says nothing
            result = {**c, "error": "skipped: no native bf16 on this CPU"}
        else:
            result = _run_child(script, c, args.reps, args.warmup)
        results.append(result)
        shown = result.get("error") or f"{result['median_s'] * 1e3:.1f} ms"
        print(f"{side}: {label(c)}: {shown}", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info | {"cases": results}, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
