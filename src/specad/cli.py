"""The ``specad`` command: a thin shell over the Python API.

Every command turns a :class:`~specad.errors.SpecadError` into one line on stderr and exit code 2,
so users never see a traceback for bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from specad.errors import SpecadError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Anomaly detection for multispectral and hyperspectral cubes with any number of channels.",
)
dataset_app = typer.Typer(no_args_is_help=True, help="Inspect datasets.")
app.add_typer(dataset_app, name="dataset")

out = Console()
err = Console(stderr=True)

Force = Annotated[bool, typer.Option("--force", help="Replace a non-empty output folder.")]


def fail(message: str, code: int = 2) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create.")],
    preset: Annotated[str, typer.Option(help="tray6, tray-rgb or tray-hsi.")] = "tray6",
    seed: Annotated[int, typer.Option(help="Same seed, same dataset.")] = 0,
    size: Annotated[int | None, typer.Option(help="Image side in pixels.")] = None,
    difficulty: Annotated[float | None, typer.Option(help="1 = default; higher is harder.")] = None,
    force: Force = False,
) -> None:
    """Write a synthetic tray dataset (sawdust, RGB + SWIR) in specad's layout."""
    from specad.synth import synthesize

    overrides = {k: v for k, v in {"size": size, "difficulty": difficulty}.items() if v is not None}
    path = synthesize(out_dir, preset=preset, seed=seed, force=force, **overrides)
    out.print(f"wrote {path}")


@dataset_app.command("import")
def dataset_import(
    source: Annotated[Path, typer.Argument(help="Folder in a foreign layout (MTD, MVTec).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create.")],
    layout: Annotated[str, typer.Option(help="auto, mtd or mvtec.")] = "auto",
    val_fraction: Annotated[
        float, typer.Option(help="Share of train/good kept for val/good (mvtec).")
    ] = 0.1,
    force: Force = False,
) -> None:
    """Convert a foreign dataset layout into specad's (images become cubes, masks class ids)."""
    from specad.data import load_dataset
    from specad.importing import import_dataset

    path = import_dataset(source, out_dir, layout, val_fraction=val_fraction, force=force)
    out.print(f"wrote {path} ({len(load_dataset(path).samples)} images)", soft_wrap=True)


@dataset_app.command("check")
def dataset_check(
    root: Annotated[Path, typer.Argument(help="Dataset folder.")], layout: Layout = None
) -> None:
    """Validate a dataset and print a summary; exit 2 if any problem is found."""
    from specad.data import check_dataset

    report = check_dataset(root, layout)
    table = Table(title=f"{report.root} ({report.layout} layout)")
    table.add_column("split")
    table.add_column("class")
    table.add_column("cubes", justify="right")
    for (split, label), n in sorted(report.counts.items()):
        table.add_row(split, label, str(n))
    out.print(table)
    out.print(f"channels: {', '.join(map(str, report.channels)) or '-'}")
    out.print(f"bands: {', '.join(report.bands) or '-'}")
    wl = ", ".join(f"{w:g}" for w in report.wavelengths) if report.wavelengths else "unknown"
    out.print(f"wavelengths (nm): {wl}")
    out.print(f"sizes (HxW): {report.size_summary()}")
    out.print(f"stored dtype: {', '.join(report.dtypes) or '-'}")
    out.print(f"value range: {report.value_range[0]:.4g} .. {report.value_range[1]:.4g}")
    out.print(f"classes: {', '.join(f'{i}={n}' for i, n in sorted(report.classes.items()))}")
    if report.problems:
        for problem in report.problems:
            err.print(f"problem: {problem}", markup=False, highlight=False, soft_wrap=True)
        fail(f"{report.root}: {len(report.problems)} problem(s) found")
    out.print("[green]no problems found[/green]")


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
    from specad.config import load_config
    from specad.train import train

    sets = list(overrides or []) + ([f"train.device={device}"] if device else [])
    cfg = load_config(config, sets)
    run = out_dir or Path("runs") / config.stem
    path = train(cfg, run, resume=resume, force=force)
    out.print(str(path), markup=False, highlight=False, soft_wrap=True)


