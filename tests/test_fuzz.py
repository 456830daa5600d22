"""Every reader under mutated bytes, and the CLI's options and input names under generated
values: specad's own one-line error, or a result; never a crash.

A bounded number of cases per reader and per CLI target (seconds);
``benchmarks/robustness/fuzz.py`` runs thousands.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fuzz_cli as fc
import pytest
from conftest import checksums, run_specad
from fuzz_runner import Case, Outcome, Runner, judge, run_cases
from fuzzing import TARGETS, Target, check_one, mutated
from hypothesis import HealthCheck, given, settings


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_reader_survives_mutated_files(target: Target) -> None:
    seeds_dir = Path(tempfile.mkdtemp())
    seeds = target.seeds(seeds_dir)
    shutil.rmtree(seeds_dir)

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated(seeds))
    def run(data: bytes) -> None:
        tmp = Path(tempfile.mkdtemp())
        try:
            check_one(target, tmp, data)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    run()


def test_seeds_are_valid_inputs() -> None:
    """The fuzz starts from files each reader accepts, so mutations test real parsing."""
    for target in TARGETS:
        for seed in target.seeds(Path(tempfile.mkdtemp())):
            tmp = Path(tempfile.mkdtemp())
            assert target.feed(tmp, seed) is not None, target.name


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[fc.Fixture, Runner]]:
    """The CLI fuzz's data and one worker process, shared by the tests below."""
    root = tmp_path_factory.mktemp("cli-fuzz")
    with fc.fixture(root) as fx, Runner(root) as runner:
        yield fx, runner


@pytest.mark.parametrize("name", fc.NAMES)
def test_generated_command_lines_end_in_a_result_or_one_line(
    cli: tuple[fc.Fixture, Runner], name: str
) -> None:
    """A dozen generated command lines per CLI target (edge values drawn on purpose): exit 0 or
    2, no traceback, one ``error:`` line, inputs unchanged, one map per input, strict JSON.
    ``benchmarks/robustness/fuzz.py`` runs thousands, slow ones (live loopback schedulers, local
    clusters) included."""
    fx, runner = cli
    cases = fc.draw_cases(fc.targets(fx, quick=True)[name], 12, seed=0)
    assert len(cases) == 12
    results = run_cases(fx.root, runner, cases, fx.write_inputs)
    failures = [f"{r.failure}\n  {r.case.shown()}" for r in results if r.failure is not None]
    assert not failures, "\n".join(failures)


def test_a_worker_runs_a_command_as_the_cli_does(
    cli: tuple[fc.Fixture, Runner], tmp_path: Path
) -> None:
    """The fuzz's in-process runs stand for the command: same exit code, same ``error:`` lines
    and same output as ``python -m specad``, for a refusal, a bad parameter, a device (a
    traceback too, if there is one) and a success."""
    fx, runner = cli
    lines = [
        ("synth", "--out", str(tmp_path / "s"), "--size", "0"),
        ("scene", fx.scene_cubes[0], "--detector", "lrx", "--param", "lrx.outer=4"),
        ("predict", str(fx.rx), str(fx.cube), "--out", str(tmp_path / "o"), "--device", "meta"),
        ("dataset", "check", str(fx.dataset)),
    ]
    here = dict(runner.run((i, list(argv), tmp_path) for i, argv in enumerate(lines)))
    for i, argv in enumerate(lines):
        done = run_specad(*argv, timeout=120, cwd=tmp_path)
        ran = here[i]
        assert ran.code == done.returncode, (argv, ran.stderr, done.stderr)
        assert _errors(ran.stderr) == _errors(done.stderr)
        assert ("Traceback" in ran.stderr) == ("Traceback" in done.stderr)
        if done.returncode == 0:
            assert ran.stdout == done.stdout


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_the_judge_fails_each_broken_promise(tmp_path: Path) -> None:
    """What the CLI fuzz counts as a failure: a traceback, another exit code, two ``error:``
    lines, a slow refusal, NaN in JSON, a changed input, and two inputs sharing a map."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.tif").write_bytes(b"cube")
    before = checksums(tmp_path / "in")
    case = Case(("scene", "x.tif", "--json"))
    fine = Outcome(0, stdout='{"auroc": null}')
    assert judge(case, fine, tmp_path, before) is None
    assert judge(case, Outcome(2, stderr="error: x.tif: bad\n"), tmp_path, before) is None
    broken = {
        "traceback: ValueError: no": Outcome(1, stderr="Traceback (most recent call last):\n"
                                                       '  File "x.py"\nValueError: no\n'),
        "exit 1": Outcome(1),
        "exit 2 with 2 'error:' lines": Outcome(2, stderr="error: a\nerror: b\n"),
        "refused only after 31 s": Outcome(2, stderr="error: a\n", seconds=31),
        "--json printed something that is not strict JSON": Outcome(0, stdout='{"a": NaN}'),
    }  # fmt: skip
    for expected, outcome in broken.items():
        assert judge(case, outcome, tmp_path, before) == expected
    out = tmp_path / "out"
    (out / "maps").mkdir(parents=True)
    for name in ("x.tif", "X.tif"):
        (out / "maps" / name).write_bytes(b"map")
    rows = ["file,map,score,anomalous,threshold", "in/x.tif,maps/x.tif,1,0,2"]
    (out / "scores.csv").write_text("\n".join([*rows, "in/X.tif,maps/X.tif,1,0,2"]) + "\n")
    two = Case(("predict",), ("x.tif", "X.tif"), expect=2)
    assert judge(two, Outcome(0), tmp_path, before) == "two inputs share a map name (up to case)"
    (tmp_path / "in" / "x.tif").write_bytes(b"changed")
    assert judge(case, fine, tmp_path, before) == "an input file changed or vanished"
