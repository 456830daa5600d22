"""Native-resolution maps of cubes larger than the model's input, from overlapping tiles.

Shrinking a 24-megapixel cube to 256 px averages a defect of a few pixels away; scoring
model-sized tiles keeps it. Tiles overlap by about a quarter and overlapping maps are averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from specad.data import Preprocess
from specad.io import Cube
from specad.io.mapped import release_rows

MapFn = Callable[[torch.Tensor], torch.Tensor]
"""Preprocessed images [B, C, S, S] -> maps [B, 1, S, S]."""


def tile_starts(length: int, tile: int) -> list[int]:
    """Tile origins with about a quarter overlap, the last tile flush with the edge."""
    if length <= tile:
        return [0]
    step = max(1, tile * 3 // 4)
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


BATCH_BYTES = 128 * 2**20
"""Float32 bytes of the tiles scored at once (at most `BATCH_TILES`): the maps' working memory
grows with it, so a cube of many bands is scored a few tiles at a time."""
BATCH_TILES = 8


def batch_of(channels: int, side: int, most: int = BATCH_TILES) -> int:
    """How many float32 images of ``channels`` x ``side`` x ``side`` to score at once: as many
    as fit `BATCH_BYTES`, from 1 to ``most``."""
    return max(1, min(most, BATCH_BYTES // (4 * channels * side * side)))


def tiled_map(maps: MapFn, pre: Preprocess, cube: Cube, path: Path | None = None) -> np.ndarray:
    """The (H, W) map of a cube at least one tile (``pre.image_size``) in each direction.

    Tiles are cut, normalised and scored up to `BATCH_BYTES` at a time, so memory beyond the
    cube (which may stay memory-mapped: `specad.io.read_cube`) is the (H, W) sums and weights
    (8 bytes a pixel) plus one batch of tiles; rows of a mapped cube that no later tile reads
    leave the resident set as the tiles move down (`specad.io.mapped.release_rows`). The
    cube's channel count is checked first, as for a resized cube: selecting the model's
    channels from another cube would index bands it lacks, or score the wrong ones.
    """
    pre.check(cube, path)
    tile = pre.image_size
    h, w = cube.shape[:2]
    total = np.zeros((h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    origins = [(top, left) for top in tile_starts(h, tile) for left in tile_starts(w, tile)]
    batch_size = batch_of(len(pre.channels), tile)
    released = 0
    for i in range(0, len(origins), batch_size):
        batch = origins[i : i + batch_size]
        tiles = [cube.data[t : t + tile, x : x + tile][:, :, pre.channels] for t, x in batch]
        x = torch.from_numpy(np.stack(tiles).transpose(0, 3, 1, 2).astype(np.float32))
        out = maps(pre.normalise(x))[:, 0].numpy()  # [B, S, S]
        for (top, left), m in zip(batch, out, strict=True):
            total[top : top + tile, left : left + tile] += m
            weight[top : top + tile, left : left + tile] += 1
        done = origins[i + batch_size][0] if i + batch_size < len(origins) else h
        released = release_rows(cube.data, released, done)  # rows no later tile reads
    return total / weight