def _load_detector(model: str, dataset: Path | None, device: str, runtime: str = "auto"):
    """A saved model, or ``rx``/``knn``/...: that detector fitted on the dataset's train/good."""
    from specad.evaluate import FIT_ON_DATASET, fit_on_dataset
    from specad.infer import Detector

    if model in FIT_ON_DATASET:
        if dataset is None:
            fail(f"--model {model} needs a dataset to fit on; save one with `specad fit {model}`")
        from specad.data import load_dataset

        return fit_on_dataset(model, load_dataset(dataset), device=device).use_runtime(runtime)
    return Detector.load(model, device=device, runtime=runtime)


Device = Annotated[str, typer.Option(help="auto (CUDA, then CPU), cpu, cuda, cuda:1 ...")]
Variable = Annotated[
    str | None, typer.Option(help="Array to read from .mat/.npz files (default: largest 3-D).")
]
Layout = Annotated[
    str | None,
    typer.Option(
        help="Stored axis order of plain arrays: hwc, chw, whc, cwh, hcw or wch (default: the "
        "format's convention; guessed, with a note, for .npy/.npz and bare TIFF arrays)."
    ),
]
Runtime = Annotated[
    str,
    typer.Option(
        help="auto (fastest exact one available), torch, bf16, onnx, or int8 (fastest on CPUs; "
        "approximate maps)."
    ),
]

