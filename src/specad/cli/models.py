"""Commands that fit, train, run and report detectors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from specad.cli.app import (
    Axes,
    Device,
    Force,
    NamesInHelp,
    Runtime,
    Scheduler,
    Variable,
    Workers,
    app,
    err,
    fail,
    fmt_number,
    out,
)

if TYPE_CHECKING:
    from specad.data import Dataset
    from specad.models.registry import ModelSpec


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Training YAML config.")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: key.sub=value.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = None,
    force: Force = False,
) -> None:
    """Train EfficientAD on a dataset's normal cubes; prints the model path last."""
    from specad.fit import train
    from specad.models.efficientad.config import load_config

    sets = list(overrides or []) + ([f"train.device={device}"] if device else [])
    cfg = load_config(config, sets)
    run = out_dir or Path("runs") / config.stem
    path = train(cfg, run, resume=resume, force=force)
    out.print(str(path), markup=False, highlight=False, soft_wrap=True)


def _load_detector(
    model: str,
    dataset: Dataset | None,
    device: str,
    runtime: str = "auto",
    sets: list[str] | None = None,
):
    """A saved model, or a detector named in the registry (`fit_on_dataset_names`): that
    detector fitted on ``dataset``'s train/good with the ``--set`` values ``sets``."""
    from specad.fit import fit_on_dataset
    from specad.inference import Detector
    from specad.models.registry import ModelSpec, fit_on_dataset_names

    spec = ModelSpec.parse(model)
    if spec.kind is not None:
        if dataset is None:
            fail(f"--model {model} needs a dataset to fit on; save one with `specad fit {model}`")
        settings = fit_settings(spec, sets, device=device)
        return fit_on_dataset(spec.kind, dataset, **settings).use_runtime(runtime)
    if sets:
        names = ", ".join(fit_on_dataset_names())
        fail(f"--set is for detectors fitted here ({names}), not {model}")
    return Detector.load(spec.path, device=device, runtime=runtime)


def fit_settings(model: str | ModelSpec, sets: list[str] | None, **given: Any) -> dict[str, Any]:
    """``--set`` values (over ``given``) for fitting ``model`` on a dataset, all validated before
    any data is read: the fit options (`specad.fit.FitOptions`) and the detector's own
    parameters (its class refuses a bad one), each error one line naming the key."""
    from specad.bounds import parse_sets
    from specad.fit import FitOptions
    from specad.models.registry import ModelSpec, detector_class

    options, params = FitOptions.split(given | parse_sets(sets))
    kind = ModelSpec.parse(model).kind
    if kind is not None:
        detector_class(kind)(**params)
    return options.model_dump() | params


@app.command(cls=NamesInHelp)
def predict(
    model: Annotated[str, typer.Argument(help="Model file or run folder.")],
    inputs: Annotated[list[Path], typer.Argument(help="Cube files or folders.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")],
    tiled: Annotated[bool, typer.Option(help="Native-resolution overlapping tiles.")] = False,
    variable: Variable = None,
    axes: Axes = None,
    device: Device = "auto",
    runtime: Runtime = "auto",
    force: Force = False,
    scheduler: Scheduler = None,
    workers: Workers = None,
    explain: Annotated[
        bool,
        typer.Option(
            help="Also write regions.jsonl: each region above the threshold, with its area, box, "
            "scores and the five bands deviating most from the model's normal pixels."
        ),
    ] = False,
) -> None:
    """Score cubes: float32 TIFF maps, PNG overlays and scores.csv. Bad cubes are listed."""
    from specad.io import refuse_overlap
    from specad.models.registry import ModelSpec
    from specad.predict import cluster, expand_inputs, predict_files

    saved = ModelSpec.parse(model).path
    refuse_overlap(out_dir, [*inputs, *([saved] if saved is not None else [])])
    det = _load_detector(model, None, device, runtime)
    err.print(f"runtime: {det.runtime}", highlight=False)
    files = expand_inputs(inputs)
    with cluster(scheduler, workers, det, model, device) as dask:
        run = predict_files(
            det,
            files,
            out_dir,
            tiled=tiled,
            force=force,
            variable=variable,
            axes=axes,
            progress=True,
            cluster=dask,
            explain=explain,
        )
    out.print(f"wrote {run.out} ({run.scored} cubes)")
    if run.failed:
        for line in run.failed:
            err.print(f"skipped: {line}", markup=False, highlight=False, soft_wrap=True)
        fail(f"{len(run.failed)} of {len(files)} inputs could not be scored")


