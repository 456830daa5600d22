"""`specad watch` and `specad serve` at camera speed, on loopback only: throughput, latency, RSS
over time, and kill -9 trials. Prints a markdown report (recorded in line_results.md).

    .venv/bin/python benchmarks/speed/line.py [--cubes 200] [--rate 8] [--kills 3] [--requests 100]

tray6 (`specad synth --preset tray6 --seed 1`) and knn fitted on it are made under
benchmarks/out/line/ when missing. Parts:

- the model alone, in this process: images/s of `run_split` on the test split (what `specad
  evaluate` runs), batch 1 and batch 8, and the time to read a cube from its file;
- watch, burst: every cube renamed into the inbox at once; cubes/s from the first rename to
  the last verdict;
- watch, paced: a simulated camera renames a cube every 1/RATE s; latency is from its rename
  ("file complete") to the verdict's ``at`` (written, fsynced); the watcher's RSS is sampled
  every second, and its slope fitted;
- kill trials: each puts cubes in a fresh inbox, kills the watcher with SIGKILL at a random
  moment after its first verdict, restarts it, and counts cubes lost and cubes scored twice;
- serve: one client in sequence (p50 latency against the model's batch-1 time plus the read),
  8 concurrent clients (images/s against batch 8), then malformed requests (each must get one
  line of JSON with a 4xx status) and the server's RSS before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "out" / "line"
PY = sys.executable
WAIT = 600.0


def specad(*args: str) -> None:
    subprocess.run([PY, "-m", "specad", *args], check=True, cwd=ROOT)


def prepare() -> tuple[Path, Path]:
    data, model = OUT / "tray6", OUT / "knn"
    if not data.is_dir():
        specad("synth", "--preset", "tray6", "--out", str(data), "--seed", "1")
    if not model.is_dir():
        specad("fit", "knn", str(data), "--out", str(model))
    return data, model


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def model_alone(model: Path, data: Path) -> dict[str, float]:
    """The model's own speed in this process, as `specad evaluate` runs it."""
    from specad.data import load_dataset
    from specad.inference import Detector, run_split
    from specad.io import read_cube
    from specad.threads import set_threads

    set_threads(None)  # the threads every specad command picks (idle cores), watch's and serve's
    det = Detector.load(model)
    samples = load_dataset(data).require("test")[:64]
    run_split(det, samples[:8], batch_size=8)  # warm-up
    result = {}
    for batch in (1, 8):
        t = time.perf_counter()
        run_split(det, samples, batch_size=batch)
        result[f"images_per_s_b{batch}"] = len(samples) / (time.perf_counter() - t)
    t = time.perf_counter()
    for s in samples[:32]:
        read_cube(s.path)
    result["read_ms"] = (time.perf_counter() - t) / 32 * 1000
    return result


def verdicts(out: Path) -> list[dict]:
    path = out / "verdicts.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines(keepends=True) if x.endswith("\n")]


def start_watch(model: Path, inbox: Path, out: Path) -> subprocess.Popen:
    cmd = [PY, "-m", "specad", "watch", str(model), str(inbox), "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_count(out: Path, n: int, proc: subprocess.Popen, samples: list | None = None) -> None:
    end, last = time.monotonic() + WAIT, 0.0
    while len(verdicts(out)) < n:
        if time.monotonic() > end or proc.poll() is not None:
            raise SystemExit(f"watch stopped or stalled: {proc.poll()}, {len(verdicts(out))}/{n}")
        if samples is not None and time.monotonic() - last >= 1.0:
            last = time.monotonic()
            samples.append((last, rss_mb(proc.pid)))
        time.sleep(0.02)


def rename_in(src: Path, inbox: Path, name: str) -> float:
    part = inbox / f".{name}.part"
    shutil.copyfile(src, part)
    os.rename(part, inbox / name)
    return time.time()


def watch_runs(model: Path, cubes: list[Path], n: int, rate: float) -> dict[str, float]:
    work = OUT / "watch"
    shutil.rmtree(work, ignore_errors=True)
    inbox, out = work / "inbox", work / "out"
    inbox.mkdir(parents=True)
    proc = start_watch(model, inbox, out)
    try:
        # warm-up: the first cube loads what scoring needs
        rename_in(cubes[0], inbox, "warm.tif")
        wait_count(out, 1, proc)
        first = time.time()
        for i in range(n):
            rename_in(cubes[i % len(cubes)], inbox, f"burst{i:05d}.tif")
        wait_count(out, n + 1, proc)
        burst = n / (max(v["at"] for v in verdicts(out)) - first)
        # paced: the camera at RATE cubes/s
        complete, samples = {}, []
        start = time.monotonic()

        def camera() -> None:
            for i in range(n):
                time.sleep(max(0.0, start + i / rate - time.monotonic()))
                name = f"paced{i:05d}.tif"
                complete[name] = rename_in(cubes[i % len(cubes)], inbox, name)

        cam = threading.Thread(target=camera)
        cam.start()
        wait_count(out, 2 * n + 1, proc, samples)
        cam.join()
        lat = [
            (v["at"] - complete[v["file"]]) * 1000 for v in verdicts(out) if v["file"] in complete
        ]
        paced = [v["at"] for v in verdicts(out) if v["file"] in complete]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    t = np.array([s[0] - samples[0][0] for s in samples]) / 60 if samples else np.zeros(1)
    rss = np.array([s[1] for s in samples]) if samples else np.zeros(1)
    slope = float(np.polyfit(t, rss, 1)[0]) if len(samples) > 2 else float("nan")
    return {
        "burst_cubes_per_s": burst,
        "paced_cubes_per_s": (n - 1) / (max(paced) - min(paced)),
        "latency_p50_ms": pct(lat, 50),
        "latency_p99_ms": pct(lat, 99),
        "rss_start_mb": float(rss[0]),
        "rss_end_mb": float(rss[-1]),
        "rss_slope_mb_per_min": slope,
        "paced_minutes": float(t[-1]),
    }


def kill_trials(model: Path, cubes: list[Path], trials: int, per_trial: int) -> dict[str, int]:
    lost = twice = 0
    rng = random.Random(0)
    for trial in range(trials):
        work = OUT / f"kill{trial}"
        shutil.rmtree(work, ignore_errors=True)
        inbox, out = work / "inbox", work / "out"
        inbox.mkdir(parents=True)
        names = [f"k{i:04d}.tif" for i in range(per_trial)]
        for i, name in enumerate(names):
            rename_in(cubes[i % len(cubes)], inbox, name)
        proc = start_watch(model, inbox, out)
        wait_count(out, 1, proc)
        time.sleep(rng.uniform(0, 2.0))
        proc.kill()
        proc.wait()
        proc = start_watch(model, inbox, out)
        wait_count(out, per_trial, proc)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=WAIT)
        got = [v["file"] for v in verdicts(out)]
        lost += len(set(names) - set(got))
        twice += len(got) - len(set(got))
    return {"trials": trials, "cubes_per_trial": per_trial, "lost": lost, "twice": twice}


