"""Kill trials: ``kill -9`` at random moments, then resume or rerun; prints one table.

    .venv/bin/python benchmarks/robustness/kill_trials.py [--trials 20] [--others 5] [--seed 0]

* **train**: a short training run is killed at a random moment, then continued with
  ``--resume`` (or, if it died before its first checkpoint, rerun with ``--force``); the final
  ``model.safetensors`` must equal an uninterrupted run's byte for byte.
* **predict, report, synth, export**: killed at a random moment; no partial output may be left:
  the output folder is absent, or complete when the kill came after its final rename (then the
  rerun needs ``--force``); for ``export`` the previous ONNX file is intact. The rerun must
  succeed.

Exit status 1 if any trial failed.
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
import tempfile
import time
from pathlib import Path

from fuzz_data import make_dataset

TRAIN_SETS = [
    "train.steps=24",
    "train.checkpoint_every=4",
    "train.export=[]",
    "train.device=cpu",
    "model.teacher=pdn-random",
]


def specad(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "specad", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(*args: str) -> tuple[int, str]:
    proc = specad(*args)
    _, err = proc.communicate(timeout=900)
    return proc.returncode, err.strip().splitlines()[-1] if err.strip() else ""


def kill_after(args: list[str], delay: float) -> int | None:
    """Start a command, ``kill -9`` it after ``delay`` s; None if it finished first."""
    proc = specad(*args)
    try:
        proc.wait(timeout=delay)
        return proc.returncode
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    code, last = finish(*args)
    if code != 0:
        raise SystemExit(f"reference run failed: {' '.join(args)}: {last}")
    return time.perf_counter() - t0


def train_trials(work: Path, cfg: Path, n: int, rng: random.Random) -> tuple[list[dict], Path]:
    train = ["train", "-c", str(cfg)] + [a for s in TRAIN_SETS for a in ("--set", s)]
    reference = work / "reference"
    seconds = timed([*train, "--out", str(reference)])
    expected = (reference / "model.safetensors").read_bytes()
    rows: list[dict] = []
    attempts = 0
    while len(rows) < n and attempts < 3 * n:  # a run that ends before its kill is no trial
        attempts += 1
        run = work / f"train{attempts}"
        delay = rng.uniform(0.2, 0.8 * seconds)
        if kill_after([*train, "--out", str(run)], delay) is not None:
            shutil.rmtree(run, ignore_errors=True)
            continue
        killed = True
        resumed = (run / "checkpoints" / "last.pt").is_file()
        again = [*train, "--out", str(run), "--resume" if resumed else "--force"]
        code, last = finish(*again)
        same = code == 0 and (run / "model.safetensors").read_bytes() == expected
        rows.append(
            {
                "case": "train",
                "kill at s": round(delay, 2),
                "killed": killed,
                "then": "resume" if resumed else "rerun",
                "ok": same,
                "detail": "weights identical" if same else last or "weights differ",
            }
        )
        shutil.rmtree(run, ignore_errors=True)
    return rows, reference


def output_trials(work: Path, data: Path, model: Path, n: int, rng: random.Random) -> list[dict]:
    """Kill predict, report and synth; their output folders must not appear half-done."""
    cases = {
        "predict": lambda out: ["predict", str(model), str(data / "test"), "--out", str(out)],
        "report": lambda out: [
            "report",
            "--model",
            f"m={model}",
            "--dataset",
            str(data),
            "--out",
            str(out),
        ],  # fmt: skip
        "synth": lambda out: ["synth", "--out", str(out), "--size", "64", "--preset", "tray6"],
    }
    rows = []
    for name, make in cases.items():
        reference = work / f"{name}-ref"
        seconds = timed(make(reference))
        for i in range(n):
            out = work / f"{name}{i}"
            delay = rng.uniform(0.2, seconds)
            killed = kill_after(make(out), delay) is None
            # The output appears only by the final rename, so after a kill it is either absent
            # or complete (killed after publishing); complete means the reference's files.
            published = out.exists()
            complete = not published or _files(out) == _files(reference)
            rerun = make(out) + (["--force"] if published else [])
            code, last = finish(*rerun)
            ok = complete and code == 0 and out.is_dir()
            state = "complete output (killed after publishing)" if published else "no output"
            rows.append(
                {
                    "case": name,
                    "kill at s": round(delay, 2),
                    "killed": killed,
                    "then": "rerun --force" if published else "rerun",
                    "ok": ok,
                    "detail": f"{state}; rerun ok"
                    if ok
                    else f"{state}, complete {complete}; {last}",
                }
            )
            shutil.rmtree(out, ignore_errors=True)
    return rows


def _files(folder: Path) -> set[str]:
    """Relative names of every file in ``folder``: what a complete output must hold."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def export_trials(model: Path, n: int, rng: random.Random) -> list[dict]:
    """Kill ``specad export``: model.onnx is the old complete file or the new one, never torn."""
    onnx = model / "model.onnx"
    seconds = timed(["export", str(model)])
    before = onnx.read_bytes()
    rows = []
    for _ in range(n):
        delay = rng.uniform(0.2, seconds)
        killed = kill_after(["export", str(model)], delay) is None
        intact = onnx.read_bytes() == before
        code, last = finish("export", str(model))
        ok = intact and code == 0 and onnx.read_bytes() == before
        rows.append(
            {
                "case": "export",
                "kill at s": round(delay, 2),
                "killed": killed,
                "then": "rerun",
                "ok": ok,
                "detail": "model.onnx intact; rerun ok" if ok else f"intact {intact}; {last}",
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="training kill trials")
    parser.add_argument("--others", type=int, default=5, help="trials per other command")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="specad-kill-"))
    try:
        data = make_dataset(work / "data", size=64)
        cfg = work / "cfg.yaml"
        cfg.write_text(json.dumps({"data": {"root": str(data), "image_size": 64}}))
        rows, reference = train_trials(work, cfg, args.trials, rng)
        finish("export", str(reference))
        rows += output_trials(work, data, reference, args.others, rng)
        rows += export_trials(reference, args.others, rng)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| # | case | kill at s | killed | then | result |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        verdict = "pass" if r["ok"] else "FAIL"
        print(
            f"| {i} | {r['case']} | {r['kill at s']} | {r['killed']} | {r['then']} | "
            f"{verdict}: {r['detail']} |"
        )
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        print(f"{case}: {sum(r['ok'] for r in mine)} of {len(mine)} passed")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
