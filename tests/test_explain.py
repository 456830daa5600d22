"""The normal envelope every model keeps, and `specad predict --explain`: the regions a map flags
and the bands that make them anomalous."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_failure, run_specad, tiny_config
from PIL import Image

from specad.data import load_dataset
from specad.errors import SpecadError
from specad.fit import fit_on_dataset, prepare
from specad.inference import Detector
from specad.inference.regions import find_regions
from specad.io import Cube, write_cube
from specad.models.envelope import Envelope, pixel_envelope, robust_z
from specad.models.modelfile import META_FILE, read_meta
from specad.predict import predict_files

WAVELENGTHS = [450.0, 550.0, 650.0, 1050.0, 1200.0, 1450.0]
DEFECT_BAND = 4  # 1200 nm


def _single_band_dataset(root: Path, size: int = 32) -> Path:
    """Smooth normal cubes; each test defect is a square that is darker in one band only."""
    rng = np.random.default_rng(3)
    spectrum = np.array([0.2, 0.3, 0.35, 0.5, 0.55, 0.4], np.float32)

    def cube() -> np.ndarray:
        light = 1 + 0.05 * rng.standard_normal((size, size, 1))
        return (spectrum * light + 0.01 * rng.standard_normal((size, size, 6))).astype(np.float32)

    for split, n in (("train", 6), ("val", 4)):
        for i in range(n):
            write_cube(
                root / split / "good" / f"{i:03d}.tif", Cube(cube(), wavelengths=WAVELENGTHS)
            )
    (root / "ground_truth" / "dark").mkdir(parents=True)
    for i in range(3):
        data, mask = cube(), np.zeros((size, size), np.uint8)
        y, x = 6 + 5 * i, 20 - 4 * i
        data[y : y + 6, x : x + 6, DEFECT_BAND] -= 0.3
        mask[y : y + 6, x : x + 6] = 1
        write_cube(root / "test" / "dark" / f"{i:03d}.tif", Cube(data, wavelengths=WAVELENGTHS))
        Image.fromarray(mask).save(root / "ground_truth" / "dark" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("explain")
    ds = _single_band_dataset(root / "ds")
    model = fit_on_dataset("rx", load_dataset(ds)).save(root / "rx")
    return ds, model


def test_envelope_is_fitted_state_saved_with_the_model(fitted: tuple[Path, Path]) -> None:
    ds, model = fitted
    env = read_meta(model.with_name(META_FILE)).envelope
    assert env is not None and len(env.median) == 6
    train = np.concatenate([s.read().data.reshape(-1, 6) for s in load_dataset(ds).split("train")])
    for got, q in ((env.p1, 1), (env.median, 50), (env.p99, 99)):
        # a sample of the training pixels: close to the percentiles of all of them
        assert np.allclose(got, np.percentile(train, q, axis=0), atol=0.01)
    assert env.pixels == len(train)  # 6 small cubes: all their pixels
    # The same data gives the same envelope (seeded sample).
    again = fit_on_dataset("rx", load_dataset(ds)).meta.envelope
    assert again == env
    assert Detector.load(model).meta.envelope == env


def test_a_training_run_keeps_the_envelope_of_its_input(tiny_dataset: Path) -> None:
    """EfficientAD's `specad train` path: the envelope of its input before standardisation,
    in the cube's units, as `fit_on_dataset` keeps for the other detectors."""
    ds = load_dataset(tiny_dataset)
    _, meta, _ = prepare(tiny_config(tiny_dataset), ds)
    env = meta.envelope
    assert env is not None and len(env.median) == len(meta.bands) == 6
    train = np.concatenate([s.read().data.reshape(-1, 6) for s in ds.split("train")])
    assert np.allclose(env.median, np.median(train, axis=0), atol=0.01)
    assert np.all(np.asarray(env.p99) - np.asarray(env.p1) < np.ptp(train, axis=0))


