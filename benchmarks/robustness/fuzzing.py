"""Fuzz targets for every reader: valid seed files, mutated bytes, one allowed outcome.

Each target writes mutated bytes where a reader expects a file and calls the reader; the only
allowed failure is :class:`SpecadError` (specad's one-line error). Shared by
``tests/test_fuzz.py`` (a few dozen cases per reader) and ``fuzz.py`` (the long run).
"""

from __future__ import annotations

import io
import json
import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import tifffile
import yaml
from hypothesis import strategies as st
from PIL import Image

from specad.data import GOOD, Sample, discover_dataset, read_mask
from specad.errors import SpecadError
from specad.inference import Detector
from specad.io import Cube, read_cube, write_cube
from specad.models.efficientad.config import load_config
from specad.models.modelfile import ModelMeta


@dataclass(frozen=True)
class Target:
    """A reader under fuzz: valid seeds, and how to feed it one mutated file in a folder."""

    name: str
    seeds: Callable[[Path], list[bytes]]
    feed: Callable[[Path, bytes], object]


def _cube() -> Cube:
    rng = np.random.default_rng(0)
    return Cube(rng.random((6, 5, 4), dtype=np.float32), wavelengths=[450, 550, 650, 1050])


def _written(tmp: Path, name: str, write: Callable[[Path], object]) -> bytes:
    path = tmp / name
    write(path)
    return path.read_bytes()


def _tiff_seeds(tmp: Path) -> list[bytes]:
    cube = _cube()
    seeds = [_written(tmp, "a.tif", lambda p: write_cube(p, cube))]
    seeds.append(_written(tmp, "b.tif", lambda p: tifffile.imwrite(p, cube.data)))
    raw = (cube.data * 1000).astype(np.uint16).transpose(2, 0, 1)
    seeds.append(_written(tmp, "c.tif", lambda p: tifffile.imwrite(p, raw, compression="zlib")))
    return seeds


def _npy_seeds(tmp: Path) -> list[bytes]:
    buf = io.BytesIO()
    np.save(buf, _cube().data)
    return [buf.getvalue()]


def _npz_seeds(tmp: Path) -> list[bytes]:
    return [_written(tmp, "a.npz", lambda p: write_cube(p, _cube()))]


def _envi_header_seeds(tmp: Path) -> list[bytes]:
    return [_written(tmp, "a.hdr", lambda p: write_cube(p, _cube()))]


def _envi_data_seeds(tmp: Path) -> list[bytes]:
    write_cube(tmp / "a.hdr", _cube())
    return [(tmp / "a.img").read_bytes()]


def _mat5_seeds(tmp: Path) -> list[bytes]:
    cube = _cube().data
    return [
        _written(tmp, "a.mat", lambda p: scipy.io.savemat(p, {"data": cube, "map": cube[..., 0]}))
    ]


def _mat73_seeds(tmp: Path) -> list[bytes]:
    def write(p: Path) -> None:
        with h5py.File(p, "w", userblock_size=512) as f:
            f["data"] = _cube().data.T
            f["map"] = np.zeros((5, 6), np.uint8)

    return [_written(tmp, "a.mat", write)]


def _png_seeds(tmp: Path) -> list[bytes]:
    mask = np.zeros((6, 5), np.uint8)
    mask[1:3, 1:3] = 1
    return [_written(tmp, "m.png", lambda p: Image.fromarray(mask).save(p))]


def _classes_seeds(tmp: Path) -> list[bytes]:
    return [json.dumps({"0": "background", "1": "crack"}).encode()]


def _annotations_seeds(tmp: Path) -> list[bytes]:
    coco = {"categories": [{"id": 0, "name": "background"}, {"id": 1, "name": "leaf"}]}
    return [json.dumps(coco).encode(), json.dumps({"0": "background", "1": "leaf"}).encode()]


def _model_json_seeds(tmp: Path) -> list[bytes]:
    from specad.data import Preprocess

    meta = ModelMeta("rx", Preprocess(4, [0, 1, 2, 3], 0), ["a", "b", "c", "d"], None, None)
    return [meta.to_json().encode()]


