"""Memory-mapped cubes, read a band of rows at a time: a cube larger than memory is checked and
scored while only the rows in use stay resident (`specad.inference.tiling` scores it by tiles).

A page of a read-only file mapping that this process has read counts in its resident set until
the kernel needs the memory; `release_rows` hands such pages back as soon as no later step reads
them (the kernel's page cache keeps them, so reading them again costs no disk read).
"""

from __future__ import annotations

import mmap

import numpy as np

CHUNK_BYTES = 64 * 2**20
"""Bytes of rows checked at once: the temporary mask of a check is an eighth of it."""


def release_rows(data: np.ndarray, start: int, stop: int) -> int:
    """Drop rows ``start:stop`` of a read-only memory-mapped (H, W, C) cube from this process's
    resident set; returns ``stop``. Arrays that are not such a mapping are left alone: on memory
    of the process's own, or a copy-on-write mapping, dropping pages would discard data."""
    mapping = data.base
    while mapping is not None and not isinstance(mapping, mmap.mmap):
        mapping = getattr(mapping, "base", None)
    if mapping is None or not memoryview(mapping).readonly or not data.flags.c_contiguous:
        return stop
    origin = np.frombuffer(mapping, np.uint8).__array_interface__["data"][0]
    row = data.strides[0]
    first = data.__array_interface__["data"][0] - origin + start * row
    last = first + (stop - start) * row
    first = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the rows only
    last = last // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
    return stop


def nonfinite_count(data: np.ndarray) -> int:
    """How many NaN or infinite values ``data`` (H, W, ...) holds, checked a band of rows at a
    time, each band released once checked (`release_rows`)."""
    rows = max(1, CHUNK_BYTES // max(1, data[:1].nbytes))
    bad = 0
    for top in range(0, len(data), rows):
        chunk = data[top : top + rows]
        if not np.isfinite(chunk).all():
            bad += int(chunk.size - np.isfinite(chunk).sum())
        release_rows(data, top, min(top + rows, len(data)))
    return bad