def serve_runs(model: Path, cubes: list[Path], requests: int) -> dict[str, float]:
    cmd = [PY, "-m", "specad", "serve", str(model), "--port", "0", "--max-bytes", "50000000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        bodies = [c.read_bytes() for c in cubes[:16]]
        with httpx.Client(base_url=url, timeout=120) as client:

            def post(i: int) -> float:
                t = time.perf_counter()
                r = client.post("/score?format=tif", content=bodies[i % len(bodies)])
                assert r.status_code == 200, r.text
                return (time.perf_counter() - t) * 1000

            for i in range(4):
                post(i)
            one = [post(i) for i in range(requests)]
            t = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(post, range(2 * requests)))
            eight = 2 * requests / (time.perf_counter() - t)
            rss_before = rss_mb(proc.pid)
            bad = malformed(client, bodies[0], 5 * requests)
            rss_after = rss_mb(proc.pid)
            health = client.get("/health").status_code
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {
        "one_client_p50_ms": pct(one, 50),
        "one_client_p99_ms": pct(one, 99),
        "eight_clients_images_per_s": eight,
        "malformed_sent": bad[0],
        "malformed_one_line_4xx": bad[1],
        "healthy_after": float(health == 200),
        "rss_before_malformed_mb": rss_before,
        "rss_after_malformed_mb": rss_after,
    }


def malformed(client: httpx.Client, good: bytes, n: int) -> tuple[int, int]:
    """Generated bad requests: random bytes, truncated and corrupted cubes, wrong formats."""
    rng = np.random.default_rng(0)
    ok = 0
    for i in range(n):
        kind = i % 5
        params = {"format": "tif"}
        if kind == 0:
            body = rng.bytes(int(rng.integers(1, 4096)))
        elif kind == 1:
            body = good[: int(rng.integers(1, len(good)))]
        elif kind == 2:
            raw = bytearray(good)
            for at in rng.integers(0, 64, 8):
                raw[at] ^= 0xFF
            body = bytes(raw)
        elif kind == 3:
            body, params = good, {"format": rng.choice(["xyz", "hdr", "", "png"])}
        else:
            body, params = rng.bytes(512), {"format": "npy"}
        r = client.post("/score", params=params, content=body)
        text = r.text
        ok += 400 <= r.status_code < 500 and "\n" not in text and list(r.json()) == ["error"]
    return n, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cubes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--per-kill", type=int, default=60)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--parts", default="model,watch,kill,serve", help="comma-separated")
    args = parser.parse_args()
    parts = args.parts.split(",")
    from specad.runtime import cpu_model, cpu_speed_flags

    data, model = prepare()
    cubes = sorted((data / "test").rglob("*.tif"))
    runs = {
        "model": lambda: model_alone(model, data),
        "watch": lambda: watch_runs(model, cubes, args.cubes, args.rate),
        "kill": lambda: kill_trials(model, cubes, args.kills, args.per_kill),
        "serve": lambda: serve_runs(model, cubes, args.requests),
    }
    results = {part: runs[part]() for part in parts}
    cpu = f"{cpu_model()} ({', '.join(cpu_speed_flags())}), {os.cpu_count()} cores"
    (OUT / "line.json").write_text(json.dumps(results | {"cpu": cpu, "args": vars(args)}, indent=2))
    print(f"CPU: {cpu}\n")
    for part in parts:
        print(f"| {part} | value |\n|---|---|")
        for key, value in results[part].items():
            print(
                f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
            )
        print()


if __name__ == "__main__":
    main()
