"""Issue 43, models that learn on the line: `specad update` and the drift watch, measured.

- ``tray6``: knn and RX fitted on tray6 (`specad fit`), then scored on tray6-hard's test split
  (the same trays with a real line's variation); `specad update` with k = 5, 10 and 20
  tray6-hard normals from its train/good (disjoint from its test split), threshold on tray6's
  val/good plus them (``--val``; the k = 20 row again without it: the parent's stored val
  scores). Reported: the false-alarm rate at each model's own threshold on the normal test
  cubes, and image AUROC.
- ``drift``: `specad.metrics.DriftMonitor` on each fitted model's calibration, fed 500 new
  tray6 normals (seed 2) and then 100 tray6-hard normals (train/good 100-199): alerts before
  the switch, and cubes from the switch to the first alert after it.
- ``transistor``: MVTec AD transistor (``../shared/data/mvtec_transistor``, imported by
  `specad.data.importing.import_dataset`) with 20 train/good images held out of knn's fit, then
  added by `specad.update.update_model` (timed in-process at 2 threads): image AUROC before and
  after.

Data and models go to ``benchmarks/out/update`` (git-ignored) and are reused when present
(delete the folder to start over); the table goes to ``update_results.md`` beside this file.
Usage::

    nice -n 10 .venv/bin/python benchmarks/accuracy/update.py            # all three parts
    nice -n 10 .venv/bin/python benchmarks/accuracy/update.py --parts drift
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specad.data import GOOD, Sample, load_dataset
from specad.data.importing import import_dataset
from specad.fit import fit_on_dataset
from specad.inference import Detector, run_split
from specad.metrics import DriftMonitor, ThresholdWarning, image_auroc, is_anomalous
from specad.runtime import cpu_model, cpu_speed_flags
from specad.synth import synthesize
from specad.update import update_model

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out" / "update"
RESULTS = OUT / "results.json"
SHARED = HERE.parents[2] / "shared" / "data"
KS = (5, 10, 20)
THREADS = 2


def specad(*args: str) -> float:
    """Run the ``specad`` command (2 threads); its wall-clock seconds."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "specad", "--threads", str(THREADS), *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def data() -> dict[str, Path]:
    """tray6 and tray6-hard (seed 1), and 500 more tray6 normals (seed 2: other scenes)."""
    sets = {
        "tray6": ("tray6", 1, {}),
        "tray6-hard": ("tray6-hard", 1, {}),
        "tray6-normals": (
            "tray6",
            2,
            {"n_train": 500, "n_val": 0, "n_test_good": 0, "n_test_anomalous": 0},
        ),
    }
    for name, (preset, seed, counts) in sets.items():
        if not (OUT / name).is_dir():
            synthesize(OUT / name, preset, seed=seed, **counts)
    return {name: OUT / name for name in sets}


def judged(det: Detector, samples: list[Sample]) -> dict[str, float]:
    """False-alarm rate on the normal samples at the model's threshold, and image AUROC."""
    res = run_split(det, samples)
    normal = res.labels == 0
    flagged = is_anomalous(res.scores[normal], det.threshold)
    return {"far": float(np.mean(flagged)), "auroc": image_auroc(res.scores, res.labels)}


def fitted(kind: str, sets: dict[str, Path]) -> tuple[Path, float]:
    """The model `specad fit` made on tray6, and the seconds it took (0: there already)."""
    model = OUT / f"{kind}-tray6"
    if model.is_dir():
        return model, 0.0
    return model, specad("fit", kind, str(sets["tray6"]), "--out", str(model))


def recovery(kind: str, sets: dict[str, Path]) -> list[dict[str, Any]]:
    """The tray6 -> tray6-hard rows of one detector."""
    model, fit_s = fitted(kind, sets)
    hard = load_dataset(sets["tray6-hard"])
    test, good = hard.require("test"), hard.require("train")
    parent = Detector.load(model, device="cpu")
    rows = [
        {"model": "fitted on tray6", "data": "tray6", "fit_s": fit_s}
        | judged(parent, load_dataset(sets["tray6"]).require("test")),
        {"model": "fitted on tray6", "data": "tray6-hard"} | judged(parent, test),
    ]
    cases = [(k, True) for k in KS] + [(KS[-1], False)]
    for k, with_val in cases:
        new = OUT / f"{kind}-k{k}{'' if with_val else '-stored'}"
        val = ["--val", str(sets["tray6"])] if with_val else []
        files = [str(s.path) for s in good[:k]]
        seconds = specad("update", str(model), *files, "--out", str(new), "--force", *val)
        det = Detector.load(new, device="cpu")
        how = "tray6 val/good" if with_val else "stored val scores"
        row = {"model": f"updated, k = {k}, threshold on {how} + k", "data": "tray6-hard"}
        rows.append(row | {"update_s": seconds} | judged(det, test))
    return rows


