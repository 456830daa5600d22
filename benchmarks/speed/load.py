"""``specad fit knn`` on the shared MVTec transistor set, idle and with one core kept busy by
another process: does specad's thread choice hold up on a shared machine?

Each fit is a fresh process, timed from start to exit; the busy core is a spinning Python
process started just before and stopped just after (bounded by ``--spin-limit``). Usage::

    .venv/bin/python benchmarks/speed/load.py [--repeats 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "mvtec_transistor"
SPIN = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end:\n"
    "    pass"
)


def fit(data: Path, out: Path, threads: int | None) -> float:
    command = [sys.executable, "-m", "specad"]
    command += ["--threads", str(threads)] if threads else []
    command += ["fit", "knn", str(data), "--out", str(out), "--force"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="pass --threads N (default: specad's choice)")
    parser.add_argument("--spin-limit", type=float, default=600.0)
    args = parser.parse_args()
    print(json.dumps(harness.machine()), flush=True)
    with tempfile.TemporaryDirectory(prefix="specad-load-") as tmp:
        data = Path(tmp, "transistor")  # specad's layout (the shared copy is PNG photographs)
        subprocess.run(
            [sys.executable, "-m", "specad", "dataset", "import", str(DATA), "--out", str(data)],
            check=True,
            capture_output=True,
        )
        for _ in range(args.repeats):
            idle = fit(data, Path(tmp, "knn"), args.threads)
            time.sleep(1)
            spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(args.spin_limit)])
            try:
                time.sleep(0.5)
                busy = fit(data, Path(tmp, "knn"), args.threads)
            finally:
                spinner.kill()
                spinner.wait()
            row = {"idle_s": idle, "one_core_busy_s": busy, "ratio": round(busy / idle, 2)}
            print(json.dumps(row), flush=True)
            time.sleep(1)


if __name__ == "__main__":
    main()
