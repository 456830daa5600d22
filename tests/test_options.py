"""Command-line options and process faults (issue 38): every numeric option and every resource
is validated before use, edge values on purpose (0, negatives, 2**64 and beyond, NaN, +-inf,
exponent notation), each refusal one line with exit code 2; ``--scheduler`` is parsed and probed
within a timeout, whatever listens there; Ctrl-C is one line and exit code 130.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import make_dataset, one_line_failure, quick_first, run_specad

from specad.bounds import parse_sets
from specad.errors import SpecadError
from specad.fit import FitOptions
from specad.models.efficientad.config import load_config
from specad.synth import synthesize

EDGES = [-1, 2**64, 2**64 + 1, -(2**64), math.nan, math.inf, -math.inf]
"""Values every numeric option is tried with, 0 besides where it is not valid: none of them is a
valid count, size, seed, batch, rate or worker count."""
SMALL_SYNTH = {"size": 32, "n_train": 1, "n_val": 0, "n_test_good": 0, "n_test_anomalous": 1}
QUICK_DASK = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}
"""The scheduler's time to answer, lowered so that the listener tests take seconds."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("d") / "ds")


def _no_output(out: Path) -> None:
    """Neither the output nor a temporary sibling of it was left behind."""
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ---------------------------------------------------------------------------------- --scheduler


@pytest.mark.parametrize(
    "value",
    quick_first(
        ["bogus", "", "tcp://", "inproc://x", "foo://bar:1", "tcp://host:99999", "tcp://h:1/x"]
    ),
)
def test_scheduler_values_are_refused_in_one_line(value: str, tmp_path: Path) -> None:
    done = run_specad("evaluate", "rx", str(tmp_path), "--scheduler", value, timeout=60)
    one_line_failure(done, "scheduler", "tcp://HOST:PORT")


def test_tls_scheduler_without_dask_tls_settings_is_one_line(tmp_path: Path) -> None:
    done = run_specad("evaluate", "rx", str(tmp_path), "--scheduler", "tls://127.0.0.1:1")
    one_line_failure(done, "tls://", "TLS settings")


def test_scheduler_address_is_normalised() -> None:
    from specad.distributed import scheduler_address

    assert scheduler_address("127.0.0.1:8786") == "tcp://127.0.0.1:8786"
    assert scheduler_address(" tcp://node-1:8786 ") == "tcp://node-1:8786"
    assert scheduler_address("[::1]:8786") == "tcp://[::1]:8786"


@contextmanager
def _listener(answer: bytes | None) -> Iterator[str]:
    """A loopback TCP server that accepts and then sends ``answer`` (None: never speaks), for
    as long as the block runs; its address."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            held.append(conn)
            if answer is not None:
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for conn in held:
            conn.close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("answer", "needle"),
    quick_first(
        [
            (None, "no Dask handshake within 3 s"),
            (b"\xff" * 64, "not a Dask scheduler"),  # its length field claims 2**64 - 1 bytes
            (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a Dask scheduler"),
            ((40).to_bytes(8, "little") + b"\x00" * 40, "not a Dask scheduler"),  # a frame of junk
        ]
    ),
    ids=["silent", "garbage", "http", "junk-frame"],
)
def test_scheduler_that_is_not_dask_fails_within_its_timeout(
    answer: bytes | None, needle: str, tmp_path: Path
) -> None:
    """A peer that accepts but never speaks Dask, or answers garbage whose length field would
    make Dask allocate exabytes, is one line within the connect timeout (3 s here)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with _listener(answer) as address:
        start = time.monotonic()
        done = run_specad("evaluate", "rx", str(tmp_path), "--scheduler", address, env=QUICK_DASK)
        took = time.monotonic() - start
    one_line_failure(done, address, needle)
    assert took < 3 + 15, took  # the timeout and a command's start-up, not Dask's minutes
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child's
    if peak > before:  # this command was the largest child so far
        assert peak < 1 << 20, peak


