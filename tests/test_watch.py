"""`specad watch`: every cube that arrives is scored exactly once, whether it is renamed in or
written in place slowly, across `kill -9` and restarts; SIGTERM ends it with one line; `--done`
moves cubes out. Real processes on a temporary inbox with a tiny RX model, bounded in time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import one_line_failure, run_specad
from PIL import Image

from specad.inference import Detector
from specad.io import Cube, read_cube, write_cube
from specad.line import Watcher
from specad.line.journal import VERDICTS, Journal
from specad.metrics.drift import DriftMonitor

DEADLINE = 90.0
"""Seconds any one wait in these tests may take before it fails: a loaded CI machine included."""


def cubes(root: Path) -> list[Path]:
    """The tiny dataset's test cubes, normal and anomalous."""
    return sorted((root / "test").rglob("*.tif"))


def lines(out: Path) -> list[dict]:
    path = out / VERDICTS
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def wait_for(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def rename_in(source: Path, inbox: Path, name: str) -> None:
    """A writer that renames: the partial file has a hidden name, the rename completes it."""
    part = inbox / f".{name}.part"
    shutil.copyfile(source, part)
    os.rename(part, inbox / name)


def write_slowly(source: Path, target: Path, pieces: int = 4, pause: float = 0.3) -> None:
    """A camera that writes in place: the cube appears partial and grows, pausing between."""
    data = source.read_bytes()
    step = len(data) // pieces + 1
    with open(target, "wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            time.sleep(pause)


@contextmanager
def watching(model: Path, inbox: Path, out: Path, *extra: str) -> Iterator[subprocess.Popen]:
    """`specad watch` in a process of its own; killed if a test leaves it running."""
    cmd = [sys.executable, "-m", "specad", "watch", str(model), str(inbox), "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=DEADLINE)


def stop(proc: subprocess.Popen, sig: signal.Signals = signal.SIGTERM) -> tuple[str, str]:
    """Send ``sig`` and check the promised ending: exit 0, one line on stdout, no traceback."""
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, stdout + stderr
    assert "Traceback" not in stderr, stderr
    assert len(stdout.splitlines()) == 1, stdout
    assert stdout.startswith(f"stopped ({sig.name})"), stdout
    return stdout, stderr


def assert_once(out: Path, names: list[str]) -> list[dict]:
    """Each name has exactly one verdict line, and there are no others."""
    records = lines(out)
    got = [r["file"] for r in records]
    assert sorted(got) == sorted(names), (sorted(got), sorted(names))
    return records


def test_renamed_and_slowly_written_cubes_are_each_scored_once(
    tiny_rx: Path, tiny_root: Path, tmp_path: Path
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    sources = cubes(tiny_root)
    with watching(tiny_rx, inbox, out, "--settle", "1.5") as proc:
        for i, src in enumerate(sources[:4]):
            rename_in(src, inbox, f"r{i}.tif")
        writers = [
            threading.Thread(target=write_slowly, args=(src, inbox / f"s{i}.tif"))
            for i, src in enumerate(sources[4:6])
        ]
        for w in writers:
            w.start()
        for w in writers:
            w.join(timeout=DEADLINE)
        wait_for(lambda: len(lines(out)) >= 6, "six verdicts")
        time.sleep(1.0)  # time to score anything twice, were it to
        _, stderr = stop(proc)
    assert "skipped" not in stderr, stderr
    names = [f"r{i}.tif" for i in range(4)] + ["s0.tif", "s1.tif"]
    records = assert_once(out, names)
    det = Detector.load(tiny_rx)
    truth = dict(zip(names, sources[:6], strict=True))
    for rec in records:
        assert "error" not in rec, rec  # a partial file was never read
        want = det.predict(read_cube(truth[rec["file"]]))
        assert rec["score"] == pytest.approx(want.score, rel=1e-5)
        assert rec["anomalous"] == (want.score >= det.threshold)
        assert rec["verdict"] == ("anomalous" if rec["anomalous"] else "normal")
        assert rec["threshold"] == pytest.approx(det.threshold)
        assert (out / rec["map"]).is_file() and (out / rec["overlay"]).is_file()
    assert {r["file"] for r in records if r["anomalous"]}, "no anomalous cube among the test set"


def test_maps_and_overlays_are_the_ones_predict_writes(
    tiny_rx: Path, tiny_root: Path, tmp_path: Path
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    src = next(p for p in cubes(tiny_root) if p.parent.name != "good")
    rename_in(src, inbox, "cube.tif")
    watcher = Watcher(Detector.load(tiny_rx), inbox, out, settle=0.2)
    with background(watcher):
        wait_for(lambda: len(lines(out)) == 1, "the verdict")
    run_specad("predict", str(tiny_rx), str(src), "--out", str(tmp_path / "pred"), check=True)
    pred = tmp_path / "pred"
    np.testing.assert_array_equal(
        tifffile.imread(out / "maps" / "cube.tif"),
        tifffile.imread(pred / "maps" / f"{src.stem}.tif"),
    )
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "overlays" / "cube.png")),
        np.asarray(Image.open(pred / "overlays" / f"{src.stem}.png")),
    )


def test_kill_9_mid_run_then_restart_loses_nothing_and_repeats_nothing(
    tiny_rx: Path, tiny_root: Path, tmp_path: Path
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    sources = cubes(tiny_root)
    names = []
    with watching(tiny_rx, inbox, out, "--settle", "0.5") as proc:
        for i in range(3):
            rename_in(sources[i % len(sources)], inbox, f"a{i:02d}.tif")
            names.append(f"a{i:02d}.tif")
        wait_for(lambda: len(lines(out)) == 3, "the first verdicts")
        for i in range(30):  # a burst, killed while it is being scored
            rename_in(sources[i % len(sources)], inbox, f"b{i:02d}.tif")
            names.append(f"b{i:02d}.tif")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
    before = {r["file"] for r in lines(out)}
    assert len(before) < len(names), "the kill came after everything was scored"
    for i in range(3):  # cubes that arrive while it is down
        rename_in(sources[i], inbox, f"c{i:02d}.tif")
        names.append(f"c{i:02d}.tif")
    # a kill in the middle of writing a line: the torn line must not count, nor stay
    with open(out / VERDICTS, "a") as f:
        f.write('{"file": "c00.tif", "size": 1')
    with watching(tiny_rx, inbox, out, "--settle", "0.5") as proc:
        wait_for(lambda: len(lines(out)) >= len(names), "every verdict after the restart")
        time.sleep(1.0)
        stop(proc, signal.SIGINT)
    assert_once(out, names)
    assert (out / VERDICTS).read_text().endswith("\n")


def test_a_torn_last_line_is_cut_and_its_cube_is_not_done(tmp_path: Path) -> None:
    good = {"file": "a.tif", "size": 3, "mtime_ns": 7, "score": 1.0}
    (tmp_path / VERDICTS).write_text(json.dumps(good) + "\n" + '{"file": "b.tif", "si')
    journal = Journal(tmp_path).open()
    try:
        assert {k.file for k in journal.done} == {"a.tif"}
        assert (tmp_path / VERDICTS).read_text() == json.dumps(good) + "\n"
    finally:
        journal.close()


def test_a_journal_line_that_is_not_a_verdict_is_one_line(tmp_path: Path) -> None:
    (tmp_path / VERDICTS).write_text("not json\n")
    with pytest.raises(Exception, match=r"line 1 is not a verdict of specad watch"):
        Journal(tmp_path).open()


@contextmanager
def background(watcher: Watcher) -> Iterator[None]:
    """A watcher (the Python API) in a thread, stopped and joined at the end."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            watcher.run()
        except BaseException as err:  # noqa: BLE001 - shown by the test
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        watcher.stop()
        thread.join(timeout=DEADLINE)
        assert not thread.is_alive()
    assert not errors, errors


@pytest.mark.parametrize("poll", [False, True])
def test_done_moves_scored_cubes_and_a_cube_done_before_a_crash_is_not_rescored(
    poll: bool, tiny_rx: Path, tiny_root: Path, tmp_path: Path
) -> None:
    inbox, out, done = tmp_path / "inbox", tmp_path / "out", tmp_path / "done"
    inbox.mkdir()
    sources = cubes(tiny_root)
    det = Detector.load(tiny_rx)
    rename_in(sources[0], inbox, "early.tif")
    # the state a crash between a verdict and its move leaves: scored, still in the inbox
    with background(Watcher(det, inbox, out, settle=0.2, poll=poll)):
        wait_for(lambda: len(lines(out)) == 1, "the first verdict")
    assert (inbox / "early.tif").exists()
    (inbox / "junk.npy").write_bytes(b"not a cube")
    with background(Watcher(det, inbox, out, settle=0.2, done=done, poll=poll)):
        write_slowly(sources[1], inbox / "late.tif", pieces=3, pause=0.05)
        wait_for(lambda: len(lines(out)) == 3, "the other verdicts")
        wait_for(lambda: not any(inbox.iterdir()), "an empty inbox")
    records = assert_once(out, ["early.tif", "junk.npy", "late.tif"])
    assert sorted(p.name for p in done.iterdir()) == ["early.tif", "junk.npy", "late.tif"]
    assert (done / "late.tif").read_bytes() == sources[1].read_bytes()
    junk = next(r for r in records if r["file"] == "junk.npy")
    assert "junk.npy" in junk["error"] and "score" not in junk


def test_drift_is_said_once_and_journaled_with_each_verdict(
    tiny_rx: Path, tiny_root: Path, tmp_path: Path
) -> None:
    """A line whose cubes all turn anomalous drifts: one alert, and every verdict line from
    then on says so. The tiny model's four val scores cannot bound a drift (its own monitor
    never fires), so the watcher is given one calibrated on 200 normal scores."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    det = Detector.load(tiny_rx)
    alerts: list[str] = []
    watcher = Watcher(det, inbox, out, settle=0.0, on_drift=alerts.append)
    assert watcher.drift is not None  # the model's own, from its calibration
    normal = np.linspace(0.0, det.threshold * 0.9, 200)
    watcher.drift = DriftMonitor(normal, det.threshold, window=5, horizon=10)
    bad = read_cube(next(p for p in cubes(tiny_root) if p.parent.name != "good"))
    write_cube(tmp_path / "bad.tif", Cube(bad.data + 10 * bad.data.std(), bad.bands))
    with background(watcher):
        for i in range(6):
            rename_in(tmp_path / "bad.tif", inbox, f"{i}.tif")
            wait_for(lambda i=i: len(lines(out)) == i + 1, f"verdict {i}")
    records = assert_once(out, [f"{i}.tif" for i in range(6)])
    assert all(r["anomalous"] for r in records)
    assert len(alerts) == 1 and alerts[0].startswith("drift after"), alerts
    first = next(i for i, r in enumerate(records) if r["drifting"])
    assert first > 0 and all(r["drifting"] for r in records[first:])


def test_cubes_that_arrive_together_are_scored_as_one_batch(
    tiny_rx: Path, tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cubes complete at once are scored `batch` at a time, in arrival order, each journaled
    once; a cube that cannot be read in a batch costs only itself."""
    import specad.line.watch

    sizes: list[int] = []
    score_files = specad.line.watch.score_files

    def counted(detector, paths, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(len(paths))
        return score_files(detector, paths, *args, **kwargs)

    monkeypatch.setattr(specad.line.watch, "score_files", counted)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    sources = cubes(tiny_root)[:6]
    for i, src in enumerate(sources):
        rename_in(src, inbox, f"{i}.tif")
    (inbox / "6.tif").write_bytes(b"not a cube")
    with background(Watcher(Detector.load(tiny_rx), inbox, out, settle=0.0, batch=4)):
        wait_for(lambda: len(lines(out)) == 7, "seven lines")
    records = assert_once(out, [f"{i}.tif" for i in range(7)])
    assert sizes == [4, 3], sizes
    assert [r["file"] for r in records if "error" in r] == ["6.tif"]
    alone = Detector.load(tiny_rx).predict([read_cube(p) for p in sources])
    scored = {r["file"]: r["score"] for r in records if "error" not in r}
    assert [scored[f"{i}.tif"] for i in range(6)] == pytest.approx([p.score for p in alone])


def test_hidden_and_temporary_names_are_never_read(
    tiny_rx: Path, tiny_root: Path, tmp_path: Path
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    src = cubes(tiny_root)[0]
    for name in (".hidden.tif", "~lock.tif", "cube.tif.part", "notes.txt"):
        shutil.copyfile(src, inbox / name)
    rename_in(src, inbox, "real.tif")
    with background(Watcher(Detector.load(tiny_rx), inbox, out, settle=0.0)):
        wait_for(lambda: len(lines(out)) == 1, "the verdict")
        time.sleep(0.5)
    assert_once(out, ["real.tif"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["missing", "--out", "o"], "the inbox is not a folder"),
        (["inbox", "--out", "o", "--settle", "-1"], "--settle"),
        (["inbox", "--out", "o", "--done", "inbox"], "--done must be another folder"),
        (["inbox", "--out", "inbox/o"], "lies inside the input"),
    ],
)
def test_bad_watch_options_are_one_line(
    args: list[str], needle: str, tiny_rx: Path, tmp_path: Path
) -> None:
    (tmp_path / "inbox").mkdir()
    done = run_specad("watch", str(tiny_rx), *args, cwd=tmp_path)
    one_line_failure(done, needle)


def test_a_second_watcher_on_one_output_is_refused(tiny_rx: Path, tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    with background(Watcher(Detector.load(tiny_rx), inbox, out)):
        wait_for(lambda: (out / VERDICTS).exists(), "the first watcher")
        done = run_specad("watch", str(tiny_rx), str(inbox), "--out", str(out))
    one_line_failure(done, "another specad command is writing this output now")
