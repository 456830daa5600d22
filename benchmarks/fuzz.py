"""Long fuzz run of every reader: prints the cases tried per reader and any failure.

    .venv/bin/python benchmarks/fuzz.py [--cases 10000] [--only tiff,npy]

The targets and mutations are those of ``tests/test_fuzz.py`` (``tests/fuzzing.py``): valid seed
files, truncated, bit-flipped, overwritten, spliced or replaced by random bytes. The only allowed
outcome is a result or specad's one-line error. Exit status 1 if any reader failed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzzing import TARGETS, Target, check_one, mutated  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

FAILURES = Path(__file__).resolve().parent / "out" / "fuzz-failures"


def fuzz(target: Target, cases: int) -> tuple[int, str | None]:
    """Run up to ``cases`` cases; returns how many ran and the first failure, if any."""
    seeds_dir = Path(tempfile.mkdtemp())
    seeds = target.seeds(seeds_dir)
    shutil.rmtree(seeds_dir)
    count = 0

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated(seeds))
    def run(data: bytes) -> None:
        nonlocal count
        count += 1
        tmp = Path(tempfile.mkdtemp())
        try:
            check_one(target, tmp, data)
        except BaseException:
            keep = FAILURES / f"{target.name}-{count}.bin"
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_bytes(data)  # the input, to reproduce the failure
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    try:
        run()
    except Exception:  # noqa: BLE001 - reported, then the next reader runs
        return count, traceback.format_exc(limit=3).strip().splitlines()[-1]
    return count, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per reader")
    parser.add_argument("--only", default="", help="comma-separated reader names")
    args = parser.parse_args()
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # millions of lines otherwise
    only = {n for n in args.only.split(",") if n}
    failed = 0
    print(f"{'reader':<18} {'cases':>7} {'seconds':>8}  result", flush=True)
    for target in TARGETS:
        if only and target.name not in only:
            continue
        t0 = time.perf_counter()
        count, failure = fuzz(target, args.cases)
        result = "ok" if failure is None else f"FAILED: {failure}"
        failed += failure is not None
        print(
            f"{target.name:<18} {count:>7} {time.perf_counter() - t0:>8.1f}  {result}", flush=True
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