def test_probe_accepts_a_real_scheduler() -> None:
    from distributed import Scheduler

    from specad.distributed import probe_scheduler

    async def probe() -> None:
        async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as scheduler:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, probe_scheduler, scheduler.address, 10.0)

    asyncio.run(probe())


# -------------------------------------------------------------------------- --workers, --device


def test_too_many_workers_is_one_line_with_the_bound(tmp_path: Path) -> None:
    done = run_specad("evaluate", "rx", str(tmp_path), "--workers", "1000", timeout=60)
    one_line_failure(done, "workers 1000", "usable cores", "GiB available")


@pytest.mark.parametrize("count", [0, *EDGES, True, 1.5, "2"])
def test_worker_counts_out_of_bounds_are_refused(count: object) -> None:
    from specad.distributed import check_workers

    with pytest.raises(SpecadError, match="this machine runs 1.."):
        check_workers(count)  # type: ignore[arg-type]
    assert check_workers(1) == 1


@pytest.mark.parametrize(
    "device", quick_first(["mps", "meta", "xla", "cpu:5", "CUDA", "", "cuda:x"])
)
def test_devices_this_build_cannot_use_are_one_line(device: str, tmp_path: Path) -> None:
    done = run_specad("evaluate", "rx", str(tmp_path), "--device", device, timeout=60)
    one_line_failure(done, "device", "auto, cpu, cuda")


def test_a_cuda_device_that_is_not_here_is_one_line() -> None:
    import torch

    from specad.runtime import pick_device

    with pytest.raises(SpecadError, match="CUDA"):
        pick_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(SpecadError, match="CUDA"):
        pick_device(f"cuda:{2**64}")
    assert pick_device("cpu").type == "cpu"


@pytest.mark.parametrize("key", ["train.device", "train.seed", "train.batch_size", "train.lr"])
@pytest.mark.parametrize("value", ["mps", "-1", "18446744073709551616", ".nan", "-.inf", "1e999"])
def test_training_settings_are_validated_before_any_data(key: str, value: str) -> None:
    """``train.*`` from ``--set``: each edge value (wrong for every one of these keys) is one
    line naming the key, before the dataset (which does not exist) is looked at."""
    with pytest.raises(SpecadError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={value}"], data={"root": "/nonexistent"})


def test_fit_options_refuse_non_finite_rates_and_devices() -> None:
    for raw in ({"far": math.nan}, {"far": math.inf}, {"device": "meta"}, {"device": 3}):
        with pytest.raises(SpecadError, match="--set"):
            FitOptions.split(raw)


# ------------------------------------------------------------------------------------ seeds


@pytest.mark.parametrize("seed", quick_first(["-1", str(2**64)]))
def test_synth_seed_out_of_range_is_one_line(seed: str, tmp_path: Path) -> None:
    done = run_specad("synth", "--out", str(tmp_path / "s"), "--seed", seed, timeout=60)
    one_line_failure(done, "seed")
    _no_output(tmp_path / "s")


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "3", math.nan])
def test_synth_seed_is_validated_in_the_api(seed: object, tmp_path: Path) -> None:
    with pytest.raises(SpecadError, match="seed"):
        synthesize(tmp_path / "s", seed=seed, **SMALL_SYNTH)  # type: ignore[arg-type]
    _no_output(tmp_path / "s")


def test_the_largest_seed_works(tmp_path: Path) -> None:
    synthesize(tmp_path / "s", seed=2**64 - 1, **SMALL_SYNTH)
    cfg = load_config(None, [f"train.seed={2**64 - 1}"], data={"root": str(tmp_path)})
    assert cfg.train.seed == 2**64 - 1


@pytest.mark.parametrize("model", ["knn", "rx"])
@pytest.mark.parametrize("seed", quick_first(["-1", str(2**64)]))
def test_fit_seed_out_of_range_is_one_line(
    model: str, seed: str, tiny: Path, tmp_path: Path
) -> None:
    done = run_specad("fit", model, str(tiny), "--out", str(tmp_path / "m"),
                      "--set", f"seed={seed}", timeout=60)  # fmt: skip
    one_line_failure(done, f"{model} seed: Input should be", seed)
    _no_output(tmp_path / "m")


