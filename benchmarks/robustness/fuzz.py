"""Long fuzz run of every reader, every parameter entry point and the CLI's options: cases
tried, any failure.

    .venv/bin/python benchmarks/robustness/fuzz.py [--cases 2000] [--targets synth,tiff] [--jobs 2]
        [--results FILE]

Readers (``fuzzing.py``): valid seed files, truncated, bit-flipped, overwritten, spliced
or replaced by random bytes. Entry points (``fuzz_models.py``, issue 30): generated
``--set`` items for ``fit`` (every detector fitted on a dataset) and ``train``, and mutated
``model.json`` and saved tensors of a model of every registered detector, loaded and, where
they load, run on a small cube. These run in this process; the only allowed outcome is a result
or specad's one-line error, and the peak RSS of the process is printed.

The CLI (``fuzz_cli.py``, issue 38): ``synth`` options, ``scene`` parameters,
``--device``, ``--scheduler``, ``--workers`` and clashing input file names, with edge values
drawn on purpose, each command line run as ``specad`` runs it by worker processes
(``fuzz_runner.py``), bounded in time and memory. A traceback, an exit code other than 0
or 2, more than one ``error:`` line, a changed input, two inputs sharing a map, or JSON that is
not strict fails the case; every failing case is printed. Peak RSS is the command's process and
its process tree. Exit status 1 if any target failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import fuzz_cli as fc
import fuzz_models as fm
from fuzz_runner import Result, Runner, run_cases
from fuzzing import TARGETS, Target, check_one, mutated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specad.models.registry import DETECTORS, fit_on_dataset_names, read_file

FAILURES = Path(__file__).resolve().parents[1] / "out" / "fuzz-failures"


def fuzz(
    name: str, strategy: st.SearchStrategy, check: Callable[[Path, Any], object], cases: int
) -> tuple[int, str | None]:
    """Run up to ``cases`` generated cases; returns how many ran and the first failure, if any."""
    count = 0

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(case: Any) -> None:
        nonlocal count
        count += 1
        tmp = Path(tempfile.mkdtemp())
        try:
            check(tmp, case)
        except BaseException:
            keep = FAILURES / f"{name}-{count}.txt"
            keep.parent.mkdir(parents=True, exist_ok=True)
            # the error and the input, to reproduce the failure
            keep.write_text(traceback.format_exc() + "\n" + repr(_brief(case))[:100_000])
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    try:
        run()
    except Exception as err:  # noqa: BLE001 - reported, then the next target runs
        first = err.exceptions[0] if isinstance(err, BaseExceptionGroup) else err
        return count, "".join(traceback.format_exception_only(first)).strip()[:300]
    return count, None


def _brief(case: Any) -> Any:
    """The case with each tensor as its shape, dtype and range: a network's weights are long."""
    if isinstance(case, dict):
        return {k: _brief(v) for k, v in case.items()}
    if isinstance(case, list | tuple):
        return type(case)(_brief(v) for v in case)
    if hasattr(case, "dtype") and hasattr(case, "shape") and hasattr(case, "numel"):
        values = case.double()
        span = f" {values.min().item()}..{values.max().item()}" if case.numel() else ""
        return f"tensor{tuple(case.shape)} {case.dtype}{span}"
    return case


def reader_target(target: Target) -> tuple[st.SearchStrategy, Callable[[Path, Any], object]]:
    seeds_dir = Path(tempfile.mkdtemp())
    seeds = target.seeds(seeds_dir)
    shutil.rmtree(seeds_dir)
    return mutated(seeds), lambda tmp, data: check_one(target, tmp, data)


