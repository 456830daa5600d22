"""Single-scene mode: every pixel of one cube scored against its own background.

``specad scene`` and the scene benchmarks run here: read the cube (and its truth), prepare the
bands, run the detectors of :mod:`specad.models.scene`, score pixel AUROC, write the maps.
``auto`` (the default) is `specad.models.scene.SCENE_DEFAULT`: a rank fusion of global RX on
several band preparations, chosen by leave-one-scene-out (benchmarks/scene_default_results.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from specad.errors import SpecadError
from specad.io import Cube, read_cube
from specad.metrics import pixel_auroc
from specad.models.bands import BandPrep
from specad.models.scene import AUTO, SCENE_DEFAULT, make_detector, rank_fuse


@dataclass
class SceneRun:
    """One detector's result on one scene: its (H, W) map, pixel AUROC (None without truth),
    wall-clock seconds and the parameters it ran with."""

    detector: str
    params: dict
    score_map: np.ndarray
    auroc: float | None
    seconds: float


def scene_scores(
    file: str | Path,
    truth: str | None = None,
    variable: str | None = None,
    layout: str | None = None,
    detectors: Sequence[str] = (AUTO,),
    params: dict[str, dict] | None = None,
    prep: BandPrep | None = None,
) -> tuple[list[SceneRun], dict]:
    """Score every pixel of one scene against its own background with each detector, after the
    band preparation ``prep``; pixel AUROC when truth is given. Returns the runs and the record
    of the band preparation.

    ``truth`` is a mask image, or the name of a variable stored in the same ``.mat``/``.npz``;
    ``params`` maps a detector name to its parameters (see :mod:`specad.models.scene`).
    """
    file = Path(file)
    cube = read_cube(file, variable=variable, layout=layout)
    mask = None if truth is None else read_truth(file, truth)
    if mask is not None and mask.shape != cube.shape[:2]:
        raise SpecadError(
            f"truth mask is {mask.shape[0]}x{mask.shape[1]}, the scene is "
            f"{cube.shape[0]}x{cube.shape[1]}",
            truth,
        )
    prep = prep or BandPrep()
    runs = []
    try:  # the detectors' own errors do not know the file
        data, record = prep.apply(cube)
        for name in detectors:
            start = time.perf_counter()
            if name == AUTO:
                score_map, used = auto_map(cube, prep)
            else:
                det = make_detector(name, **(params or {}).get(name, {}))
                score_map, used = det.score_cube(data), det.get_params()
            seconds = time.perf_counter() - start
            auroc = None if mask is None else float(pixel_auroc([score_map], [mask]))
            runs.append(SceneRun(name, used, score_map, auroc, seconds))
    except SpecadError as err:
        if err.path is not None:
            raise
        raise SpecadError(str(err), file) from err
    return runs, record


def auto_map(cube: Cube, prep: BandPrep) -> tuple[np.ndarray, dict]:
    """`SCENE_DEFAULT`'s map: each member's detector after its own reduction (``prep``'s
    dropped bands first), rank-fused; and the members, as the run's parameters."""
    if prep.reduce != "none":
        raise SpecadError(f"'{AUTO}' reduces the bands itself: name detectors to use --reduce")
    maps, bands = [], len(prep.kept_bands(cube))
    for member in SCENE_DEFAULT:  # fewer bands than components: all of them (RX is unchanged)
        ask = replace(prep, reduce=member.reduce, components=min(member.components, bands))
        data, _ = ask.apply(cube)
        maps.append(make_detector(member.detector).score_cube(data))
    return rank_fuse(maps), {"members": [str(m) for m in SCENE_DEFAULT], "fusion": "mean rank"}


def write_scene_outputs(
    runs: list[SceneRun], out: Path, mask: np.ndarray | None, summary: dict, force: bool = False
) -> None:
    """``out/<detector>.tif`` (the float32 map), ``out/<detector>.png`` (the map with the truth
    outlined) and ``out/scene.json`` (``summary``), written as one folder that appears whole."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tifffile

    from specad.io import atomic_dir

    with atomic_dir(out, force) as tmp:
        for run in runs:
            tifffile.imwrite(tmp / f"{run.detector}.tif", run.score_map.astype(np.float32))
            fig, ax = plt.subplots(figsize=(5, 5))
            lo, hi = np.percentile(run.score_map, [1, 99.5])
            ax.imshow(run.score_map, cmap="inferno", vmin=lo, vmax=hi)
            if mask is not None and mask.any():
                ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
            auroc = "" if run.auroc is None else f", pixel AUROC {run.auroc:.4f}"
            ax.set_title(f"{run.detector}{auroc}", fontsize=10)
            ax.set_axis_off()
            fig.savefig(tmp / f"{run.detector}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
        (tmp / "scene.json").write_text(json.dumps(summary, indent=2) + "\n")


def read_truth(file: Path, truth: str) -> np.ndarray:
    """A scene's (H, W) truth: a mask image, or a variable of the scene's own ``.mat``/``.npz``
    read by the same reader as the cube (MATLAB v5 and v7.3 alike)."""
    path = Path(truth)
    if path.is_file():
        from PIL import Image

        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("L")) > 0
        except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
            raise SpecadError(f"cannot read truth mask ({type(err).__name__})", path) from err
    if file.suffix.lower() in (".mat", ".npz"):
        data = read_cube(file, variable=truth, layout="hwc").data
        if data.shape[2] != 1:
            raise SpecadError(f"truth variable '{truth}' is not 2-D ({data.shape})", file)
        return data[:, :, 0] > 0
    raise SpecadError("truth mask file not found", truth)
