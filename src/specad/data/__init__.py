"""Datasets: the layouts on disk (`dataset`), how a cube becomes model input (`preprocess`),
`specad dataset check` (`check`) and foreign layouts converted into specad's (`importing`).

The names most callers need are importable from here.
"""

from specad.data.dataset import (
    GOOD,
    SPLITS,
    Dataset,
    Sample,
    discover_dataset,
    load_dataset,
    read_mask,
)
from specad.data.preprocess import Inputs, Preprocess, load_inputs, resize, select_channels

__all__ = [
    "GOOD",
    "SPLITS",
    "Dataset",
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
