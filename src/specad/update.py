"""``specad update``: cubes an operator confirmed normal folded into a saved model, written as a
new model beside it, without a refit over the data the model was fitted on.

What each detector does with them is its own (`specad.models.base.Updatable`): knn adds their
patches to its bank and selects the coreset again, RX pools their pixels into its mean and
covariance exactly. EfficientAD is refused: its network came from a training run.

The threshold is then set again by the one rule (`specad.metrics.threshold_at_far`, at the
parent's false-alarm rate) on the confirmed normals plus val, both scored by the new model as
``specad predict`` scores. ``model.json`` does not record the dataset a model was fitted on, so
val is

- ``val`` where given: a dataset folder (its ``val/good``) or a folder of normal cubes, scored
  by the new model;
- otherwise the parent's stored val scores (``calibration_.val_scores``), as the parent scored
  them. More normals in the bank or the covariance make normal scores lower as a rule, so these
  err toward a higher threshold: fewer alarms, never a silent flood of them.

The parent is only read; the new model is built as every output is (`specad.io.atomic_dir`),
and its ``model.json`` records the update (`specad.models.modelfile.Update`): the parent's
digest, the cubes added with theirs, the val used and the time. ONNX exports are not carried
over, since the maps changed: ``specad export NEW`` makes them again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np

from specad.data import GOOD, Sample, load_dataset
from specad.errors import SpecadError
from specad.fit import CubeImages
from specad.inference import Detector, run_split
from specad.io import atomic_dir, escaped, file_sha256, refuse_overlap
from specad.models.base import BaseDetector, Trained, Updatable
from specad.models.modelfile import MODEL_FILE, Added, Update, load_model, model_file
from specad.predict import expand_inputs

D = TypeVar("D", bound=BaseDetector)


def update_model(
    model_path: str | Path,
    cubes: Sequence[str | Path],
    out: str | Path,
    *,
    coreset_size: int | None = None,
    val: str | Path | None = None,
    device: str = "auto",
    force: bool = False,
) -> Path:
    """Write to the folder ``out`` the model at ``model_path`` updated with the normal
    ``cubes`` (files, or folders searched for them); returns its model file.

    ``coreset_size``: knn's bank budget (None: the parent's). ``val``: where the threshold's
    val cubes come from (see the module's docstring). ``model_path`` is never written, and
    ``out`` may not be, hold or lie inside it or any input.
    """
    parent = model_file(model_path)
    files = expand_inputs([Path(c) for c in cubes])
    if not files:
        raise SpecadError("no cubes to add (the folders given hold none)", cubes[0])
    val_samples = None if val is None else _val_samples(Path(val))
    model, meta = load_model(parent)
    if not isinstance(model, Updatable):
        raise SpecadError(f"cannot update {model.kind} models: {_why_not(model)}", parent)
    refuse_overlap(out, [parent.parent, *files, *([] if val is None else [val])])
    if coreset_size is not None:
        model = _with_coreset_size(model, coreset_size)
    record = Update(
        parent=file_sha256(parent),
        added=[Added(escaped(f.resolve()), file_sha256(f)) for f in files],
        val=None if val is None else escaped(Path(val).resolve()),
        time=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    det = Detector(model, dataclasses.replace(meta, updates=[*meta.updates, record]), device)
    added = [Sample(f, "val", GOOD) for f in files]
    model.update_maps(CubeImages(added, meta.preprocess, det.device))
    if val_samples is None:
        val_scores = np.asarray(model.calibration_.val_scores, dtype=np.float64)
    else:
        val_scores = run_split(det, val_samples).scores
    scores = np.concatenate([val_scores, run_split(det, added).scores])
    model.calibrate(scores, model.calibration_.far)
    with atomic_dir(out, force) as tmp:
        det.save(tmp)
    return Path(out) / MODEL_FILE


def _why_not(model: BaseDetector) -> str:
    """Why a model that is not `Updatable` cannot take more normals, in words."""
    if isinstance(model, Trained):
        return (
            "a training run made their network, so more normals need another run "
            "(`specad train` with them in train/good)"
        )
    if not type(model).fitted:
        return "they score each cube against itself and learn nothing from normal ones"
    return "they have no way to add normals yet; refit on a dataset that holds them"


def _with_coreset_size(model: D, size: int) -> D:
    """``model`` with the bank budget ``size`` (validated as the parameter is), its fitted
    state unchanged."""
    params = model.get_params()
    if "coreset_size" not in params:
        raise SpecadError(f"--coreset-size is for knn; {model.kind} models keep no coreset")
    return type(model)(**(params | {"coreset_size": size})).restore(*model.state())


def _val_samples(val: Path) -> list[Sample]:
    """The normal cubes of ``val``: a dataset's ``val/good``, or the cubes in a folder."""
    if (val / "val").is_dir():
        return load_dataset(val).require("val")
    files = expand_inputs([val])
    if not files:
        raise SpecadError("no normal cubes found for val", val)
    return [Sample(f, "val", GOOD) for f in files]