Scheduler = Annotated[
    str | None,
    typer.Option(help="Score on this Dask scheduler (tcp://HOST:8786); needs the dask extra."),
]
Workers = Annotated[
    int | None,
    typer.Option(min=1, help="Score on a local Dask cluster of N processes; needs the dask extra."),
]


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Model file or run folder.")],
    inputs: Annotated[list[Path], typer.Argument(help="Cube files or folders.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")],
    tiled: Annotated[bool, typer.Option(help="Native-resolution overlapping tiles.")] = False,
    variable: Variable = None,
    layout: Layout = None,
    device: Device = "auto",
    runtime: Runtime = "auto",
    force: Force = False,
    scheduler: Scheduler = None,
    workers: Workers = None,
) -> None:
    """Score cubes: float32 TIFF maps, PNG overlays and scores.csv. Bad cubes are listed."""
    from specad.predict import cluster, expand_inputs, predict_files

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
            layout=layout,
            progress=True,
            cluster=dask,
        )
    out.print(f"wrote {run.out} ({run.scored} cubes)")
    if run.failed:
        for line in run.failed:
            err.print(f"skipped: {line}", markup=False, highlight=False, soft_wrap=True)
        fail(f"{len(run.failed)} of {len(files)} inputs could not be scored")


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="Model file, run folder, 'rx' or 'knn'.")],
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
    layout: Layout = None,
    device: Device = "auto",
    runtime: Runtime = "auto",
    scheduler: Scheduler = None,
    workers: Workers = None,
) -> None:
    """Image/pixel AUROC, AUPRO, per-class AUROC and thresholds on the test split."""
    import json

    from specad.data import load_dataset
    from specad.evaluate import evaluate_detector
    from specad.predict import cluster

    ds = load_dataset(dataset, layout)
    det = _load_detector(model, dataset, device, runtime)
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
        table.add_row(key, _fmt(metrics.get(key)))
    out.print(table)
    per = Table(title="per anomaly class")
    for col in ("class", "images", "image AUROC", "pixel AUROC"):
        per.add_column(col)
    for name, row in metrics["per_class"].items():
        per.add_row(name, str(row["n_images"]), _fmt(row["image_auroc"]), _fmt(row["pixel_auroc"]))
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

    int8 is calibrated on training images and gets its own threshold from the validation ones.
    """
    from specad.data import load_dataset
    from specad.export import export_detector
    from specad.infer import Detector
    from specad.train import calibration_images, load_inputs

    if fmt != "onnx":
        fail(f"unknown export format '{fmt}' (only 'onnx')")
    det = Detector.load(model, device="cpu", runtime="torch")
    config = getattr(det.model, "config", None)
    if config is None:
        fail(f"{model}: ONNX export is for EfficientAD models, this one is '{det.kind}'")
    images = validation = None
    if int8 or data is not None:
        root = data or config.data.root
        if not str(root) or not root.is_dir():
            fail(f"{root}: calibration dataset not found; pass --data DIR")
        ds = load_dataset(root)
        images = load_inputs(det.meta.preprocess, calibration_images(ds.require("train"))).x
        validation = load_inputs(det.meta.preprocess, ds.require("val")).x
    far = config.train.threshold_far
    diffs = export_detector(det, model, images, int8=int8, validation=validation, far=far)
    for name, diff in diffs.items():
        out.print(f"{name}: largest map difference from torch fp32 {diff:.3g}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def scene(
    file: Annotated[Path, typer.Argument(help="One cube (any supported format).")],
    truth: Annotated[
        str | None, typer.Option(help="Mask file, or the name of a variable in the cube's .mat.")
    ] = None,
    detector: Annotated[
        str, typer.Option(help="Comma-separated: rx, lrx, crd, 2s-glrt (one table).")
    ] = "rx",
    param: Annotated[
        list[str] | None,
        typer.Option(help="Detector parameter, e.g. lrx.outer=15 or crd.lam=1e-4. Repeatable."),
    ] = None,
    drop_bands: Annotated[
        str | None, typer.Option(help="Band indices to drop, e.g. 0-4,103-112 (inclusive).")
    ] = None,
    drop_nm: Annotated[
        str | None, typer.Option(help="Wavelength ranges to drop in nm, e.g. 1340-1450.")
    ] = None,
    reduce: Annotated[str, typer.Option(help="Band reduction first: none, pca or mnf.")] = "none",
    components: Annotated[int, typer.Option(help="Components kept by --reduce.")] = 20,
    variable: Annotated[str | None, typer.Option(help="Cube variable in a .mat/.npz.")] = None,
    layout: Layout = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for each map (TIFF, PNG) and scene.json.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    force: Force = False,
) -> None:
    """Score every pixel of one scene against its own background (single-scene mode)."""
    import json

    import yaml

    from specad.evaluate import read_truth, scene_scores, write_scene_outputs
    from specad.models.bands import BandPrep, parse_ranges
    from specad.models.scene import SCENE_DETECTORS

    names = [d.strip() for d in detector.split(",") if d.strip()]
    unknown = [d for d in names if d not in SCENE_DETECTORS]
    if not names or unknown:
        fail(f"unknown detector '{','.join(unknown)}' (one of {', '.join(SCENE_DETECTORS)})")
    params: dict[str, dict] = {}
    for item in param or []:
        key, eq, value = item.partition("=")
        name, dot, field = key.partition(".")
        if not (eq and dot and field):
            fail(f"--param '{item}': expected DETECTOR.NAME=VALUE")
        params.setdefault(name, {})[field] = yaml.safe_load(value)
    prep = BandPrep(
        drop=parse_ranges(drop_bands or ""),
        drop_nm=parse_ranges(drop_nm or ""),
        reduce=reduce,
        components=components,
    )
    runs, record = scene_scores(file, truth, variable, layout, names, params, prep)
    shape = runs[0].score_map.shape
    summary = {
        "file": str(file),
        "shape": list(shape),
        "bands": record,
        "detectors": [
            {"detector": r.detector, "params": r.params, "pixel_auroc": r.auroc,
             "seconds": round(r.seconds, 3)}
            for r in runs
        ],
    }  # fmt: skip
    if out_dir is not None:
        mask = None if truth is None else read_truth(file, truth)
        write_scene_outputs(runs, out_dir, mask, summary, force)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(f"{file}: {shape[0]}x{shape[1]} pixels scored, bands: {record}")
    table = Table("detector", "pixel AUROC", "seconds", "parameters")
    for r in runs:
        table.add_row(r.detector, _fmt(r.auroc), f"{r.seconds:.2f}", str(r.params))
    out.print(table)
    if len(runs) == 1 and runs[0].auroc is not None:
        out.print(f"pixel AUROC: {runs[0].auroc:.4f}")


rx_app = typer.Typer(no_args_is_help=True, help="The RX baseline.")
app.add_typer(rx_app, name="rx")


@rx_app.command("fit")
def rx_fit(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (uses train/good, val/good).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the model.")],
    force: Force = False,
) -> None:
    """Fit global RX on normal cubes and save it like any model."""
    from specad.data import load_dataset
    from specad.evaluate import fit_on_dataset
    from specad.io import refuse_nonempty

    refuse_nonempty(out_dir, force)
    out.print(str(fit_on_dataset("rx", load_dataset(dataset)).save(out_dir)))


@app.command("fit")
def fit_cmd(
    model: Annotated[str, typer.Argument(help="knn or rx.")],
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (uses train/good, val/good).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the model.")],
    params: Annotated[
        list[str] | None,
        typer.Option("--set", help="A fitting parameter: key=value (knn: image_size=320, ...)."),
    ] = None,
    force: Force = False,
) -> None:
    """Fit a training-free detector on normal cubes (threshold on val/good) and save it."""
    from specad.config import apply_override
    from specad.data import load_dataset
    from specad.evaluate import FIT_ON_DATASET, fit_on_dataset
    from specad.io import refuse_nonempty

    if model not in FIT_ON_DATASET:
        fail(f"unknown detector '{model}'; use one of {', '.join(FIT_ON_DATASET)}")
    refuse_nonempty(out_dir, force)
    kwargs: dict = {}
    for item in params or []:
        apply_override(kwargs, item)
    out.print(str(fit_on_dataset(model, load_dataset(dataset), **kwargs).save(out_dir)))


teacher_app = typer.Typer(no_args_is_help=True, help="Teacher networks: adapt, distill, info.")
app.add_typer(teacher_app, name="teacher")


@teacher_app.command("adapt")
def teacher_adapt(
    source: Annotated[Path, typer.Argument(help="RGB teacher (.pth or .safetensors).")],
    channels: Annotated[int, typer.Option(help="Number of input channels N.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors.")],
    mapping: Annotated[str, typer.Option(help="repeat or wavelength.")] = "repeat",
    wavelengths: Annotated[
        str | None, typer.Option(help="Comma-separated band wavelengths (nm).")
    ] = None,
) -> None:
    """Widen an RGB teacher's first convolution to N channels (duplicate-and-scale)."""
    from specad.models.teachers import adapt_teacher_file

    wl = [float(w) for w in wavelengths.split(",")] if wavelengths else None
    if out_file.exists():
        fail(f"{out_file}: exists; choose another name")
    out.print(str(adapt_teacher_file(source, out_file, channels, mapping, wl)))