def entry_targets(models: dict[str, Path]) -> dict[str, tuple[st.SearchStrategy, Callable]]:
    """The parameter entry points: fit ``--set``, train ``--set``, and per detector its
    ``model.json`` and its saved tensors."""
    fits = st.sampled_from(fit_on_dataset_names()).flatmap(
        lambda kind: fm.set_items(fm.detector_keys(kind)).map(lambda items: (kind, items))
    )
    keys = ["data.image_size", "data.channels", "train.steps", "model.teacher", "train.lr", "x"]
    targets = {
        "fit-parameters": (fits, lambda tmp, case: fm.check_fit_sets(*case)),
        "overrides": (fm.set_items(keys), fm.check_train_sets),
    }
    for kind in DETECTORS:
        folder = models[kind]
        doc = json.loads((folder / "model.json").read_text())
        metadata, tensors = read_file(folder / "model.safetensors")

        def with_json(tmp: Path, mutated: dict, folder: Path = folder) -> None:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
            (tmp / "model.json").write_text(json.dumps(mutated))
            fm.check_model(tmp)

        def with_state(tmp: Path, state: tuple[dict, dict], folder: Path = folder) -> None:
            shutil.copy(folder / "model.json", tmp)
            fm.write_state(tmp, *state)
            fm.check_model(tmp)

        targets[f"model.json:{kind}"] = (fm.mutated_json(doc), with_json)
        targets[f"tensors:{kind}"] = (fm.mutated_state(fm.State(tensors, metadata)), with_state)
    return targets


def in_process(names: list[str], entries: list[str], cases: int) -> tuple[list[str], int]:
    """Run the reader and entry-point targets ``names`` in this process: their table rows
    (the lifetime peak RSS last), and how many targets failed."""
    targets = {t.name: reader_target(t) for t in TARGETS if t.name in names}
    if any(n in entries for n in names):
        targets |= entry_targets(fm.saved_models(Path(tempfile.mkdtemp())))
    failed = 0
    rows = ["| target | cases | seconds | peak RSS MB | result |", "|---|---:|---:|---:|---|"]
    print(f"{'target':<24} {'cases':>7} {'seconds':>8} {'peak MB':>8}  result", flush=True)
    for name in names:
        strategy, check = targets[name]
        fm.reset_peak_rss()  # each target's own peak, the process's memory before it included
        t0 = time.perf_counter()
        count, failure = fuzz(name, strategy, check, cases)
        result = "ok" if failure is None else f"FAILED: {failure}"
        failed += failure is not None
        seconds = time.perf_counter() - t0
        peak = fm.peak_rss_mb(growth=False)
        print(f"{name:<24} {count:>7} {seconds:>8.1f} {peak:>8.0f}  {result}", flush=True)
        rows.append(f"| {name} | {count} | {seconds:.0f} | {peak:.0f} | {result} |")
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"lifetime peak RSS {lifetime:.0f} MB", flush=True)
    return [*rows, "", f"Lifetime peak RSS: {lifetime:.0f} MB."], failed


CLI_HEADER = [
    "| target | cases | seconds | peak RSS MB | peak tree MB | tracebacks | failures | result |",
    "|---|---:|---:|---:|---:|---:|---:|---|",
]


def cli_fuzz(names: list[str], args: argparse.Namespace) -> tuple[list[str], int]:
    """Run the CLI targets ``names``: their table rows, and how many targets failed."""
    rows, failed = [], 0
    print(f"{'target':<18} {'cases':>6} {'seconds':>8} {'peak MB':>8} {'tree MB':>8}  result")
    root = Path(tempfile.mkdtemp(prefix="specad-fuzz-"))
    try:
        with fc.fixture(root) as fx, Runner(root, args.jobs, args.case_timeout, args.max_mb) as r:
            strategies = fc.targets(fx)
            for name in names:
                cases = fc.draw_cases(strategies[name], args.cases, seed=args.seed)
                row, bad = cli_target(name, run_cases(root, r, cases, fx.write_inputs))
                rows.append(row)
                failed += bad
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return CLI_HEADER + rows, failed