# ------------------------------------------------------------------------------------ synth


@pytest.mark.parametrize(
    ("setting", "values"),
    [
        ("size", [0, *EDGES, 31, 100_000, 64.0, "64", True]),
        ("difficulty", [0, *EDGES, 1e-3, 1e3, "1", None]),
        ("fov_mm", [0, *EDGES, 1e6]),
        ("n_train", [*EDGES, 2.0, 10**6]),
        ("anomaly_mix", [{"water": math.nan}, {"water": math.inf}, {"water": -1.0}, ["water"]]),
    ],
)
def test_synth_settings_out_of_bounds_are_refused_before_writing(
    setting: str, values: list, tmp_path: Path
) -> None:
    for value in values:
        with pytest.raises(SpecadError, match=setting):
            synthesize(tmp_path / "s", **(SMALL_SYNTH | {setting: value}))
        _no_output(tmp_path / "s")


@pytest.mark.parametrize("args", quick_first([["--size", "100000"], ["--difficulty", "nan"],
                                  ["--difficulty", "inf"], ["--difficulty", "-inf"],
                                  ["--size", "1e3"], ["--difficulty", "1e-9"]]))  # fmt: skip
def test_synth_options_are_one_line_and_write_nothing(args: list[str], tmp_path: Path) -> None:
    done = run_specad("synth", "--out", str(tmp_path / "s"), *args, timeout=60)
    one_line_failure(done, args[0].removeprefix("--"))
    _no_output(tmp_path / "s")