def drift(kind: str, sets: dict[str, Path]) -> dict[str, Any]:
    """The drift monitor of the model fitted on tray6, over 500 tray6 normals then 100
    tray6-hard ones."""
    det = Detector.load(fitted(kind, sets)[0], device="cpu")
    normals = sorted((sets["tray6-normals"] / "train" / GOOD).glob("*.tif"))
    quiet = [Sample(path, "train", GOOD) for path in normals]  # a folder, not a whole dataset
    switched = load_dataset(sets["tray6-hard"]).require("train")[100:200]
    cache = OUT / f"{kind}-drift-scores.npy"  # the stream's scores, kept for reruns
    if not cache.is_file():
        np.save(cache, run_split(det, quiet + switched).scores)
    scores = np.load(cache)
    monitor = DriftMonitor.from_calibration(det.model.calibration_)
    alerts = [(i, line) for i, s in enumerate(scores) if (line := monitor.observe(s)) is not None]
    before = [i for i, _ in alerts if i < len(quiet)]
    after = [i - len(quiet) + 1 for i, _ in alerts if i >= len(quiet)]
    return {
        "quiet_cubes": len(quiet),
        "alerts_before_switch": len(before),
        "cubes_to_alert_after_switch": after[0] if after else None,
        "alert": next((line for i, line in alerts if i >= len(quiet)), None),
        "alarm_bound": monitor.state.alarm_bound,
        "score_bound": monitor.state.score_bound,
        "calibrated_rate": monitor.state.calibrated_rate,
    }


def transistor() -> dict[str, Any]:
    """knn on MVTec transistor without 20 of its train/good images, then updated with them."""
    source = SHARED / "mvtec_transistor"
    full = Path("/tmp/specad-update-transistor")
    if not full.is_dir():
        import_dataset(source, full)
    held = OUT / "transistor-held-out"
    extra = sorted((full / "train" / GOOD).iterdir())[-20:]
    if not held.is_dir():  # the same dataset without the 20, by links
        for path in full.rglob("*"):
            if path.is_file() and path not in extra:
                link = held / path.relative_to(full)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path)
    ds = load_dataset(held)
    model = OUT / "knn-transistor"
    if not model.is_dir():
        fit_on_dataset("knn", ds, device="cpu").save(model)
    test = ds.require("test")
    before = run_split(Detector.load(model, device="cpu"), test)
    refit = OUT / "knn-transistor-all"  # the reference: a fit on every train/good image
    if not refit.is_dir():
        fit_on_dataset("knn", load_dataset(full), device="cpu").save(refit)
    all_images = run_split(Detector.load(refit, device="cpu"), test)
    row: dict[str, Any] = {
        "train": len(ds.require("train")),
        "added": len(extra),
        "auroc_refit": image_auroc(all_images.scores, all_images.labels),
    }
    for name, val in (("with_val", held), ("stored_val", None)):
        load = os.getloadavg()[0]
        start = time.perf_counter()
        new = update_model(
            model, extra, OUT / f"knn-transistor-{name}", val=val, device="cpu", force=True
        )
        seconds = time.perf_counter() - start
        after = run_split(Detector.load(new, device="cpu"), test)
        row[name] = {
            "seconds": seconds,
            "load_average": load,
            "auroc_before": image_auroc(before.scores, before.labels),
            "auroc_after": image_auroc(after.scores, after.labels),
        }
    return row


def machine() -> str:
    """The CPU, and the commit measured (``+``: with uncommitted changes to ``src/``)."""
    flags = "/".join(cpu_speed_flags()) or "no AVX2"
    git = ["git", "-C", str(HERE)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "../../src"]).returncode
    commit = head.stdout.strip() + ("+" if dirty else "")
    return f"{cpu_model()} ({flags}), {os.cpu_count()} CPUs, torch {torch.__version__}, {commit}"


