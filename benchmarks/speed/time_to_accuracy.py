"""Wall-clock seconds of EfficientAD training until image and pixel AUROC reach a target.

This is the speed figure a user feels. Training runs in chunks of ``--every`` steps through
``specad.fit.train(stop_after=...)`` and ``resume=True``, which continues exactly as an
uninterrupted run would; after each chunk the checkpoint is scored on the whole test split by
``specad.evaluate.evaluate_detector``. The clock counts what a plain ``specad train`` would
spend: the first chunk's whole wall time (loading, teacher statistics) plus the training-loop
seconds of later chunks; the evaluations and each resume's set-up are not counted. Each resume
decodes the penalty images again, a small over-count; the time found is exact to within a chunk.

By default it runs the CPU preset on tray6 (made if missing) until image and pixel AUROC both
reach 0.95. On real data (issue 29: AUROC against training time for each teacher), point
``--data`` at a dataset in specad's layout, choose the teacher with ``--set``, and give the
budget, e.g. 30 minutes:

    python benchmarks/speed/time_to_accuracy.py --data benchmarks/out/real/mvtec_transistor \
        --set model.teacher=efficientnet-lite0 --target 0.95 --pixel-target 0 \
        --budget 1800 --every 100 --json benchmarks/out/tta-transistor-lite0.json
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from specad.data import Dataset, load_dataset, load_inputs
from specad.evaluate import evaluate_detector
from specad.fit import prepare, train
from specad.inference import Detector
from specad.models.efficientad.build import build_efficientad
from specad.models.efficientad.config import EfficientADConfig as Config
from specad.models.efficientad.config import load_config
from specad.models.efficientad.detector import EfficientADDetector
from specad.models.efficientad.train_loop import CHECKPOINT
from specad.models.modelfile import ModelMeta
from specad.runtime import cpu_model, pick_device
from specad.synth import synthesize

HERE = Path(__file__).resolve().parent


def fitted_meta(cfg: Config, ds: Dataset) -> tuple[ModelMeta, torch.Tensor]:
    """The preprocessing that ``train`` fits (it is saved only with the final model), and the
    validation input that the map quantiles are fitted on."""
    pre, meta, _ = prepare(cfg, ds)
    return meta, load_inputs(pre, ds.require("val")).x


def score_checkpoint(
    cfg: Config, run: Path, meta: ModelMeta, val_x: torch.Tensor, ds: Dataset
) -> dict[str, float]:
    """Image and pixel AUROC of the checkpoint, made into a detector as ``train`` finishes one,
    and what needs no labels: the mean raw student-teacher and student-autoencoder distances on
    the held-out normal (validation) images, i.e. the training losses on images it never saw."""
    device = pick_device(cfg.train.device)
    state = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    n_channels = len(meta.preprocess.channels)
    model = build_efficientad(
        cfg.model, n_channels, cfg.data.image_size, meta.wavelengths, cfg.train.seed
    )
    model.load_state_dict(state)
    model.to(device).eval()
    with torch.inference_mode():
        pairs = [model.maps(x.to(device)) for x in val_x.split(8)]
    held_out = {
        f"val_{name}": float(torch.cat([pair[i] for pair in pairs]).mean())
        for i, name in enumerate(("st", "ae"))
    }
    model.fit_quantiles(val_x.split(8))
    det = EfficientADDetector.from_network(
        model, cfg.model, cfg.training, n_channels, meta.wavelengths
    )
    det.calibrate(det.scores(val_x.to(device)), cfg.train.threshold_far)
    metrics = evaluate_detector(Detector(det, meta, device), ds)
    nan = float("nan")  # undefined (one class only) compares false with the target, as wanted
    return {
        "image_auroc": metrics["image_auroc"] or nan,
        "pixel_auroc": metrics["pixel_auroc"] or nan,
        **held_out,
    }


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository when inside it: results files name no machine."""
    path, root = Path(path).resolve(), HERE.parents[1].resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name


def loop_seconds(run: Path) -> float:
    """Training-loop seconds of the last ``train`` call, from its last metrics row."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return float(json.loads(lines[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE.parents[1] / "examples" / "cpu.yaml")
    parser.add_argument("--data", type=Path, help="a dataset (default: the config's root)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--every", type=int, default=50, help="steps between evaluations")
    parser.add_argument("--target", type=float, default=0.95, help="image AUROC to reach")
    parser.add_argument("--pixel-target", type=float, help="pixel AUROC (default: --target)")
    parser.add_argument("--budget", type=float, help="stop once the clock passes this (s)")
    parser.add_argument("--run", type=Path, default=HERE.parent / "out" / "tta-run")
    parser.add_argument("--json", type=Path, default=HERE.parent / "out" / "time_to_accuracy.json")
    args = parser.parse_args()

    # monitoring inside train() would add its own evaluations to the clock
    overrides = [*args.set, "train.val_every=0"]
    if args.data is not None:
        if not args.data.is_dir():
            raise SystemExit(f"error: {args.data}: no such dataset folder")
        overrides.append(f"data.root={args.data.resolve()}")
    cfg = load_config(args.config, overrides)
    if not cfg.data.root.is_dir():  # the config's own tray6 root: made on first use
        print(f"making the tray6 dataset in {cfg.data.root}")
        synthesize(cfg.data.root, preset="tray6")
    ds = load_dataset(cfg.data.root)
    meta, val_x = fitted_meta(cfg, ds)
    pixel_target = args.target if args.pixel_target is None else args.pixel_target
    budget = float("inf") if args.budget is None else args.budget

    clock, step, history = 0.0, 0, []
    result = {"reached_s": None, "reached_step": None}
    while step < cfg.train.steps:
        stop = min(step + args.every, cfg.train.steps)
        start = time.perf_counter()
        train(cfg, args.run, resume=step > 0, force=True, stop_after=stop, progress=False)
        wall = time.perf_counter() - start
        chunk = wall if step == 0 else loop_seconds(args.run)
        clock += chunk
        step = stop
        point = score_checkpoint(cfg, args.run, meta, val_x, ds)
        history.append({"step": step, "clock_s": clock, **point})
        image, pixel = point["image_auroc"], point["pixel_auroc"]
        print(
            f"step {step:5d}  {clock:7.1f} s  image AUROC {image:.4f}  pixel AUROC {pixel:.4f}  "
            f"held-out normal distance st {point['val_st']:.4f} ae {point['val_ae']:.4f}"
        )
        write_summary(args, cfg, pixel_target, result, history)  # a stopped run keeps its points
        if image >= args.target and pixel >= pixel_target:
            result = {"reached_s": clock, "reached_step": step}
            break
        # stop before a chunk that would end past the budget (the next costs about what this
        # one did), so that no point is scored outside it
        if clock + chunk > budget:
            break

    if result["reached_s"] is None:
        print(f"not reached in {step} steps ({clock:.0f} s)")
    else:
        print(f"time to accuracy: {clock:.0f} s (step {step})")
    write_summary(args, cfg, pixel_target, result, history)


def write_summary(
    args: argparse.Namespace, cfg: Config, pixel_target: float, result: dict, history: list
) -> None:
    """The curve so far, with what produced it, as ``--json``."""
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "config": repo_relative(args.config),
        "data": repo_relative(cfg.data.root),
        "every": args.every,
        "teacher": cfg.model.teacher,
        "target": args.target,
        "pixel_target": pixel_target,
        "budget_s": args.budget,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **result,
        "history": history,
    }
    args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
