"""Native-resolution maps of cubes larger than the model's input, from overlapping tiles.

Shrinking a 24-megapixel cube to 256 px averages a defect of a few pixels away; scoring
model-sized tiles keeps it. Tiles overlap by about a quarter and overlapping maps are averaged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from specad.data import Preprocess
from specad.io import Cube

MapFn = Callable[[torch.Tensor], torch.Tensor]
"""Preprocessed images [B, C, S, S] -> maps [B, 1, S, S]."""


def tile_starts(length: int, tile: int) -> list[int]:
    """Tile origins with about a quarter overlap, the last tile flush with the edge."""
    if length <= tile:
        return [0]
    step = max(1, tile * 3 // 4)
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def tiled_map(maps: MapFn, pre: Preprocess, cube: Cube) -> np.ndarray:
    """The (H, W) map of a cube at least one tile (``pre.image_size``) in each direction."""
    tile = pre.image_size
    h, w = cube.shape[:2]
    native = Preprocess(pre.source_channels, pre.channels, 0, pre.mean, pre.std)
    x = native.normalise(
        torch.from_numpy(np.ascontiguousarray(cube.data[:, :, pre.channels].transpose(2, 0, 1)))
    )
    total = np.zeros((h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    for top in tile_starts(h, tile):
        for left in tile_starts(w, tile):
            m = maps(x[None, :, top : top + tile, left : left + tile])[0, 0].numpy()
            total[top : top + tile, left : left + tile] += m
            weight[top : top + tile, left : left + tile] += 1
    return total / weight
