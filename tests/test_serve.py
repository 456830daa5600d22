"""`specad serve`: a real server on 127.0.0.1 (a free port), driven by a bounded httpx client.
Every endpoint, every class of bad input (one line of JSON, 4xx), the size limit before the body
is read, micro-batching, the metrics, reload by request and by SIGHUP, feedback, and the clean
ending on SIGTERM."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from conftest import WAVELENGTHS, make_dataset, one_line_failure, run_specad
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from specad.inference import Detector
from specad.io import Cube, write_cube

DEADLINE = 90.0
"""Seconds a server start, a request or a stop may take before the test fails."""
MAX_BYTES = 400_000
"""The server's upload limit here: a tiny cube is about 100 kB."""


class Server:
    """A `specad serve` process and a client for it."""

    def __init__(self, model: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "specad", "serve", str(model), "--port", "0", *extra]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
        )
        line = self._first_line()
        assert line.startswith("listening on http://127.0.0.1:"), line
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.client = httpx.Client(base_url=self.url, timeout=DEADLINE)

    def _first_line(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE)
        if not ready:
            self.proc.kill()
            raise AssertionError("the server did not start in time")
        line = self.proc.stdout.readline().strip()
        if not line:
            raise AssertionError(self.proc.communicate(timeout=DEADLINE)[1])
        return line

    def score(self, cube: Path, **params: str) -> httpx.Response:
        params = {"filename": cube.name} | params
        return self.client.post("/score", content=cube.read_bytes(), params=params)

    def metric(self, name: str) -> float:
        """The sum of every sample of ``name`` in /metrics (parsed by prometheus_client)."""
        text = self.client.get("/metrics").text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[str, str]:
        self.client.close()
        self.proc.send_signal(sig)
        stdout, stderr = self.proc.communicate(timeout=DEADLINE)
        return stdout, stderr

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=DEADLINE)


@pytest.fixture(scope="module")
def feedback_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feedback")


@pytest.fixture(scope="module")
def server(tiny_rx: Path, feedback_dir: Path) -> Iterator[Server]:
    srv = Server(
        tiny_rx,
        *("--batch", "4", "--batch-wait", "0.3"),
        *("--max-bytes", str(MAX_BYTES), "--feedback", str(feedback_dir)),
    )
    try:
        yield srv
        srv.stop()  # SIGTERM: the spool folder goes with it
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def predicted(
    tiny_rx: Path, tiny_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict]:
    """What `specad predict` says of each test cube: its scores.csv row and its map files."""
    out = tmp_path_factory.mktemp("pred") / "pred"
    run = [sys.executable, "-m", "specad", "predict", str(tiny_rx), str(tiny_root / "test")]
    subprocess.run([*run, "--out", str(out)], check=True, capture_output=True, timeout=DEADLINE)
    with open(out / "scores.csv", newline="") as f:
        rows = {Path(r["file"]).name: r | {"out": out} for r in csv.DictReader(f)}
    return rows


def test_score_gives_the_verdict_predict_gives(
    server: Server, tiny_root: Path, predicted: dict[str, dict]
) -> None:
    cubes = sorted((tiny_root / "test").rglob("*.tif"))
    flags = set()
    for cube in cubes:
        r = server.score(cube)
        assert r.status_code == 200, r.text
        body, row = r.json(), predicted[cube.name]
        assert body["file"] == cube.name
        assert body["score"] == pytest.approx(float(row["score"]), rel=1e-5)
        assert int(body["anomalous"]) == int(row["anomalous"])
        assert body["verdict"] == ("anomalous" if body["anomalous"] else "normal")
        assert body["threshold"] == pytest.approx(float(row["threshold"]), rel=1e-5)
        assert body["runtime"] == "numpy" and body["ms"] > 0 and len(body["id"]) == 32
        flags.add(body["anomalous"])
    assert flags == {True, False}, "the test cubes should get both verdicts"