@teacher_app.command("distill")
def teacher_distill(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="PDN teacher .safetensors.")],
    channels: Annotated[int, typer.Option(help="Number of input channels N.")],
    extractor: Annotated[
        str, typer.Option(help="efficientnet-lite0, or module:function(in_channels) -> nn.Module.")
    ] = "efficientnet-lite0",
    images: Annotated[
        Path | None, typer.Option(help="Folder of natural images (default: scikit-image's).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Total steps (the paper: 60,000 at batch 16).")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 8,
    image_size: Annotated[int, typer.Option(help="Crop size in pixels.")] = 256,
    size: Annotated[str, typer.Option(help="PDN size: small or medium.")] = "small",
    resume: Annotated[bool, typer.Option(help="Continue from OUT's checkpoint.")] = False,
    device: Device = "auto",
) -> None:
    """Distil a feature extractor into a PDN teacher (slow on a CPU; a GPU is the place for it)."""
    import torch

    from specad.models.efficientad import PDN
    from specad.models.teachers import EfficientNetLite0Teacher, distill
    from specad.penalty import PenaltySet
    from specad.runtime import pick_device

    if out_file.exists() and not resume:
        fail(f"{out_file}: exists; use --resume to continue it or choose another name")
    dev = pick_device(device)
    if extractor == "efficientnet-lite0":
        net = EfficientNetLite0Teacher(channels)
    else:
        net = _import_callable(extractor)(channels)
    net = net.to(dev)
    x = PenaltySet(channels, image_size, folder=images).images()
    with torch.no_grad():
        out_channels = net(x[:1].to(dev)).shape[1]
    pdn = PDN(channels, out_channels=out_channels, size=size).to(dev)
    losses = distill(pdn, net, x, steps, out_file, batch_size=batch_size, resume=resume)
    if losses:
        out.print(f"last loss {losses[-1]:.4f} after {len(losses)} steps")
    out.print(str(out_file), markup=False, highlight=False, soft_wrap=True)