def _yaml_seeds(tmp: Path) -> list[bytes]:
    cfg = {
        "data": {"root": str(tmp), "channels": [0, 1], "image_size": 64},
        "model": {"teacher": "pdn-random"},
        "train": {"steps": 5, "batch_size": 2},
    }
    return [yaml.safe_dump(cfg).encode()]


def _feed_cube(suffix: str, variable: str | None = None) -> Callable[[Path, bytes], object]:
    def feed(tmp: Path, data: bytes) -> object:
        path = tmp / f"f{suffix}"
        path.write_bytes(data)
        return read_cube(path, variable=variable)

    return feed


def _feed_envi_header(tmp: Path, data: bytes) -> object:
    write_cube(tmp / "f.hdr", _cube())
    (tmp / "f.hdr").write_bytes(data)
    return read_cube(tmp / "f.hdr")


def _feed_envi_data(tmp: Path, data: bytes) -> object:
    write_cube(tmp / "f.hdr", _cube())
    (tmp / "f.img").write_bytes(data)
    return read_cube(tmp / "f.hdr")


def _feed_mask(tmp: Path, data: bytes) -> object:
    (tmp / "m.png").write_bytes(data)
    sample = Sample(tmp / "c.tif", "test", "crack", tmp / "m.png", frozenset({0, 1}))
    return read_mask(sample, (6, 5))


def _feed_dataset_json(name: str) -> Callable[[Path, bytes], object]:
    def feed(tmp: Path, data: bytes) -> object:
        # specad's layout, or the cuvis example's (one folder per defect)
        folder = tmp / "test" / GOOD if name == "classes.json" else tmp / "leaf"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "x_ok_ok_1.npy").write_bytes(b"")
        (tmp / name).write_bytes(data)
        return discover_dataset(tmp)  # its class list parsed; the empty cube is not read

    return feed


def _feed_model_json(tmp: Path, data: bytes) -> object:
    from specad.models.rx import RX

    model = tmp / "model"
    model.mkdir(exist_ok=True)
    weights = model / "model.safetensors"
    if not weights.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # two validation scores: the threshold warns
            RX().fit_cubes([_cube().data]).calibrate([1.0, 2.0]).save(weights)
    (model / "model.json").write_bytes(data)
    return Detector.load(model)


def _feed_yaml(tmp: Path, data: bytes) -> object:
    (tmp / "c.yaml").write_bytes(data)
    return load_config(tmp / "c.yaml")


TARGETS = [
    Target("tiff", _tiff_seeds, _feed_cube(".tif")),
    Target("npy", _npy_seeds, _feed_cube(".npy")),
    Target("npz", _npz_seeds, _feed_cube(".npz")),
    Target("envi-header", _envi_header_seeds, _feed_envi_header),
    Target("envi-data", _envi_data_seeds, _feed_envi_data),
    Target("mat-v5", _mat5_seeds, _feed_cube(".mat")),
    Target("mat-v7.3", _mat73_seeds, _feed_cube(".mat")),
    Target("png-mask", _png_seeds, _feed_mask),
    Target("classes.json", _classes_seeds, _feed_dataset_json("classes.json")),
    Target("annotations.json", _annotations_seeds, _feed_dataset_json("annotations.json")),
    Target("model.json", _model_json_seeds, _feed_model_json),
    Target("yaml-config", _yaml_seeds, _feed_yaml),
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed truncated, bit-flipped, overwritten, spliced, or random bytes outright."""
    data = bytearray(draw(st.sampled_from(seeds)))
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "splice", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    at = draw(st.integers(0, len(data)))
    chunk = draw(st.binary(min_size=1, max_size=64))
    if kind == "overwrite":
        data[at : at + len(chunk)] = chunk
    else:
        data[at:at] = chunk
    return bytes(data)


class Hang(Exception):
    """A reader ran past the per-case limit: a denial of service, reported like a crash."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang("the reader ran for more than the per-case limit")


def check_one(target: Target, tmp: Path, data: bytes, limit_s: int = 20) -> None:
    """Feed one case; anything but success or a one-line SpecadError propagates, and so does
    a case still running after ``limit_s`` seconds (as :class:`Hang`)."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    try:
        target.feed(tmp, data)
    except SpecadError as err:
        assert "\n" not in str(err), f"{target.name}: multi-line error {err!r}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