def write_results(results: dict[str, Any]) -> None:
    lines = [
        "# Updating a model on the line, and the drift watch (issue 43)",
        "",
        "Regenerate: `nice -n 10 .venv/bin/python benchmarks/accuracy/update.py` "
        "(data and models in `benchmarks/out/update`, reused when present). "
        f"Machine and commit: {results.get('machine', '?')}; 2 threads. The machine was shared "
        "with other jobs (load averages from about 1 to 4.5 during these runs): seconds are "
        "upper bounds.",
        "",
    ]
    for kind in ("knn", "rx"):
        rows = results.get("tray6", {}).get(kind)
        if not rows:
            continue
        lines += [
            f"## {kind}: tray6 -> tray6-hard",
            "",
            "False-alarm rate: normal test cubes (30) flagged at the model's own threshold. "
            "AUROC: image AUROC on the data's test split (30 normal, 90 anomalous).",
            "",
            "| model | scored on | false-alarm rate | image AUROC | seconds |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            seconds = r.get("update_s", r.get("fit_s"))
            shown = f"{seconds:.0f} ({'update' if 'update_s' in r else 'fit'})" if seconds else ""
            lines.append(
                f"| {r['model']} | {r['data']} | {r['far']:.3f} | {r['auroc']:.4f} | {shown} |"
            )
        updated = [r for r in rows if "update_s" in r]
        changes = [r["auroc"] - rows[1]["auroc"] for r in updated]
        lines += [
            "",
            f"On tray6 the fitted model flags {rows[0]['far']:.3f} of the normal test cubes, so "
            f"the issue's bar, at most twice that, is {2 * rows[0]['far']:.3f}; twice the rate "
            "its threshold promises (above the largest of 30 val scores: 1/31 on average) is "
            f"{2 / 31:.3f}. Updated rows reach {min(r['far'] for r in updated):.3f} at best. "
            f"Image AUROC on tray6-hard changes by {min(changes):+.4f} to {max(changes):+.4f}. "
            "Seconds: the whole `specad update` command, start-up and the threshold's scoring "
            "included.",
            "",
        ]
    if results.get("drift"):
        lines += [
            "## Drift watch: tray6 normals, then tray6-hard normals",
            "",
            "`DriftMonitor.from_calibration` of the model fitted on tray6 (defaults: window 50; "
            "a false drift within 1000 cubes of an unchanged line at most 1 %), fed 500 new tray6 "
            "normal cubes (seed 2), then tray6-hard's "
            "train/good 100-199.",
            "",
            "| detector | alerts over 500 tray6 normals | cubes after the switch to the alert "
            "| alarm bound (of 50) | KS bound | calibrated rate |",
            "|---|---|---|---|---|---|",
        ]
        for kind, d in results["drift"].items():
            lines.append(
                f"| {kind} | {d['alerts_before_switch']} | {d['cubes_to_alert_after_switch']} "
                f"| {d['alarm_bound']} | {d['score_bound']:.3f} | {d['calibrated_rate']:.3f} |"
            )
        lines += [""] + [f"- {k}: `{d['alert']}`" for k, d in results["drift"].items()] + [""]
    t = results.get("transistor")
    if t:
        lines += [
            "## No damage on real data: MVTec AD transistor",
            "",
            f"knn (defaults) fitted on {t['train']} train/good images; `update_model` adds the "
            f"{t['added']} held out (timed in-process: reading, features, coreset, threshold). "
            f"For reference, knn fitted on all {t['train'] + t['added']} scores "
            f"{t['auroc_refit']:.4f}.",
            "",
            "| threshold on | image AUROC before | after | change | update seconds | load avg |",
            "|---|---|---|---|---|---|",
        ]
        for name, label in (("with_val", "val/good + 20"), ("stored_val", "stored val + 20")):
            r = t[name]
            change = r["auroc_after"] - r["auroc_before"]
            lines.append(
                f"| {label} | {r['auroc_before']:.4f} | {r['auroc_after']:.4f} | {change:+.4f} "
                f"| {r['seconds']:.1f} | {r['load_average']:.1f} |"
            )
        lines.append("")
    (HERE / "update_results.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="tray6,drift,transistor")
    parts = parser.parse_args().parts.split(",")
    warnings.simplefilter("ignore", ThresholdWarning)
    torch.set_num_threads(THREADS)
    OUT.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["machine"] = machine()
    sets = data()
    for part in parts:
        load = os.getloadavg()[0]
        if part == "tray6":
            results["tray6"] = {kind: recovery(kind, sets) for kind in ("knn", "rx")}
        elif part == "drift":
            results["drift"] = {kind: drift(kind, sets) for kind in ("knn", "rx")}
        elif part == "transistor":
            results["transistor"] = transistor()
        print(json.dumps({part: results.get(part), "load_before": load}), flush=True)
        RESULTS.write_text(json.dumps(results, indent=1))
        write_results(results)


if __name__ == "__main__":
    main()