@app.command(cls=NamesInHelp)
def evaluate(
    model: Annotated[
        str, typer.Argument(help="Model file, run folder, or fitted here: {fit_on_dataset}.")
    ],
    dataset: Annotated[Path, typer.Argument(help="Dataset folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
    far: Annotated[
        float | None,
        typer.Option(
            help="Refit the image threshold at this false-alarm rate on val/good (default: the "
            "model's own threshold, the one predict uses)."
        ),
    ] = None,
    tiled: Annotated[bool, typer.Option(help="Native-resolution overlapping tiles.")] = False,
    params: Annotated[
        list[str] | None,
        typer.Option("--set", help="A fitting parameter of {fit_on_dataset}: key=value."),
    ] = None,
    axes: Axes = None,
    device: Device = "auto",
    runtime: Runtime = "auto",
    scheduler: Scheduler = None,
    workers: Workers = None,
) -> None:
    """Image/pixel AUROC, AUPRO, per-class AUROC and thresholds on the test split."""
    import json

    from specad.data import load_dataset

    ds = load_dataset(dataset, axes)  # every structural problem, before torch is even imported
    from specad.bounds import validate
    from specad.evaluate import evaluate_detector
    from specad.fit import FitOptions
    from specad.predict import cluster

    if far is not None:
        validate(FitOptions, {"far": far}, None, "--")
    det = _load_detector(model, ds, device, runtime, params)
    with cluster(scheduler, workers, det, model, device) as dask:
        metrics = evaluate_detector(
            det, ds, far=far, tiled=tiled, progress=not as_json, cluster=dask
        )
    metrics["runtime"] = det.runtime
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    table = Table(title=f"{model} on {dataset} ({det.runtime})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("image_auroc", "image_f1_max", "pixel_auroc", "aupro_0.3"):
        table.add_row(key, fmt_number(metrics.get(key)))
    out.print(table)
    per = Table(title="per anomaly class")
    for col in ("class", "images", "image AUROC", "pixel AUROC"):
        per.add_column(col)
    for name, row in metrics["per_class"].items():
        per.add_row(
            name,
            str(row["n_images"]),
            fmt_number(row["image_auroc"]),
            fmt_number(row["pixel_auroc"]),
        )
    out.print(per)


@app.command("export")
def export_cmd(
    model: Annotated[Path, typer.Argument(help="Model file or run folder.")],
    fmt: Annotated[str, typer.Option("--format", help="Only 'onnx' for now.")] = "onnx",
    int8: Annotated[
        bool, typer.Option(help="Also write model.int8.onnx, calibrated on normal images.")
    ] = False,
    data: Annotated[
        Path | None, typer.Option(help="Dataset for calibration (default: the training one).")
    ] = None,
) -> None:
    """Write model.onnx (and model.int8.onnx) beside the model, for the fast CPU runtimes.

    int8 is calibrated on training images and gets its own threshold from the validation ones
    if it ranks their scores as fp32 does (else `auto` never runs it). With a dataset, every
    runtime is then timed on this CPU and checked against fp32 on validation images; `auto`
    takes the fastest accurate one here (runtime.json).
    """
    from specad.data import load_dataset, load_inputs
    from specad.export import (
        calibration_images,
        export_detector,
        exportable,
        measure_runtimes,
    )
    from specad.inference import Detector
    from specad.models.base import Trained
    from specad.models.modelfile import load_model, model_file

    if fmt != "onnx":
        fail(f"unknown export format '{fmt}' (only 'onnx')")
    det = Detector(*load_model(model), device="cpu")  # its first runtime: torch, if exportable
    exportable(det.model, model_file(model))  # one line before any data is read
    images = validation = None
    if int8 or data is not None:
        root = data or (det.model.training_data if isinstance(det.model, Trained) else None)
        if root is None or not str(root) or not root.is_dir():
            fail(f"{root or 'a dataset'}: calibration dataset not found; pass --data DIR")
        ds = load_dataset(root)
        images = load_inputs(det.meta.preprocess, calibration_images(ds.require("train"))).x
        validation = load_inputs(det.meta.preprocess, ds.require("val")).x
    far = det.model.calibration_.far  # the rate its own threshold was set at
    diffs = export_detector(det, model, images, int8=int8, validation=validation, far=far)
    rank = diffs.pop("int8_rank", None)
    for name, diff in diffs.items():
        out.print(f"{name}: largest map difference from torch fp32 {diff:.3g}")
    if rank is not None:
        out.print(f"int8: ranks the validation images' scores as fp32 with Spearman {rank}")
    if validation is not None:  # which runtime is fastest on this CPU, among the accurate ones
        record = measure_runtimes(det, model, calibration_images(validation, 8))
        for name, row in record["runtimes"].items():
            speeds = ", ".join(f"{v} {k.rpartition('_')[2]}" for k, v in row.items() if "_b" in k)
            out.print(f"{name}: {speeds} images/s, agreement {row['agreement']}")
        out.print(f"auto on {record['cpu']}: {record['choice']}")


@app.command("fit", cls=NamesInHelp)
def fit_cmd(
    model: Annotated[str, typer.Argument(help="One of {fit_on_dataset}.")],
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (uses train/good, val/good).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the model.")],
    params: Annotated[
        list[str] | None,
        typer.Option("--set", help="A fitting parameter: key=value (e.g. image_size=320)."),
    ] = None,
    force: Force = False,
) -> None:
    """Fit a training-free detector on normal cubes (threshold on val/good) and save it, built
    as every output is (`specad.io.atomic_dir`): one writer at a time, and no empty or partial
    folder on failure."""
    from specad.data import load_dataset
    from specad.io import atomic_dir, refuse_overlap

    refuse_overlap(out_dir, [dataset])
    ds = load_dataset(dataset, splits=("train", "val"))  # every structural problem, before torch
    settings = fit_settings(model, params)
    from specad.fit import fit_on_dataset
    from specad.models.modelfile import MODEL_FILE

    with atomic_dir(out_dir, force) as tmp:
        fit_on_dataset(model, ds, **settings).save(tmp)
    out.print(str(out_dir / MODEL_FILE), markup=False, highlight=False, soft_wrap=True)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything.")] = Path(
        "demo"
    ),
    train_efficientad: Annotated[
        bool, typer.Option("--train", help="Also train EfficientAD (CPU preset, 30-60 min).")
    ] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override an EfficientAD training key: key.sub=value."),
    ] = None,
    size: Annotated[int | None, typer.Option(help="Smaller images for a quick look.")] = None,
    force: Force = False,
) -> None:
    """Synthesise tray6, fit knn (and train EfficientAD with --train), compare with RX, report."""
    from specad.demo import run_demo

    index = run_demo(
        out_dir, force=force, train_efficientad=train_efficientad, overrides=overrides, size=size
    )
    _print_report(index)


