"""Datasets: the samples and masks of a dataset (`dataset`), the layouts read where they lie
(`layouts`: specad's, MVTec AD/LOCO/3D-AD, VisA, BTAD, KolektorSDD2, MTD, the cuvis.ai example,
plain folders), their structure checked before any work (`validate`), how a cube becomes model
input (`preprocess`), `specad dataset check` (`check`) and a copy in specad's layout
(`importing`).

The names most callers need are importable from here. Those of `preprocess` are imported when
first used: it needs torch, whose import takes seconds that `specad dataset check` and
`specad dataset import` would spend before saying anything.
"""

from typing import TYPE_CHECKING, Any

from specad.data.dataset import GOOD, SPLITS, Dataset, Sample, read_mask
from specad.data.layouts import DATASET_LAYOUTS, discover_dataset, load_dataset
from specad.data.validate import DatasetProblems

if TYPE_CHECKING:
    from specad.data.preprocess import Inputs, Preprocess, load_inputs, resize, select_channels

_PREPROCESS = ("Inputs", "Preprocess", "load_inputs", "resize", "select_channels")

__all__ = [
    "GOOD",
    "DATASET_LAYOUTS",
    "SPLITS",
    "Dataset",
    "DatasetProblems",
    "Inputs",
    "Preprocess",
    "Sample",
    "discover_dataset",
    "load_dataset",
    "load_inputs",
    "read_mask",
    "resize",
    "select_channels",
]


def __getattr__(name: str) -> Any:
    if name in _PREPROCESS:
        from specad.data import preprocess

        return getattr(preprocess, name)
    raise AttributeError(f"module 'specad.data' has no attribute '{name}'")
