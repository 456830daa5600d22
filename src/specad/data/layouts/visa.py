"""VisA, read where it lies through its split file ``split_csv/1cls.csv`` (columns ``object``,
``split``, ``label``, ``image``, ``mask``; paths relative to the VisA folder): images in
``<object>/Data/Images/Normal|Anomaly``, masks ``<object>/Data/Masks/Anomaly/<stem>.png``.

The dataset is one object: its folder (``VisA/candle``), or the VisA folder when the file names
one object only. The file's training normals lose `VAL_FRACTION` of them to validation, by a
stable hash; its anomalies are one class, ``anomaly``, and a mask pixel is a defect wherever it
is not 0 (VisA numbers the defect regions of an image 1, 2, ...).
"""

from __future__ import annotations

import csv
from pathlib import Path

from specad.data.dataset import Dataset, Sample
from specad.data.layouts.common import Layout, Options, split_normals, train_val
from specad.errors import SpecadError

SPLIT_FILE = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
DEFECT = "anomaly"
_KNOWN = {(label, split) for label in ("normal", DEFECT) for split in ("train", "test")}


def _split_file(root: Path) -> Path | None:
    for base in (root, root.parent):
        if (base / SPLIT_FILE).is_file():
            return base / SPLIT_FILE
    return None


def _rows(table: Path) -> list[dict[str, str]]:
    try:
        with table.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise SpecadError(f"the split file lacks the column(s) {', '.join(missing)}", table)
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SpecadError(f"cannot read the split file ({err})", table) from err


def _load(root: Path, opts: Options) -> Dataset:
    table = _split_file(root)
    assert table is not None  # matched
    base = table.parent.parent
    rows = _rows(table)
    objects = sorted({r["object"] for r in rows})
    if base != root:
        name = root.name
    elif len(objects) == 1:
        name = objects[0]
    else:
        raise SpecadError(
            f"the VisA split file names {len(objects)} objects ({', '.join(objects[:6])}"
            f"{', ...' if len(objects) > 6 else ''}); give one object's folder, e.g. "
            f"{root / objects[0]}",
            root,
        )
    rows = [r for r in rows if r["object"] == name]
    if not rows:
        raise SpecadError(f"object '{name}' is not in the split file {table}", root)
    bad = [r for r in rows if (r["label"], r["split"]) not in _KNOWN]
    problems = [
        f"{table}: row for {r['image']} has split '{r['split']}' and label '{r['label']}' "
        "(expected train/test and normal/anomaly)"
        for r in bad
    ]
    rows = [r for r in rows if r not in bad]
    normal = {
        s: [base / r["image"] for r in rows if r["split"] == s and r["label"] == "normal"]
        for s in ("train", "test")
    }
    samples = train_val(normal["train"], opts) + split_normals(normal["test"], {"test": 1.0})
    samples += [
        Sample(
            base / r["image"],
            "test",
            DEFECT,
            base / r["mask"] if r["mask"] else None,
            mask_rule="nonzero",
            class_id=1,
        )
        for r in rows
        if r["label"] == DEFECT and r["split"] == "test"
    ]
    images = "Data/Images" if base != root else f"{name}/Data/Images"
    sources = {"train": f"{images}/Normal", "val": f"{images}/Normal", "test": images}
    return Dataset(root, samples, {0: "background", 1: DEFECT}, "visa", sources, problems)


VISA_LAYOUTS = (
    Layout(
        "visa",
        lambda root: _split_file(root) is not None,
        _load,
        "VisA: split_csv/1cls.csv, <object>/Data/Images/Normal|Anomaly, Data/Masks/Anomaly",
    ),
)
