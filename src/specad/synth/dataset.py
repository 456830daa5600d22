"""Write a synthetic dataset in specad's layout, and measure how visible each class is."""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from specad import __version__
from specad.bounds import Seed, validate
from specad.data import GOOD
from specad.io import Cube, atomic_dir, read_cube, write_cube
from specad.spectral import SWIR_MIN_NM, VISIBLE_NM
from specad.synth.materials import load_library
from specad.synth.presets import SynthConfig, resolve
from specad.synth.render import render
from specad.synth.scene import make_scene
from specad.synth.variation import vary

# Contrast ring: non-anomalous pixels more than RING_PX[0] and at most RING_PX[1] px from a mask.
RING_PX = (3.0, 8.0)


def _stream(seed: int, *names: str) -> np.random.Generator:
    """An independent random stream per (seed, names): scenes never depend on the band set."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def _image(
    config: SynthConfig, seed: int, split: str, cls: str | None, cid: int, stem: str
) -> tuple[Cube, np.ndarray, list[dict]]:
    """One cube (all cameras side by side in channels), its mask and its placed objects."""
    scene = make_scene(
        _stream(seed, split, stem, "scene"),
        config.size,
        config.pitch_mm,
        cls,
        cid,
        config.difficulty,
    )
    if config.variation is not None:  # its own stream: the tray6 scene stays as it is
        vary(
            scene,
            _stream(seed, split, stem, "variation"),
            config.variation,
            cls,
            cid,
            config.pitch_mm,
        )
    lib = load_library()
    parts = [
        render(scene, cam, lib, _stream(seed, split, stem, cam.name), config.difficulty)
        for cam in config.cameras
    ]
    cams = config.cameras
    cube = Cube(
        np.concatenate(parts, axis=2),
        [b for c in cams for b in c.bands],
        [w for c in cams for w in c.centres_nm],
    )
    return cube, scene.mask, scene.objects


def _jobs(config: SynthConfig) -> list[tuple[str, str | None, str]]:
    """(split, anomaly class or None, stem) for every image of the dataset."""
    jobs = [
        (s, None, f"{s}_{i:04d}")
        for s, k in (("train", config.n_train), ("val", config.n_val))
        for i in range(k)
    ]
    jobs += [("test", None, f"good_{i:04d}") for i in range(config.n_test_good)]
    jobs += [("test", c, f"{c}_{i:03d}") for c, k in config.test_counts().items() for i in range(k)]
    return jobs


def synthesize(
    out: str | Path, preset: str = "tray6", seed: int = 0, force: bool = False, **overrides: object
) -> Path:
    """Write a synthetic tray dataset to ``out`` (refuses a non-empty folder unless ``force``).

    ``overrides`` replace fields of the preset's :class:`SynthConfig` (size, difficulty, counts,
    anomaly_mix, ...), each checked against its bounds (`SynthConfig.validate`), as is the seed
    (`specad.bounds.Seed`), before anything is written. The same preset, settings and seed give
    byte-identical cubes and masks.
    """
    validate(Seed, seed, None, "synth seed")
    config = resolve(preset, overrides)
    ids = {c: i + 1 for i, c in enumerate(config.classes())}
    objects: dict[str, list[dict]] = {}
    out = Path(out)
    with atomic_dir(out, force) as tmp:
        for split, cls, stem in _jobs(config):
            cube, mask, placed = _image(config, seed, split, cls, ids.get(cls, 0), stem)
            folder = tmp / split / (cls or GOOD)
            folder.mkdir(parents=True, exist_ok=True)
            write_cube(folder / f"{stem}.tif", cube)
            if cls is not None:
                gt = tmp / "ground_truth" / cls
                gt.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(gt / f"{stem}.png")
                objects[stem] = placed
        classes = {"0": "background", **{str(i): c for c, i in ids.items()}}
        (tmp / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
        meta = {
            "preset": preset,
            "seed": seed,
            "specad_version": __version__,
            "pixel_pitch_mm": config.pitch_mm,
            "config": asdict(config),
            "objects": objects,
        }
        (tmp / "synth.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def contrast_table(dataset_dir: str | Path) -> dict[str, dict[str, float]]:
    """Per anomaly class, how far the anomaly stands out from the sawdust around it.

    For each test image: per band, |mean(anomaly) - mean(ring)| / std(ring), where the ring is
    the non-anomalous pixels 3-8 px from the mask; then the max over visible bands ("rgb",
    400-700 nm) and over SWIR bands ("swir", >= 900 nm); then the mean over the class's images.
    A value of 1 means the anomaly's mean shifts by one ring standard deviation. NaN where a
    cube has no band of that kind.
    """
    root = Path(dataset_dir)
    classes = json.loads((root / "classes.json").read_text())
    table = {}
    for cls in (c for k, c in sorted(classes.items(), key=lambda kv: int(kv[0])) if k != "0"):
        scores = [
            _contrast(p, root / "ground_truth" / cls / f"{p.stem}.png")
            for p in sorted((root / "test" / cls).glob("*.tif"))
        ]
        rgb, swir = np.mean(scores, axis=0) if scores else (np.nan, np.nan)
        table[cls] = {"rgb": float(rgb), "swir": float(swir)}
    return table


def _contrast(cube_path: Path, mask_path: Path) -> tuple[float, float]:
    cube = read_cube(cube_path)
    anomaly = np.asarray(Image.open(mask_path)) > 0
    dist = ndimage.distance_transform_edt(~anomaly)
    ring = (dist > RING_PX[0]) & (dist <= RING_PX[1])
    inside, around = cube.data[anomaly], cube.data[ring]
    per_band = np.abs(inside.mean(0) - around.mean(0)) / around.std(0)
    wl = np.asarray(cube.wavelengths, dtype=float)
    visible = (wl >= VISIBLE_NM[0]) & (wl <= VISIBLE_NM[1])
    swir = wl >= SWIR_MIN_NM
    return tuple(float(per_band[m].max()) if m.any() else np.nan for m in (visible, swir))  # type: ignore[return-value]
