"""Single-scene mode: every pixel of one cube scored against its own background.

``specad scene`` and the scene benchmarks run here: read the cube (and its truth), prepare the
bands, run the detectors of :mod:`specad.models.scene`, score pixel AUROC, write the maps.
``auto`` (the default) is `specad.models.scene.SCENE_DEFAULT`: a rank fusion of global RX on
several band preparations, chosen by leave-one-scene-out
(benchmarks/accuracy/scene_default_results.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from specad.errors import SpecadError
from specad.io import Cube, read_cube
from specad.metrics import pixel_auroc
from specad.models.bands import BandPrep
from specad.models.scene import (
    AUTO,
    SCENE_DEFAULT,
    Member,
    SceneDetector,
    make_detector,
    rank_fuse,
    refuse_memory,
)


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
    axes: str | None = None,
    detectors: Sequence[str] = (AUTO,),
    params: dict[str, dict] | None = None,
    prep: BandPrep | None = None,
) -> tuple[list[SceneRun], dict]:
    """Score every pixel of one scene against its own background with each detector, after the
    band preparation ``prep``; pixel AUROC when truth is given (None where it is undefined: a
    truth with one class only). Returns the runs and the record of the band preparation.

    ``truth`` is a mask image, or the name of a variable stored in the same ``.mat``/``.npz``;
    ``params`` maps a detector name to its parameters (see :mod:`specad.models.scene`): every
    one is checked, and must belong to a detector of this run, before the cube is read. So is
    the memory the run needs (`check_memory`), before anything large is allocated.
    """
    file = Path(file)
    prep = prep or BandPrep()
    made = make_detectors(detectors, params or {})
    if AUTO in made and prep.reduce != "none":
        raise SpecadError(f"'{AUTO}' reduces the bands itself: name detectors to use --reduce")
    cube = read_cube(file, variable=variable, axes=axes)
    mask = None if truth is None else read_truth(file, truth)
    if mask is not None and mask.shape != cube.shape[:2]:
        raise SpecadError(
            f"truth mask is {mask.shape[0]}x{mask.shape[1]}, the scene is "
            f"{cube.shape[0]}x{cube.shape[1]}",
            truth,
        )
    runs = []
    try:  # the detectors' own errors do not know the file
        check_memory(cube, prep, made)
        data, record = prep.apply(cube)
        for name, det in made.items():
            start = time.perf_counter()
            if det is None:
                score_map, used = auto_map(cube, prep)
            else:
                score_map, used = det.score_cube(data), det.get_params()
            seconds = time.perf_counter() - start
            auroc = None if mask is None else float(pixel_auroc([score_map], [mask]))
            auroc = auroc if auroc is not None and math.isfinite(auroc) else None
            runs.append(SceneRun(name, used, score_map, auroc, seconds))
    except SpecadError as err:
        if err.path is not None:
            raise
        raise SpecadError(str(err), file) from err
    return runs, record


def make_detectors(
    detectors: Sequence[str], params: dict[str, dict]
) -> dict[str, SceneDetector | None]:
    """Each detector of the run by name, built with its parameters (None for `AUTO`, whose
    members are fixed). Parameters for a detector that does not run would be ignored without
    a word, so they are refused, as are parameters for ``auto``; and so is a detector named
    twice, whose maps would share one file."""
    if len(set(detectors)) < len(detectors):
        raise SpecadError(f"--detector {','.join(detectors)} names a detector twice")
    for name, given in params.items():
        first = f"{name}.{next(iter(given), '')}"
        if name == AUTO:
            raise SpecadError(
                f"--param {first}: '{AUTO}' takes no parameters (its members are fixed); "
                "name detectors (--detector rx,lrx) to set theirs"
            )
        if name not in detectors:
            raise SpecadError(
                f"--param {first}: '{name}' is not among the detectors of this run "
                f"({', '.join(detectors)}); add it to --detector"
            )
    return {n: None if n == AUTO else make_detector(n, **params.get(n, {})) for n in detectors}


PIXEL_BYTES = 64
"""Bytes per pixel, per map, that a run holds beside its detectors' own working memory: the map
itself and what pixel AUROC, rank fusion and the PNG briefly need."""


def check_memory(cube: Cube, prep: BandPrep, made: dict[str, SceneDetector | None]) -> None:
    """Refuse, before anything large is allocated, a run whose estimated memory is beyond
    `specad.bounds.MAX_SCENE_BYTES`: the cube, its prepared bands, the maps and, detector by
    detector, their working memory on the prepared bands, as the pixel count and bands imply."""
    h, w, b = cube.shape
    prep_bytes, bands = prep.working_bytes(cube)
    held = cube.data.nbytes + prep_bytes + PIXEL_BYTES * h * w * (len(made) + 1)
    for name, det in made.items():
        if det is None:
            need = max(member_bytes(cube, prep, m) for m in auto_members(bands)[0])
            advice = "crop the scene or drop bands (--drop-bands)"
        else:
            need, advice = det.working_bytes((h, w, bands)), det.advice
        refuse_memory(held + need, f"{name} on this {h}x{w}x{b} scene", advice)


def member_bytes(cube: Cube, prep: BandPrep, member: Member) -> int:
    """Estimated bytes of one `SCENE_DEFAULT` member: its band reduction, then its detector."""
    extra, bands = member_prep(prep, member).working_bytes(cube)
    return extra + make_detector(member.detector).working_bytes((*cube.shape[:2], bands))


def member_prep(prep: BandPrep, member: Member) -> BandPrep:
    """``prep``'s dropped bands, then ``member``'s own reduction."""
    return replace(prep, reduce=member.reduce, components=member.components)


def auto_members(bands: int) -> tuple[list[Member], str | None]:
    """The members of `SCENE_DEFAULT` to run on ``bands`` bands, and a note of those left out.

    A reduction to at least as many components as there are bands is an invertible linear
    map, after which global RX (whose distance such a map does not change) gives the all-bands
    map again: so on a scene of 20 bands or fewer (a 1-band cube above all, where PCA and MNF
    have nothing to reduce), only global RX on all bands runs.
    """
    kept = [m for m in SCENE_DEFAULT if m.reduce == "none" or m.components < bands]
    left = [str(m) for m in SCENE_DEFAULT if m not in kept]
    if not left:
        return kept, None
    return kept, (
        f"{', '.join(left)}: the scene has only {bands} band(s), and RX after reducing to all "
        "of them is RX on all bands"
    )


def auto_map(cube: Cube, prep: BandPrep) -> tuple[np.ndarray, dict]:
    """`SCENE_DEFAULT`'s map: each member's detector after its own reduction (``prep``'s
    dropped bands first), rank-fused; and the members run and left out, as the run's
    parameters."""
    members, left = auto_members(len(prep.kept_bands(cube)))
    maps = []
    for member in members:
        data, _ = member_prep(prep, member).apply(cube)
        maps.append(make_detector(member.detector).score_cube(data))
    used: dict = {"members": [str(m) for m in members], "fusion": "mean rank"}
    if left:
        used["left out"] = left
    return rank_fuse(maps), used


def strict_json(value: Any, indent: int | None = None) -> str:
    """``value`` as strict JSON, which has no NaN or infinity: those become ``null`` (an
    undefined AUROC), NumPy scalars plain numbers."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, float | np.floating):
            return float(v) if math.isfinite(v) else None
        return v.item() if isinstance(v, np.generic) else v

    return json.dumps(plain(value), indent=indent, allow_nan=False)