def cli_target(name: str, results: Iterable[Result]) -> tuple[str, bool]:
    """Count one CLI target's cases as they finish, printing each failure: its table row, and
    whether any case failed."""
    t0, count, peak, tree, bad = time.perf_counter(), 0, 0.0, 0.0, []
    for result in results:
        count += 1
        peak = max(peak, result.outcome.peak_mb)
        tree = max(tree, result.outcome.tree_mb)
        if result.failure is not None:
            bad.append(result.failure)
            _report(name, count, result)
    seconds = time.perf_counter() - t0
    tracebacks = sum(b.startswith("traceback") for b in bad)
    outcome = f"FAILED: {bad[0]}"[:200] if bad else "ok"
    print(
        f"{name:<18} {count:>6} {seconds:>8.1f} {peak:>8.0f} {tree:>8.0f}  "
        f"{len(bad)} failures ({tracebacks} tracebacks) {outcome}",
        flush=True,
    )
    row = (
        f"| {name} | {count} | {seconds:.0f} | {peak:.0f} | {tree:.0f} | {tracebacks} | "
        f"{len(bad)} | {outcome.replace('|', '/')} |"
    )
    return row, bool(bad)


def _report(name: str, number: int, result: Result) -> None:
    """Print a failing CLI case, and keep it with its output under `FAILURES`."""
    text = f"{result.failure}\n  {result.case.shown()}"
    print(f"FAIL {name} #{number}: {text}", flush=True)
    keep = FAILURES / f"{name}-{number}.txt"
    keep.parent.mkdir(parents=True, exist_ok=True)
    output = result.outcome.stderr[-4000:] + result.outcome.stdout[-2000:]
    keep.write_text(f"{text}\n\n{output}", errors="backslashreplace")


def machine() -> str:
    """The commit, CPU, cores, versions and thread setting a table was recorded with."""
    import torch

    info: dict[str, str] = {}
    with contextlib.suppress(OSError), Path("/proc/cpuinfo").open() as f:
        for line in f:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    flags = info.get("flags", "").split()
    simd = next((f for f in ("avx512f", "avx2", "avx") if f in flags), "no AVX")
    cpu = info.get("model name", platform.machine())
    family = f"family {info.get('cpu family', '?')} model {info.get('model', '?')}"
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return (
        f"{commit or 'no git'}, {cpu} ({family}, {simd}), {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, OMP_NUM_THREADS={threads}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per target")
    parser.add_argument(
        "--targets", "--only", default="", help="comma-separated target names (default: all)"
    )
    parser.add_argument("--results", type=Path, help="append the table (markdown) here")
    parser.add_argument("--jobs", type=int, default=1, help="CLI cases run at once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CLI cases")
    parser.add_argument(
        "--case-timeout", type=float, default=60.0, help="seconds a CLI case may run"
    )
    parser.add_argument(
        "--max-mb", type=float, default=1024.0, help="resident MB a CLI command may use"
    )
    args = parser.parse_args()
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # millions of lines otherwise
    warnings.simplefilter("ignore")  # thresholds of tiny models, guessed layouts: not failures
    entries = ["fit-parameters", "overrides"]
    entries += [f"{part}:{kind}" for kind in DETECTORS for part in ("model.json", "tensors")]
    known = [t.name for t in TARGETS] + entries + list(fc.NAMES)
    only = [n for n in args.targets.split(",") if n] or known  # in this order
    unknown = [n for n in only if n not in known]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(known)}")
    here = [n for n in only if n not in fc.NAMES]
    rows, failed = in_process(here, entries, args.cases) if here else ([], 0)
    cli = [n for n in only if n in fc.NAMES]
    cli_rows, cli_failed = cli_fuzz(cli, args) if cli else ([], 0)
    failed += cli_failed
    if args.results:
        when = datetime.date.today().isoformat()
        lines = [f"Run of {when} on {machine()}: `{' '.join(sys.argv[1:])}`", ""]
        lines += [*rows, ""] if here else []
        lines += [*cli_rows, ""] if cli else []
        with args.results.open("a") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
