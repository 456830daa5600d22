"""Cubes in and out: one ``Cube`` type, and readers/writers for the formats spectral cameras export.

Every reader returns an (H, W, C) float32 array. Raw counts are *not* silently rescaled: turning
counts into reflectance is an explicit step (:func:`to_reflectance`), because the right reference
(white tile, dark frame, a fixed scale) depends on the rig.
"""

from specad.io.cube import (
    AXIS_ORDERS,
    CUBE_SUFFIXES,
    IMAGE_SUFFIXES,
    Cube,
    default_rgb,
    to_reflectance,
)
from specad.io.files import (
    atomic_dir,
    atomic_file,
    escaped,
    file_sha256,
    refuse_nonempty,
    refuse_overlap,
    reserve_output,
)
from specad.io.image import Header
from specad.io.read import AxesGuess, cube_header, read_cube, read_mat_arrays
from specad.io.write import save_tensors, write_cube

__all__ = [
    "AXIS_ORDERS",
    "CUBE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "Cube",
    "AxesGuess",
    "Header",
    "atomic_dir",
    "atomic_file",
    "cube_header",
    "escaped",
    "default_rgb",
    "file_sha256",
    "read_cube",
    "read_mat_arrays",
    "refuse_nonempty",
    "refuse_overlap",
    "reserve_output",
    "to_reflectance",
    "save_tensors",
    "write_cube",
]
