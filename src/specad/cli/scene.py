"""``specad scene``: single-scene detectors on one cube against its own background."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from specad.cli.app import (
    Axes,
    Force,
    NamesInHelp,
    app,
    fail,
    fmt_number,
    out,
)


@app.command(cls=NamesInHelp)
def scene(
    file: Annotated[Path, typer.Argument(help="One cube (any supported format).")],
    truth: Annotated[
        str | None, typer.Option(help="Mask file, or the name of a variable in the cube's .mat.")
    ] = None,
    detector: Annotated[
        str,
        typer.Option(
            help="Comma-separated: auto (global RX on MNF 20, PCA 20 and all bands, "
            "rank-fused), {scene_detectors} (one table)."
        ),
    ] = "auto",
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
    axes: Axes = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for each map (TIFF, PNG), its page with the spectral viewer (HTML) "
            "and scene.json.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    force: Force = False,
) -> None:
    """Score every pixel of one scene against its own background (single-scene mode)."""
    from specad.bounds import text_value
    from specad.io import refuse_overlap
    from specad.models.bands import BandPrep, parse_ranges
    from specad.models.scene import AUTO, SCENE_DETECTORS
    from specad.scenes import (
        describe_bands,
        describe_params,
        read_truth,
        scene_scores,
        strict_json,
        write_scene_outputs,
    )

    if out_dir is not None:  # replacing --out must never delete the cube or its truth
        refuse_overlap(out_dir, [file, *([truth] if truth and Path(truth).exists() else [])])
    names = [d.strip() for d in detector.split(",") if d.strip()]
    known = [AUTO, *SCENE_DETECTORS]
    unknown = [d for d in names if d not in known]
    if not names or unknown:
        fail(f"unknown detector '{','.join(unknown)}' (one of {', '.join(known)})")
    params: dict[str, dict] = {}
    for item in param or []:
        key, eq, value = item.partition("=")
        name, dot, field = key.partition(".")
        if not (eq and dot and field):
            fail(f"--param '{item}': expected DETECTOR.NAME=VALUE")
        params.setdefault(name, {})[field] = text_value(value, f"--param {key}")
    prep = BandPrep(
        drop=parse_ranges(drop_bands or ""),
        drop_nm=parse_ranges(drop_nm or ""),
        reduce=reduce,
        components=components,
    )
    runs, record = scene_scores(file, truth, variable, axes, names, params, prep)
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
        from specad.io import read_cube
        from specad.report.scene import write_scene_pages

        mask = None if truth is None else read_truth(file, truth)
        cube = read_cube(file, variable=variable, axes=axes)
        kept = prep.kept_bands(cube)
        write_scene_outputs(
            runs,
            out_dir,
            mask,
            summary,
            force,
            pages=lambda folder: write_scene_pages(folder, file, cube, runs, mask, kept),
        )
    if as_json:
        out.print(strict_json(summary, indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    out.print(f"{file}: {shape[0]}x{shape[1]} pixels scored, {describe_bands(record)}")
    table = Table("detector", "pixel AUROC", "seconds", "parameters")
    for r in runs:
        table.add_row(
            r.detector, fmt_number(r.auroc), f"{r.seconds:.2f}", describe_params(r.params)
        )
    out.print(table)
    if len(runs) == 1 and runs[0].auroc is not None:
        out.print(f"pixel AUROC: {runs[0].auroc:.4f}")
