"""Merge both sides' JSON into one table with specad/anomalib ratios; write the results file.

Ratios follow the issue's targets: images/s over anomalib's for inference (goal >= 2), seconds
per step over anomalib's for training (goal <= 0.6), always against anomalib's fp32 eager path
(what a user gets from anomalib) with the same task, batch and channel count.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness import cpu_family

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out"
TTA_TARGET_S = 15 * 60
GOALS = {"infer": 2.0, "train": 0.6}

COLUMNS = [
    "side",
    "model",
    "path",
    "ch",
    "task",
    "batch",
    "ms/call",
    "img/s or s/step",
    "specad/anomalib",
    "GFLOP/img",
    "GFLOP/s",
    "% of peak",
    "RSS +MB",
]


def _speed(c: dict[str, Any]) -> float:
    """images/s for inference, seconds per step for training: the figures the targets use."""
    return c["batch"] / c["median_s"] if c["task"] == "infer" else c["median_s"]


def _reference(c: dict[str, Any], anomalib: list[dict[str, Any]]) -> dict[str, Any] | None:
    for ref in anomalib:
        same = all(ref[k] == c[k] for k in ("task", "batch", "channels"))
        if same and ref["path"] == "fp32" and "error" not in ref:
            return ref
    return None


def _ratio(c: dict[str, Any], anomalib: list[dict[str, Any]]) -> float | None:
    ref = _reference(c, anomalib)
    return None if ref is None else _speed(c) / _speed(ref)


def _peak(c: dict[str, Any], peaks: dict[str, float]) -> float | None:
    """The matmul ceiling in the dtype the case computes in; none is measured for int8."""
    runtime = c.get("runtime", c["path"])
    if runtime == "int8":
        return None
    return peaks.get("bf16" if "bf16" in runtime else "fp32")  # no bf16 peak without native bf16


def _row(c: dict[str, Any], peaks: dict[str, float], anomalib: list[dict[str, Any]]) -> list[str]:
    path = c["path"]
    if c.get("runtime", path) != path:  # the default path: say what it chose
        path = f"{path} ({c['runtime']})"
    head = [c["side"], c["model"], path, str(c["channels"]), c["task"], str(c["batch"])]
    if "error" in c:
        return head + [f"error: {c['error']}"] + [""] * (len(COLUMNS) - len(head) - 1)
    gflops = c["flops"] / c["median_s"] / 1e9
    ratio = _ratio(c, anomalib) if c["side"] == "specad" else None
    speed = _speed(c)
    peak = _peak(c, peaks)
    return head + [
        f"{c['median_s'] * 1e3:.0f}",
        f"{speed:.2f} img/s" if c["task"] == "infer" else f"{speed:.2f} s",
        "–" if ratio is None else f"{ratio:.2f}×",
        f"{c['flops'] / c['batch'] / 1e9:.1f}",
        f"{gflops:.1f}",
        "–" if peak is None else f"{100 * gflops / peak:.0f}%",
        f"{c['rss_peak_mb'] - c['rss_base_mb']:.0f}",
    ]


def table(sides: list[dict[str, Any]]) -> list[str]:
    anomalib = [c for s in sides if s["side"] == "anomalib" for c in s["cases"]]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for s in sides:
        for c in s["cases"]:
            row = _row(c | {"side": s["side"]}, s["matmul_peak_gflops"], anomalib)
            lines.append("| " + " | ".join(row) + " |")
    return lines


def targets(specad: dict[str, Any], anomalib: dict[str, Any]) -> list[str]:
    """Per teacher and target: the best path's ratio and the default (Detector) path's."""
    lines = []
    for task, batch in (("infer", 1), ("infer", 8), ("train", 1)):
        goal = GOALS[task]
        for model in dict.fromkeys(c["model"] for c in specad["cases"]):
            found = [
                (_ratio(c, anomalib["cases"]), c["path"])
                for c in specad["cases"]
                if (c["model"], c["task"], c["batch"], c["channels"]) == (model, task, batch, 3)
                and "error" not in c
            ]
            found = [(r, p) for r, p in found if r is not None]
            if not found:
                continue
            pick = max if task == "infer" else min
            best, path = pick(found)
            met = best >= goal if task == "infer" else best <= goal
            parts = [f"best {best:.2f}× ({path})"]
            parts += [f"default {r:.2f}×" for r, p in found if p == "detector"]
            verdict = "met" if met else "missed"
            lines.append(
                f"- {task} b{batch}, {model}, 3 ch (goal {'≥' if task == 'infer' else '≤'} "
                f"{goal}×): {', '.join(parts)}: {verdict}"
            )
    return lines


def tta_lines(tta: dict[str, Any]) -> list[str]:
    head = (
        f"- {tta['date']}, config `{tta['config']}`, data `{tta['data']}`, "
        f"{tta['threads']} threads, evaluated every {tta['every']} steps: "
    )
    if tta.get("reached_s") is None:
        last = tta["history"][-1] if tta["history"] else {}
        return [
            head + f"not reached in {last.get('step', 0)} steps ({last.get('clock_s', 0):.0f} s)"
        ]
    verdict = "met" if tta["reached_s"] <= TTA_TARGET_S else "missed"
    return [
        head + f"**{tta['reached_s']:.0f} s** (step {tta['reached_step']}; "
        f"goal ≤ {TTA_TARGET_S} s: {verdict})"
    ]


def report(specad: dict[str, Any], anomalib: dict[str, Any], tta: dict[str, Any] | None) -> str:
    lines = [
        "# Speed benchmark: specad vs anomalib 2.7.0 EfficientAd",
        "",
        f"- date: {specad['date']}",
        f"- CPU: {specad['cpu']} ({specad['cpu_id']}), {specad['cpu_count']} logical cores, "
        f"flags: {', '.join(specad['cpu_flags']) or 'none of note'}",
        f"- threads: specad {specad['threads']}, anomalib {anomalib['threads']}",
        f"- torch: specad {specad['torch']}, anomalib {anomalib['torch']}",
        "- input: 256×256 random images; EfficientAD-S; batch-1 latency is the median of the "
        "timed calls",
        "",
        "## Peak (2048×2048 matmul, best of the timed calls)",
        "",
    ]
    for s in (specad, anomalib):
        peaks = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in s["matmul_peak_gflops"].items())
        lines.append(f"- {s['side']} venv: {peaks}")
    lines += ["", "## Results", "", *table([specad, anomalib]), ""]
    lines += [
        "specad/anomalib: images/s ratio for infer rows, s/step ratio for train rows, against "
        "anomalib's fp32 row of the same task and batch. GFLOP/img: counted by "
        "`torch.utils.flop_counter.FlopCounterMode` on the torch model (train: forward + "
        "backward of one step); onnxruntime paths do the same arithmetic, so GFLOP/s for them "
        "is that count over their time (for int8, integer operations). % of peak: against the "
        "matmul peak in the path's dtype (none is measured for int8). RSS +MB: peak resident "
        "memory of the case's own process over that process after its imports.",
        "",
        "## Targets (3 channels)",
        "",
        *targets(specad, anomalib),
    ]
    if tta is not None:
        lines += ["", "## Time to image and pixel AUROC ≥ 0.95 (tray6)", "", *tta_lines(tta)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specad", type=Path, default=OUT / "specad.json")
    parser.add_argument("--anomalib", type=Path, default=OUT / "anomalib.json")
    parser.add_argument("--tta", type=Path, default=OUT / "time_to_accuracy.json")
    parser.add_argument(
        "--results", type=Path, help="default: results-<cpu family>.md, one file per family"
    )
    args = parser.parse_args()
    specad = json.loads(args.specad.read_text())
    if args.results is None:
        args.results = HERE / f"results-{cpu_family(specad)}.md"
    anomalib = json.loads(args.anomalib.read_text())
    tta = json.loads(args.tta.read_text()) if args.tta.is_file() else None
    text = report(specad, anomalib, tta)
    args.results.write_text(text)
    print(text, end="")
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