@pytest.mark.parametrize("fmt", ["tiff", "png"])
def test_score_returns_the_map_predict_writes(
    fmt: str, server: Server, tiny_root: Path, predicted: dict[str, dict]
) -> None:
    cube = sorted((tiny_root / "test" / "square").glob("*.tif"))[0]
    r = server.score(cube, map=fmt)
    assert r.status_code == 200, r.text
    answer = r.json()["map"]
    assert answer["format"] == fmt
    data = io.BytesIO(base64.b64decode(answer["base64"]))
    row = predicted[cube.name]
    if fmt == "tiff":
        want = tifffile.imread(row["out"] / row["map"])
        np.testing.assert_array_equal(tifffile.imread(data), want)
    else:
        want = Image.open(row["out"] / "overlays" / "square" / f"{cube.stem}.png")
        np.testing.assert_array_equal(np.asarray(Image.open(data)), np.asarray(want))


def test_health_and_model(server: Server, tiny_rx: Path) -> None:
    health = server.client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    model = server.client.get("/model").json()
    det = Detector.load(tiny_rx)
    assert model["kind"] == "rx" and model["channels"] == 6
    assert model["wavelengths"] == pytest.approx(WAVELENGTHS)
    assert model["threshold"] == pytest.approx(det.threshold)
    assert model["runtime"] == det.runtime and model["cpu"] and model["batch"] == 4


def _bad_cubes(tmp: Path, good: Path) -> dict[str, bytes]:
    three = tmp / "three.tif"
    write_cube(three, Cube(np.full((16, 16, 3), 0.4, np.float32), ["R", "G", "B"], None))
    nan = tmp / "nan.npy"
    np.save(nan, np.full((8, 8, 6), np.nan, np.float32))
    huge = io.BytesIO()  # a header declaring a cube far too large, and a few bytes of it
    np.lib.format.write_array_header_1_0(
        huge, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000, 6)}
    )
    return {
        "three": three.read_bytes(),
        "nan": nan.read_bytes(),
        "huge": huge.getvalue() + b"\0" * 64,
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
    }


BAD_REQUESTS = [
    # (method, path, query, body key or bytes, status, words in the error)
    ("POST", "/score", {"format": "tif"}, b"garbage", 422, "cannot read"),
    ("POST", "/score", {"filename": "x.npy"}, b"\x93NUMPY garbage", 422, "x.npy"),
    ("POST", "/score", {"format": "tif"}, "truncated", 422, "upload.tif"),
    ("POST", "/score", {"format": "tif"}, "three", 422, "3 channels"),
    ("POST", "/score", {"format": "npy"}, "nan", 422, "upload.npy"),
    ("POST", "/score", {"format": "npy"}, "huge", 422, "upload.npy"),
    ("POST", "/score", {}, b"data", 400, "format"),
    ("POST", "/score", {"format": "xyz"}, b"data", 415, "unknown cube format"),
    ("POST", "/score", {"format": "hdr"}, b"data", 415, "unknown cube format"),
    ("POST", "/score", {"format": "tif"}, b"", 400, "empty"),
    ("POST", "/score", {"format": "tif", "map": "jpeg"}, b"data", 400, "map must be"),
    ("GET", "/score", {}, b"", 405, "Method Not Allowed"),
    ("GET", "/nowhere", {}, b"", 404, "Not Found"),
    ("POST", "/feedback", {}, b"{not json", 422, ""),
    ("POST", "/feedback", {}, b'{"id": "nope", "label": "normal"}', 404, "nope"),
    ("POST", "/feedback", {}, b'{"id": "nope", "label": "scratch"}', 422, "normal"),
]


