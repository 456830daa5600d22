"""Long fuzz run of every reader and every parameter entry point: cases tried, any failure.

    .venv/bin/python benchmarks/fuzz.py [--cases 10000] [--only tiff,npy] [--results FILE]

Readers (``tests/fuzzing.py``): valid seed files, truncated, bit-flipped, overwritten, spliced
or replaced by random bytes. Entry points (``tests/fuzz_models.py``, issue 30): generated
``--set`` items for ``fit`` (every detector fitted on a dataset) and ``train``, and mutated
``model.json`` and saved tensors of a model of every registered detector, loaded and, where
they load, run on a small cube. The only allowed outcome is a result or specad's one-line error;
the peak RSS of the process is printed. Exit status 1 if any target failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzz_models as fm  # noqa: E402
from fuzzing import TARGETS, Target, check_one, mutated  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from specad.models.registry import DETECTORS, FIT_ON_DATASET, read_file  # noqa: E402

FAILURES = Path(__file__).resolve().parent / "out" / "fuzz-failures"


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
    fits = st.sampled_from(FIT_ON_DATASET).flatmap(
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per target")
    parser.add_argument("--only", default="", help="comma-separated target names")
    parser.add_argument("--results", type=Path, help="append the table (markdown) here")
    args = parser.parse_args()
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # millions of lines otherwise
    warnings.simplefilter("ignore")  # thresholds of tiny models, guessed layouts: not failures
    only = [n for n in args.only.split(",") if n]  # in this order
    targets = {t.name: reader_target(t) for t in TARGETS}
    if not only or any(":" in n or n in ("fit-parameters", "overrides") for n in only):
        targets |= entry_targets(fm.saved_models(Path(tempfile.mkdtemp())))
    unknown = [n for n in only if n not in targets]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(targets)}")
    failed = 0
    rows = ["| target | cases | seconds | peak RSS MB | result |", "|---|---:|---:|---:|---|"]
    print(f"{'target':<24} {'cases':>7} {'seconds':>8} {'peak MB':>8}  result", flush=True)
    for name in only or targets:
        strategy, check = targets[name]
        fm.reset_peak_rss()  # each target's own peak, the process's memory before it included
        t0 = time.perf_counter()
        count, failure = fuzz(name, strategy, check, args.cases)
        result = "ok" if failure is None else f"FAILED: {failure}"
        failed += failure is not None
        seconds = time.perf_counter() - t0
        peak = fm.peak_rss_mb(growth=False)
        print(f"{name:<24} {count:>7} {seconds:>8.1f} {peak:>8.0f}  {result}", flush=True)
        rows.append(f"| {name} | {count} | {seconds:.0f} | {peak:.0f} | {result} |")
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"lifetime peak RSS {lifetime:.0f} MB", flush=True)
    if args.results:
        with args.results.open("a") as f:
            f.write("\n".join([*rows, "", f"Lifetime peak RSS: {lifetime:.0f} MB.", ""]) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