def test_synth_difficulty_in_exponent_notation_works(tmp_path: Path) -> None:
    done = run_specad("synth", "--out", str(tmp_path / "s"), "--size", "32",
                      "--difficulty", "2e0", timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ --set: numbers, image_size


def test_set_reads_exponent_notation_as_numbers() -> None:
    sets = parse_sets(["sigma=1e-3", "a=1E3", "b=-2.5e-3", "c=+4e+2", "d=0.001", "e=1e999"])
    assert sets == {"sigma": 0.001, "a": 1000.0, "b": -0.0025, "c": 400.0, "d": 0.001,
                    "e": math.inf}  # fmt: skip
    assert parse_sets(["name=e3", "v=1e", "w=1.2.3"]) == {"name": "e3", "v": "1e", "w": "1.2.3"}


def test_image_size_zero_fits_at_the_cubes_own_size(tiny: Path, tmp_path: Path) -> None:
    """0 is "the cube's own size": knn fitted so on 64 px cubes equals knn fitted at 64 px, and
    ``--set sigma=1e-3`` is the number it means."""
    import json

    from specad.inference import Detector

    sets = ["--set", "sigma=1e-3", "--set", "coreset_size=64", "--set", "max_patches=2000"]
    for size in (0, 64):
        out = tmp_path / f"m{size}"
        done = run_specad("fit", "knn", str(tiny), "--out", str(out), "--set",
                          f"image_size={size}", *sets, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
    det = Detector.load(tmp_path / "m0")
    assert (det.meta.preprocess.image_size, det.model.sigma) == (0, 0.001)
    metrics = [
        json.loads(run_specad("evaluate", str(tmp_path / f"m{s}"), str(tiny), "--json").stdout)
        for s in (0, 64)
    ]
    assert metrics[0]["image_auroc"] == pytest.approx(metrics[1]["image_auroc"])
    assert metrics[0]["pixel_auroc"] == pytest.approx(metrics[1]["pixel_auroc"], abs=1e-6)


# ------------------------------------------------------------------- batch size and memory


def test_a_huge_training_batch_is_one_line_before_any_data(tmp_path: Path) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(f"data: {{root: {tmp_path / 'ds'}}}\n")
    start = time.monotonic()
    done = run_specad("train", "-c", str(config), "--out", str(tmp_path / "run"),
                      "--set", "train.batch_size=100000", timeout=60)  # fmt: skip
    one_line_failure(done, "train.batch_size", "1024")
    assert time.monotonic() - start < 30
    assert not (tmp_path / "run").exists()


def test_a_batch_that_needs_more_memory_than_the_device_has_is_refused() -> None:
    from specad.models.efficientad.ddp import Ranks
    from specad.models.efficientad.train_loop import check_step_memory

    with pytest.raises(SpecadError, match=r"train.batch_size 1024 at 1024 px needs about \d+"):
        check_step_memory("medium", (1024, 1024), 1024, 6, Ranks())
    check_step_memory("small", (64, 64), 1, 6, Ranks())  # what the tests train with: fine


@pytest.mark.parametrize(
    "args",
    quick_first([["--lr", "nan"], ["--lr", "inf"], ["--lr", "-1"], ["--image-size", str(2**64)],
     ["--batch-size", "100000"], ["--batch-size", "0"], ["--steps", "-1"], ["--steps", "1e3"]]),
)  # fmt: skip
def test_distill_options_are_one_line(args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "t.safetensors"
    done = run_specad("teacher", "distill", "--out", str(out), *args, timeout=60)
    one_line_failure(done, args[0])
    assert not out.exists()


@pytest.mark.parametrize(
    "args", quick_first([["--channels", "0"], ["--channels", str(2**64)],
             ["--wavelengths", "1,abc"], ["--wavelengths", "nan,1"], ["--wavelengths", "-5,1"]]),
)  # fmt: skip
def test_teacher_adapt_options_are_one_line(args: list[str], tmp_path: Path) -> None:
    base = {"--channels": "2", "--wavelengths": None} | dict([args])
    flags = [x for k, v in base.items() if v is not None for x in (k, v)]
    out = tmp_path / "t.safetensors"
    done = run_specad("teacher", "adapt", str(tmp_path / "x.pth"), "--out", str(out), *flags)
    one_line_failure(done, args[0].removeprefix("--"))
    assert not out.exists()


def test_a_bad_command_line_is_one_line_naming_the_help() -> None:
    for args in (["no-such-command"], ["evaluate"], ["synth", "--out", "x", "--no-such-flag"]):
        one_line_failure(run_specad(*args, timeout=60), "--help")


# ----------------------------------------------------------------------------------- SIGINT


def _interrupt(
    args: list[str], ready: Callable[[], bool], cwd: Path
) -> subprocess.CompletedProcess:
    """Start ``specad ARGS``, wait until ``ready()`` shows it at its work (its imports done),
    send SIGINT, and return how it ended."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "specad", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _one_interrupted_line(done: subprocess.CompletedProcess) -> None:
    """Exit code 130 and ``interrupted`` as the one line besides progress and notes."""
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "error:" not in done.stderr, done.stderr
    assert done.stderr.rstrip().splitlines()[-1] == "interrupted", done.stderr
    assert done.stderr.count("interrupted") == 1, done.stderr


def test_sigint_during_synth_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "data"
    started = lambda: any(tmp_path.glob(".data.*.part/train/good/*.tif"))  # noqa: E731
    done = _interrupt(["synth", "--out", str(out), "--size", "128"], started, tmp_path)
    _one_interrupted_line(done)
    assert done.stderr == "interrupted\n"
    _no_output(out)


def test_sigint_during_training_is_one_line(tiny: Path, tmp_path: Path) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(f"data: {{root: {tiny}, image_size: 64}}\ntrain: {{steps: 100000}}\n")
    run = tmp_path / "run"
    done = _interrupt(["train", "-c", str(config), "--out", str(run), "--device", "cpu"],
                      (run / "metrics.jsonl").exists, tmp_path)  # fmt: skip
    _one_interrupted_line(done)