@pytest.mark.parametrize(("method", "path", "query", "body", "status", "words"), BAD_REQUESTS)
def test_bad_requests_get_one_line_of_json_and_a_4xx(
    method: str,
    path: str,
    query: dict,
    body: bytes | str,
    status: int,
    words: str,
    server: Server,
    tiny_root: Path,
    tmp_path: Path,
) -> None:
    if isinstance(body, str):
        body = _bad_cubes(tmp_path, next((tiny_root / "test" / "good").glob("*.tif")))[body]
    r = server.client.request(method, path, params=query, content=body)
    assert r.status_code == status, r.text
    answer = r.json()
    assert list(answer) == ["error"] and "\n" not in answer["error"], answer
    assert words in answer["error"]
    assert "Traceback" not in r.text
    assert server.client.get("/health").status_code == 200  # and it keeps serving


def test_an_oversize_body_is_refused_before_it_is_read(server: Server) -> None:
    declared = b"POST /score?format=tif HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n"
    assert _answer(server.port, declared).startswith(b"HTTP/1.1 413 ")
    # no length declared: the count stops the stream at the limit, before the body ends
    head = b"POST /score?format=tif HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (1 << 16, b"\0" * (1 << 16))
    answer = _answer(server.port, head + chunk * (MAX_BYTES // (1 << 16) + 2))
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"error"' in answer and b"over the limit" in answer


def _answer(port: int, request: bytes) -> bytes:
    """Send ``request`` (never ending its body) and read the answer the server gives anyway."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            got = sock.recv(65536)
            if not got:
                break
            data += got
        return data


def test_concurrent_requests_are_scored_in_batches(server: Server, tiny_root: Path) -> None:
    cube = next((tiny_root / "test" / "good").glob("*.tif"))
    before = server.metric("specad_batch_size_sum"), server.metric("specad_batch_size_count")
    start, answers = threading.Barrier(8), []

    def client() -> None:
        start.wait(timeout=DEADLINE)
        answers.append(server.score(cube))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE)
    assert [r.status_code for r in answers] == [200] * 8
    assert len({r.json()["score"] for r in answers}) == 1
    assert max(r.json()["batch"] for r in answers) > 1
    cubes = server.metric("specad_batch_size_sum") - before[0]
    batches = server.metric("specad_batch_size_count") - before[1]
    assert cubes == 8 and batches < 8


def test_metrics_parse_and_count(server: Server, tiny_root: Path) -> None:
    cube = next((tiny_root / "test" / "good").glob("*.tif"))
    verdicts, scored = (
        server.metric("specad_verdicts_total"),
        server.metric("specad_score_seconds_count"),
    )
    ok = server.metric("specad_requests_total")
    assert server.score(cube).status_code == 200
    text = server.client.get("/metrics").text
    names = {f.name for f in text_string_to_metric_families(text)}
    for name in ("specad_requests", "specad_score_seconds", "specad_verdicts"):
        assert name in names
    assert {"specad_queue_depth", "specad_batch_size", "specad_model_generation"} <= names
    assert server.metric("specad_verdicts_total") == verdicts + 1
    assert server.metric("specad_score_seconds_count") == scored + 1
    assert server.metric("specad_requests_total") >= ok + 2  # the /score and a /metrics
    assert server.metric("specad_queue_depth") == 0


def test_the_drift_watch_counts_every_verdict(server: Server, tiny_root: Path) -> None:
    """The drift gauges follow the verdicts the server gave (`specad.metrics.drift` tests the
    bounds themselves): the running alarm rate is the share of cubes flagged."""
    for cube in sorted((tiny_root / "test").rglob("*.tif"))[:4]:
        assert server.score(cube).status_code == 200
    families = {
        f.name: f for f in text_string_to_metric_families(server.client.get("/metrics").text)
    }
    counts = {
        s.labels["verdict"]: s.value
        for s in families["specad_verdicts"].samples
        if s.name.endswith("_total")
    }
    rate = counts.get("anomalous", 0) / sum(counts.values())
    assert families["specad_drift_alarm_rate"].samples[0].value == pytest.approx(rate)
    bound = families["specad_drift_alarm_bound"].samples[0].value
    drifting = families["specad_drifting"].samples[0].value
    window = families["specad_drift_window_alarms"].samples[0].value
    assert drifting == float(
        window >= bound
        or families["specad_drift_score_statistic"].samples[0].value
        >= families["specad_drift_score_bound"].samples[0].value
    )


def test_feedback_queues_a_scored_cube_once(
    server: Server, tiny_root: Path, feedback_dir: Path
) -> None:
    cube = next((tiny_root / "test" / "good").glob("*.tif"))
    upload = server.score(cube).json()["id"]
    r = server.client.post("/feedback", json={"id": upload, "label": "normal"})
    assert r.status_code == 200, r.text
    assert r.json()["already"] is False
    queued = feedback_dir / r.json()["file"]
    assert queued.read_bytes() == cube.read_bytes()
    again = server.client.post("/feedback", json={"id": upload, "label": "normal"})
    assert again.status_code == 200 and again.json()["already"] is True
    log = (feedback_dir / "feedback.jsonl").read_text().splitlines()
    mine = [json.loads(line) for line in log if json.loads(line)["id"] == upload]
    assert len(mine) == 1 and mine[0]["label"] == "normal" and mine[0]["file"] == queued.name


def test_reload_and_sighup_swap_the_model_and_sigterm_ends_in_one_line(
    tiny_rx: Path, tiny_root: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    subprocess.run(
        [sys.executable, "-m", "specad", "fit", "rx", str(make_dataset(tmp_path / "ds", seed=1))]
        + ["--out", str(other)],
        check=True,
        capture_output=True,
        timeout=DEADLINE,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    served = tmp_path / "served"
    shutil.copytree(tiny_rx, served)
    first, second = Detector.load(tiny_rx), Detector.load(other)
    assert first.threshold != pytest.approx(second.threshold)
    cube = next((tiny_root / "test" / "square").glob("*.tif"))
    srv = Server(served)
    try:
        assert srv.client.get("/model").json()["threshold"] == pytest.approx(first.threshold)
        _put_model(other, served)
        r = srv.client.post("/reload")
        assert r.status_code == 200 and r.json()["model"] == 2, r.text
        assert srv.client.get("/model").json()["threshold"] == pytest.approx(second.threshold)
        scored = srv.score(cube).json()
        assert scored["model"] == 2 and scored["threshold"] == pytest.approx(second.threshold)
        (served / "model.safetensors").write_bytes(b"broken")
        r = srv.client.post("/reload")
        assert r.status_code == 422 and "still serving model 2" in r.json()["error"], r.text
        assert srv.score(cube).status_code == 200
        _put_model(tiny_rx, served)
        srv.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + DEADLINE
        while srv.client.get("/health").json()["model"] != 3:
            assert time.monotonic() < end, "SIGHUP did not reload the model"
            time.sleep(0.05)
        assert srv.client.get("/model").json()["threshold"] == pytest.approx(first.threshold)
        assert srv.metric("specad_model_reloads_total") == 3  # two swapped, one refused
        stdout, stderr = srv.stop()
    finally:
        srv.kill()
    assert srv.proc.returncode == 0, stderr
    assert stdout.splitlines()[-1] == "stopped (SIGTERM)", stdout
    assert "Traceback" not in stderr, stderr
    assert "reloaded the model (load 3)" in stderr


def _put_model(source: Path, target: Path) -> None:
    for name in ("model.json", "model.safetensors"):
        shutil.copyfile(source / name, target / f".{name}.new")
        os.replace(target / f".{name}.new", target / name)


def test_serve_errors_before_listening_are_one_line(tiny_rx: Path, tmp_path: Path) -> None:
    one_line_failure(run_specad("serve", str(tmp_path / "none")), "model file not found")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        one_line_failure(run_specad("serve", str(tiny_rx), "--port", port), "cannot listen")
