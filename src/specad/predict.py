"""Scoring a list of cube files into an output folder: maps, overlays and ``scores.csv``, and
with ``explain`` the regions each map flags and their most deviant bands (``regions.jsonl``).

The folder is built under a temporary name and published at the end (:func:`specad.io.atomic_dir`),
so a run that fails, or is killed, leaves nothing that looks complete. Each input keeps its path
relative to the inputs' common folder, so ``test/good/000.tif`` and ``test/crack/000.tif`` get
two maps, one per ``scores.csv`` row. With a Dask cluster (:mod:`specad.distributed`) workers
score the files into the same temporary folder under the same names; this process writes
``scores.csv``.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from specad.errors import SpecadError
from specad.inference import Detector, score_file
from specad.io import CUBE_SUFFIXES, atomic_dir, refuse_overlap
from specad.io.files import escaped
from specad.metrics import is_anomalous

if TYPE_CHECKING:
    from specad.distributed import Cluster


_UNDECODED = re.compile(r"[\udc80-\udcff]")
"""The surrogate escapes by which Python holds file-name bytes that are not UTF-8."""


@dataclass
class PredictRun:
    """What a prediction run wrote, and the inputs it could not score (one line each)."""

    out: Path
    scored: int
    failed: list[str] = field(default_factory=list)


def expand_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Cube files among ``inputs`` (folders searched recursively), each once, in a stable order;
    an input that does not exist (a typing slip) is refused before anything is scored."""
    files: list[Path] = []
    for item in inputs:
        if not item.exists():
            raise SpecadError("no such file or folder", item)
        if item.is_dir():
            files += sorted(
                p for p in item.rglob("*") if p.suffix.lower() in CUBE_SUFFIXES and p.is_file()
            )
        else:
            files.append(item)
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def output_names(files: Sequence[Path]) -> list[Path]:
    """A distinct relative name per input (no suffix): its path below the inputs' common folder.

    Names stay distinct wherever they could meet: inputs that differ only in their format
    (``a.tif``, ``a.npy``) keep the suffix in it, names that would still collide, also where a
    file system ignores case, are numbered (``a-2``), bytes that are not UTF-8 become ``%XX``,
    and no map or overlay takes the name of another input's folder.
    """
    resolved = [f.resolve() for f in files]
    if not resolved:
        return []
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    rel = [_portable(p.relative_to(common)) for p in resolved]
    wanted = [r.with_suffix("") for r in rel]
    while True:  # each clash round gives more names their suffix back: it ends
        count = Counter(map(_key, wanted))
        full = [r if count[_key(w)] > 1 else w for r, w in zip(rel, wanted, strict=True)]
        if full == wanted:
            break
        wanted = full
    folders = {_key(parent) for w in wanted for parent in w.parents}
    taken: set[str] = set()
    names = []
    for w in wanted:
        name, i = w, 2
        while _key(name) in taken or {_key(name) + ".tif", _key(name) + ".png"} & folders:
            name, i = w.with_name(f"{w.name}-{i}"), i + 1
        taken.add(_key(name))
        names.append(name)
    return names


def _key(name: Path) -> str:
    """What a case-insensitive file system compares."""
    return name.as_posix().casefold()


def _portable(rel: Path) -> Path:
    """``rel`` with each byte that is not UTF-8 (a surrogate escape) written as ``%XX``."""
    return Path(*(_UNDECODED.sub(lambda m: f"%{ord(m[0]) - 0xDC00:02X}", p) for p in rel.parts))


def _score_here(
    detector: Detector, files: Sequence[Path], names: Sequence[Path], tmp: Path, opts: dict
) -> Iterator[float | str]:
    for path, name in zip(files, names, strict=True):
        try:
            yield score_file(detector, path, tmp, name, **opts)
        except SpecadError as e:
            yield str(e)


def cluster(
    scheduler: str | None, workers: int | None, detector: Detector, model: str, device: str
) -> AbstractContextManager[Cluster | None]:
    """A Dask cluster holding ``detector`` (saved at ``model``, or fitted here) when
    ``scheduler`` or ``workers`` is given; otherwise None, for scoring in this process."""
    if scheduler is None and workers is None:
        return nullcontext()
    from specad.distributed import ModelSource, open_cluster

    return open_cluster(scheduler, workers, ModelSource.of(detector, model, device))


def predict_files(
    detector: Detector,
    files: Sequence[Path],
    out: Path,
    *,
    tiled: bool = False,
    force: bool = False,
    variable: str | None = None,
    axes: str | None = None,
    progress: bool = False,
    cluster: Cluster | None = None,
    explain: bool = False,
) -> PredictRun:
    """Score ``files`` and publish ``out`` with ``maps/``, ``overlays/`` and ``scores.csv``;
    ``explain`` adds ``regions.jsonl``: one row per region above the threshold
    (`specad.inference.regions`), in the order of ``files``.

    An input that cannot be read or scored (including a non-finite map) is listed in
    ``failed`` and gets no row; if none can be scored, nothing is written and this raises.
    With ``cluster`` its workers score the files; ``out``'s parent must be a path they share.
    """
    from tqdm import tqdm

    if not files:
        raise SpecadError("no cube files among the inputs")
    refuse_overlap(out, files)
    if explain and detector.meta.envelope is None:
        raise SpecadError(
            "the model has no normal envelope (saved by an older specad): refit it to --explain"
        )
    names = output_names(files)
    failed: list[str] = []
    threshold = detector.threshold
    opts = {"tiled": tiled, "variable": variable, "axes": axes, "explain": explain}
    with atomic_dir(out, force) as tmp:
        if cluster is None:
            outcomes = _score_here(detector, files, names, tmp, opts)
        else:
            outcomes = cluster.score_files(files, names, tmp, opts)
        with open(tmp / "scores.csv", "w", newline="", encoding="utf-8") as f:
            rows = csv.writer(f)
            rows.writerow(["file", "map", "score", "anomalous", "threshold"])
            jobs = zip(files, names, outcomes, strict=True)
            for path, name, score in tqdm(
                jobs, total=len(files), unit="cube", disable=not progress
            ):
                if isinstance(score, str):
                    failed.append(score)
                    continue
                rows.writerow(
                    [
                        escaped(path),
                        (Path("maps") / f"{name}.tif").as_posix(),
                        f"{score:.6g}",
                        int(is_anomalous(score, threshold)),
                        f"{threshold:.6g}",
                    ]
                )
        if len(failed) == len(files):
            raise SpecadError(
                f"none of the {len(files)} inputs could be scored (first: {failed[0]})"
            )
        if explain:
            _gather_regions(tmp, names)
    return PredictRun(out, len(files) - len(failed), failed)


def _gather_regions(tmp: Path, names: Sequence[Path]) -> None:
    """``regions.jsonl`` from each scored file's part (`score_file`), in input order."""
    parts = tmp / "regions"
    with open(tmp / "regions.jsonl", "w", encoding="utf-8") as f:
        for name in names:
            part = parts / f"{name}.jsonl"
            if part.is_file():  # not for an input that could not be scored
                f.write(part.read_text(encoding="utf-8"))
    shutil.rmtree(parts, ignore_errors=True)