@app.command(cls=NamesInHelp)
def report(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Report YAML.")] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--model", help="name=path, or one of {fit_on_dataset} (fitted here). Repeatable."
        ),
    ] = None,
    datasets: Annotated[list[Path] | None, typer.Option("--dataset", help="Repeatable.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Folder to create.")] = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
    force: Force = False,
) -> None:
    """Write an HTML report (ROC/PR, per-class tables, per-image panels) for one or more models."""
    from specad.io import refuse_overlap
    from specad.report import load_report_config, named_models, write_report

    flags: dict = {}
    if models:
        flags["models"] = named_models(models)
    if datasets:
        flags["datasets"] = [str(d) for d in datasets]
    if out_dir is not None:
        flags["out"] = str(out_dir)
    if force:
        flags["force"] = True
    if scheduler is not None and workers is not None:
        fail("give --scheduler or --workers, not both")
    flags |= {k: v for k, v in (("scheduler", scheduler), ("workers", workers)) if v is not None}
    cfg = load_report_config(config, **flags)
    refuse_overlap(cfg.out, [config] if config is not None else [])  # datasets, models: there
    _print_report(write_report(cfg, progress=True))


def _print_report(index: Path) -> None:
    """Each model's headline figures on each dataset (from the report's ``metrics.json``), then
    the report's path as the last line."""
    import json

    from specad.metrics import AUPRO_FPR_LIMIT

    aupro = f"aupro_{AUPRO_FPR_LIMIT}"
    summary = json.loads((index.parent / "metrics.json").read_text())
    table = Table("model", "dataset", "image AUROC", "pixel AUROC", f"AUPRO@{AUPRO_FPR_LIMIT}")
    for model, record in summary["models"].items():
        for dataset, m in record["datasets"].items():
            figures = (m.get(k) for k in ("image_auroc", "pixel_auroc", aupro))
            table.add_row(model, dataset, *(fmt_number(f) for f in figures))
    out.print(table)
    out.print(f"report: {index}", markup=False, highlight=False, soft_wrap=True)