def _import_callable(spec: str):
    import importlib

    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        fail(f"cannot import extractor '{spec}' ({e}); expected module:function")


@teacher_app.command("info")
def teacher_info_cmd() -> None:
    """Each teacher source with its provenance (package, version, sha256, licence)."""
    from specad.models.teachers import teacher_info

    for row in teacher_info():
        out.print(f"[bold]{row['name']}[/bold]")
        for key, value in row.items():
            if key != "name" and value is not None:
                out.print(f"  {key}: {value}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything.")] = Path(
        "demo"
    ),
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a training key: key.sub=value.")
    ] = None,
    size: Annotated[int | None, typer.Option(help="Smaller images for a quick look.")] = None,
    force: Force = False,
) -> None:
    """Synthesise tray6, train the CPU preset, compare with RX, write the report."""
    from specad.demo import run_demo

    index = run_demo(out_dir, force=force, overrides=overrides, size=size)
    out.print(f"report: {index}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def report(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Report YAML.")] = None,
    models: Annotated[
        list[str] | None, typer.Option("--model", help="name=path, 'rx' or 'knn'. Repeatable.")
    ] = None,
    datasets: Annotated[list[Path] | None, typer.Option("--dataset", help="Repeatable.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Folder to create.")] = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
    force: Force = False,
) -> None:
    """Write an HTML report (ROC/PR, per-class tables, per-image panels) for one or more models."""
    from specad.report import load_report_config, write_report

    flags: dict = {}
    if models:
        flags["models"] = dict(m.split("=", 1) if "=" in m else (Path(m).stem, m) for m in models)
    if datasets:
        flags["datasets"] = [str(d) for d in datasets]
    if out_dir is not None:
        flags["out"] = str(out_dir)
    if force:
        flags["force"] = True
    if scheduler is not None and workers is not None:
        fail("give --scheduler or --workers, not both")
    flags |= {k: v for k, v in (("scheduler", scheduler), ("workers", workers)) if v is not None}
    index = write_report(load_report_config(config, **flags), progress=True)
    out.print(f"report: {index}", markup=False, highlight=False, soft_wrap=True)


def _note(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Library warnings (e.g. a guessed cube layout) as one ``note:`` line, not a traceback."""
    err.print(f"note: {message}", markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: run the app, mapping user errors to one line and exit code 2.

    An ``OSError`` that escapes (disk full, permissions) is the environment, not a bug: it is
    one line naming the file as well.
    """
    import warnings

    warnings.showwarning = _note
    try:
        app()
    except SpecadError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"error: {where}{e.strerror or e}", markup=False, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