def write_scene_outputs(
    runs: list[SceneRun],
    out: Path,
    mask: np.ndarray | None,
    summary: dict,
    force: bool = False,
    pages: Callable[[Path], None] | None = None,
) -> None:
    """``out/<detector>.tif`` (the float32 map), ``out/<detector>.png`` (the map with the truth
    outlined) and ``out/scene.json`` (``summary``, strict JSON), written as one folder that
    appears whole. ``pages`` then writes more into that folder before it appears: the pages with
    the spectral viewer (`specad.report.scene`, a layer above this one)."""
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
        (tmp / "scene.json").write_text(strict_json(summary, indent=2) + "\n")
        if pages is not None:
            pages(tmp)


def read_truth(file: Path, truth: str) -> np.ndarray:
    """A scene's (H, W) truth: a mask image, or a variable of the scene's own ``.mat``/``.npz``
    read by the same reader as the cube (MATLAB v5 and v7.3 alike)."""
    path = Path(truth)
    if path.is_file():
        from specad.io.read import read_image

        return read_image(path, lambda im: im.convert("L")) > 0
    if file.suffix.lower() in (".mat", ".npz"):
        data = read_cube(file, variable=truth, axes="hwc").data
        if data.shape[2] != 1:
            raise SpecadError(f"truth variable '{truth}' is not 2-D ({data.shape})", file)
        return data[:, :, 0] > 0
    raise SpecadError("truth mask file not found", truth)


def describe_bands(record: dict) -> str:
    """What band preparation did, in words: ``96 bands in, none dropped, PCA to 20``."""
    dropped = record["bands_dropped"]
    words = [f"{record['bands_in']} bands in", f"{dropped or 'none'} dropped"]
    if record["reduce"] != "none":
        words.append(f"{record['reduce'].upper()} to {record['bands_out']}")
    return ", ".join(words)


def describe_params(params: dict) -> str:
    """A detector's parameters in words: ``outer 25, inner 5, ridge 0.001``; a fusion as
    ``mean rank fusion of global-rx on all bands, PCA 20, MNF 20``."""
    members = params.get("members")
    if members:
        parts = [m.rpartition(" / ") for m in members]  # "PCA 20 / global-rx"
        names = {name for _, _, name in parts}
        fusion = params.get("fusion", "rank")
        if len(names) == 1:
            return f"{fusion} fusion of {names.pop()} on {', '.join(p for p, _, _ in parts)}"
        return f"{fusion} fusion of {', '.join(f'{n} on {p}' for p, _, n in parts)}"
    return ", ".join(f"{key} {_words(value)}" for key, value in params.items()) or "defaults"


def _words(value: object) -> str:
    if isinstance(value, dict):
        return describe_params(value)
    if isinstance(value, list | tuple):
        return ", ".join(_words(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