def test_robust_z_is_one_sigma_for_normal_data() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.normal(2.0, 0.5, (40_000, 3))
    env = pixel_envelope([pixels.reshape(200, 200, 3)], 1)
    assert np.allclose(env.spread, 0.5, rtol=0.05)  # (p99 - p1) / 4.65 is sigma
    assert np.allclose(robust_z(np.array([2.0, 2.5, 1.0]), env), [0, 1, -2], atol=0.1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"p99": [1.0]}, "median, p1 and p99 need one value per band"),
        ({"median": [float("nan")] * 6}, "envelope.median.0"),
        ({"p1": [0.9] * 6}, "band 0: p1 <= median <= p99 does not hold"),
    ],
)
def test_a_bad_envelope_is_refused_in_one_line(
    fitted: tuple[Path, Path], tmp_path: Path, change: dict, message: str
) -> None:
    raw = json.loads(fitted[1].with_name(META_FILE).read_text())
    raw["envelope"] |= change
    path = tmp_path / META_FILE
    path.write_text(json.dumps(raw).replace("NaN", '"nan"'))
    with pytest.raises(SpecadError, match=message) as err:
        read_meta(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_an_envelope_of_other_length_than_the_channels_is_refused(
    fitted: tuple[Path, Path], tmp_path: Path
) -> None:
    raw = json.loads(fitted[1].with_name(META_FILE).read_text())
    raw["envelope"] = {"median": [0.5] * 3, "p1": [0.0] * 3, "p99": [1.0] * 3, "pixels": 10}
    path = tmp_path / META_FILE
    path.write_text(json.dumps(raw))
    with pytest.raises(SpecadError, match="envelope has 3 bands for 6 channels"):
        read_meta(path)


def test_the_top_band_of_a_single_band_defect_is_that_band(
    fitted: tuple[Path, Path], tmp_path: Path
) -> None:
    ds, model = fitted
    det = Detector.load(model)
    files = sorted((ds / "test" / "dark").glob("*.tif"))
    predict_files(det, files, tmp_path / "out", explain=True)
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "regions.jsonl").read_text().splitlines()
    ]
    assert {Path(r["file"]).name for r in rows} == {f.name for f in files}  # each defect found
    for f in files:
        first = next(r for r in rows if Path(r["file"]).name == f.name)  # highest peak first
        top = first["top_bands"]
        assert len(top) == 5 and top[0]["index"] == DEFECT_BAND and top[0]["nm"] == 1200.0
        assert top[0]["deviation"] < -5  # darker there, by far more than normal pixels vary
        assert all(abs(b["deviation"]) < abs(top[0]["deviation"]) for b in top[1:])
        box = first["bbox"]
        assert first["area"] <= (box["bottom"] - box["top"]) * (box["right"] - box["left"])
        assert first["peak_score"] >= first["mean_score"] >= det.threshold


def test_regions_are_the_connected_parts_above_the_threshold() -> None:
    amap = np.zeros((10, 12), np.float32)
    amap[1:3, 1:4] = 5.0  # 6 pixels, peak 5
    amap[6, 8] = 9.0
    amap[7, 9] = 3.0  # diagonal neighbour: the same region
    data = np.zeros((10, 12, 2))
    data[..., 1] = 1.0
    data[6, 8, 0] = 4.0
    env = Envelope([0.0, 1.0], [-1.0, 0.0], [1.0, 2.0], 100)
    regions = find_regions(amap, 3.0, data, env, ["a", "b"], None)
    assert [(r.area, r.bbox, r.peak, r.mean) for r in regions] == [
        (2, (6, 8, 8, 10), 9.0, 6.0),
        (6, (1, 1, 3, 4), 5.0, 5.0),
    ]
    assert regions[0].spectrum == [2.0, 1.0]
    assert regions[0].bands[0].band == "a" and regions[0].bands[0].label == "a"
    # mean 2 in band a, whose spread is (1 - -1) / 4.6526
    assert regions[0].bands[0].z == pytest.approx(4.6526, rel=1e-3)


def test_explain_on_the_command_line(fitted: tuple[Path, Path], tmp_path: Path) -> None:
    ds, model = fitted
    run_specad(
        "predict",
        str(model),
        str(ds / "test"),
        "--out",
        str(tmp_path / "o"),
        "--explain",
        check=True,
    )
    rows = (tmp_path / "o" / "regions.jsonl").read_text().splitlines()
    assert rows and all(json.loads(r)["top_bands"][0]["nm"] == 1200.0 for r in rows[:1])
    assert not (tmp_path / "o" / "regions").exists()  # the per-file parts are gathered
    # A model saved before the envelope existed still predicts, but cannot explain.
    old = tmp_path / "old"
    old.mkdir()
    (old / model.name).write_bytes(model.read_bytes())
    raw = json.loads(model.with_name(META_FILE).read_text())
    del raw["envelope"]
    (old / META_FILE).write_text(json.dumps(raw))
    run_specad("predict", str(old), str(ds / "test"), "--out", str(tmp_path / "o2"), check=True)
    done = run_specad(
        "predict", str(old), str(ds / "test"), "--out", str(tmp_path / "o3"), "--explain"
    )
    one_line_failure(done, "no normal envelope", "refit")
    assert not (tmp_path / "o3").exists()
