"""Every entry point validated (issue 30): fit parameters, `--set` overrides, ``model.json`` and
saved tensors of every registered detector, ``--tiled`` at any channel count, false-colour bands.

Each numbered class of the issue has a test that failed before the fix. The generated cases
(`fuzz_models`) are few here; ``benchmarks/robustness/fuzz.py`` runs thousands. Every failing
command leaves the user's files byte-identical, and no case grows the test process past
`PEAK_RSS_MB`.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import checksums, make_dataset, one_line_failure, run_specad, slow_case
from fuzz_models import (
    State,
    check_fit_sets,
    check_model,
    check_train_sets,
    detector_keys,
    mutated_json,
    mutated_state,
    peak_rss_mb,
    reset_peak_rss,
    saved_models,
    set_items,
    write_state,
)
from hypothesis import HealthCheck, given, settings

from specad.data import load_dataset
from specad.errors import SpecadError
from specad.fit import fit_on_dataset
from specad.inference import Detector
from specad.io import Cube, read_cube, write_cube
from specad.models.registry import DETECTORS, fit_on_dataset_names, read_file

PEAK_RSS_MB = 1024
"""How far a test may grow the test process's resident memory: a model file asking for
terabytes stays below."""


def few(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture(autouse=True)
def _fresh_peak_rss() -> None:
    """Each test measures what it grew the process by, not the tests before it."""
    reset_peak_rss()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return saved_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("d") / "ds", size=32, counts=(2, 2, 1))


# 1 ------------------------------------------------------------------ fit parameters


@pytest.mark.parametrize("value", ["abc", "-1", "1e400", "", "5", "5000"])
def test_fit_parameters_are_one_line_naming_the_key(value: str) -> None:
    from specad.cli.models import fit_settings

    with pytest.raises(SpecadError, match="--set image_size:") as err:
        fit_settings("knn", [f"image_size={value}"])  # what `specad fit` checks first
    assert "\n" not in str(err.value)


def test_bad_fit_parameters_on_the_command_line(tmp_path: Path, dataset: Path) -> None:
    before = checksums(dataset)
    done = run_specad(
        "fit", "knn", str(dataset), "--out", str(tmp_path / "m"), "--set", "image_size=5000"
    )
    one_line_failure(done, "--set image_size:")
    done = run_specad("evaluate", "rx", str(dataset), "--far", "nan")
    one_line_failure(done, "--far:")
    assert checksums(dataset) == before
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("kind", fit_on_dataset_names())
def test_generated_fit_parameters(kind: str) -> None:
    @few(25)
    @given(set_items(detector_keys(kind)))
    def run(items: list[str]) -> None:
        check_fit_sets(kind, items)

    run()
    assert peak_rss_mb() < PEAK_RSS_MB


# 2 ------------------------------------------------------------------ malformed overrides


@pytest.mark.parametrize("value", ["[", "{", "{a: [", "!!python/object:os.system"])
def test_broken_yaml_in_an_override_names_the_key(value: str) -> None:
    from specad.cli.models import fit_settings

    with pytest.raises(SpecadError, match="--set coreset_size: the value is not valid YAML"):
        fit_settings("knn", [f"coreset_size={value}"])


def test_broken_override_on_the_command_line(tmp_path: Path, dataset: Path) -> None:
    before = checksums(dataset)
    done = run_specad("fit", "rx", str(dataset), "--out", str(tmp_path / "m"), "--set", "a=[")
    one_line_failure(done, "--set a:", "not valid YAML")
    assert checksums(dataset) == before


def test_generated_train_overrides(tmp_path: Path) -> None:
    keys = ["data.image_size", "data.channels", "train.steps", "model.teacher", "train.lr", "x"]

    @few(40)
    @given(set_items(keys))
    def run(items: list[str]) -> None:
        check_train_sets(tmp_path, items)

    run()


# 3 ------------------------------------------------------------------ model.json


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("image_size", 10**9, "preprocess.image_size: Input should be less than or equal to 1024"),
        slow_case("std", ["1.0"] * 6, "preprocess.std.0: Input should be a valid number"),
        slow_case("source_channels", 10**12, "preprocess.source_channels"),
    ],
)
def test_model_json_values_are_bounded(tmp_path, models, field, value, needle) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(models["rx"], bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["preprocess"][field] = value
    (bad / "model.json").write_text(json.dumps(meta))
    before = checksums(bad)
    cube = tmp_path / "c.tif"
    write_cube(cube, Cube(np.full((8, 8, 6), 0.4, np.float32)))
    done = run_specad("predict", str(bad), str(cube), "--out", str(tmp_path / "o"))
    one_line_failure(done, "model.json:", needle)
    assert checksums(bad) == before
    assert peak_rss_mb() < PEAK_RSS_MB


@pytest.mark.parametrize("kind", list(DETECTORS))
def test_generated_model_json(tmp_path: Path, models: dict[str, Path], kind: str) -> None:
    doc = json.loads((models[kind] / "model.json").read_text())

    @few(10)
    @given(mutated_json(doc))
    def run(mutated: dict) -> None:
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        shutil.copytree(models[kind], folder, dirs_exist_ok=True)
        (folder / "model.json").write_text(json.dumps(mutated))
        check_model(folder)
        shutil.rmtree(folder)

    run()
    assert peak_rss_mb() < PEAK_RSS_MB


# 4 ------------------------------------------------------------------ saved tensors


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda t: t[:0], r"knn tensor 'bank' is \(0, 344\)"),
        (lambda t: t[:, :10], r"knn tensor 'bank' is \(\d+, 10\), expected N x 344"),
        (lambda t: t.double(), "knn tensor .bank. is torch.float64, expected float32"),
        (lambda t: t.fill_(float("nan")), "knn tensor 'bank' is not finite"),
    ],
)
def test_knn_bank_is_checked_at_load(tmp_path, models, change, needle) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(models["knn"], bad)
    metadata, tensors = read_file(bad / "model.safetensors")
    tensors["bank"] = change(tensors["bank"].clone())
    write_state(bad, tensors, metadata)
    with pytest.raises(SpecadError, match=f"model.safetensors: {needle}"):
        Detector.load(bad)


@pytest.mark.parametrize("kind", list(DETECTORS))
def test_generated_saved_state(tmp_path: Path, models: dict[str, Path], kind: str) -> None:
    metadata, tensors = read_file(models[kind] / "model.safetensors")

    @few(10)
    @given(mutated_state(State(tensors, metadata)))
    def run(state: tuple[dict, dict]) -> None:
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        shutil.copy(models[kind] / "model.json", folder)
        write_state(folder, *state)
        check_model(folder)
        shutil.rmtree(folder)

    run()
    assert peak_rss_mb() < PEAK_RSS_MB


# 5 ------------------------------------------------------------------ --tiled at any channel count


@pytest.fixture(scope="module")
def one_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("d1") / "ds", size=32, channels=1, counts=(2, 2, 1))


@pytest.mark.parametrize("kind", fit_on_dataset_names())
def test_tiled_works_with_one_channel(one_channel: Path, kind: str) -> None:
    """Every detector fitted on one-channel cubes at a 32 px input scores a larger one-channel
    cube in tiles; a six-channel cube is refused with one line, tiled or not."""
    det = fit_on_dataset(kind, load_dataset(one_channel), device="cpu", image_size=32)
    cube = Cube(np.random.default_rng(0).random((70, 45, 1), np.float32) * 0.1 + 0.4)
    pred = det.predict(cube, tiled=True)
    assert pred.anomaly_map.shape == (70, 45)
    assert np.isfinite(pred.anomaly_map).all()
    six = Cube(np.full((70, 45, 6), 0.4, np.float32))
    for tiled in (True, False):
        with pytest.raises(SpecadError, match="expects cubes with 1 channels, this one has 6"):
            det.predict(six, tiled=tiled)


def test_tiled_one_channel_cube_on_a_six_channel_model(tmp_path: Path, models) -> None:
    cube = tmp_path / "one.tif"
    write_cube(cube, Cube(np.full((80, 80, 1), 0.4, np.float32)))
    before = checksums(models["knn"], cube)
    args = ("predict", str(models["knn"]), str(cube), "--out", str(tmp_path / "o"), "--tiled")
    done = run_specad(*args)
    one_line_failure(done, "one.tif: the model expects cubes with 6 channels, this one has 1")
    assert checksums(models["knn"], cube) == before


# 6 ------------------------------------------------------------------ false-colour bands


def test_rgb_bands_past_the_last_fall_back_with_a_note(tmp_path: Path, models) -> None:
    path = tmp_path / "c.hdr"
    write_cube(path, Cube(np.random.default_rng(0).random((24, 20, 6), np.float32)))
    header = re.sub(r"default bands = \{[^}]*\}\n?", "", path.read_text())
    path.write_text(header + "default bands = {99, 2, 3}\n")
    assert read_cube(path).rgb == (98, 1, 2)
    done = run_specad("predict", str(models["rx"]), str(path), "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "note: RGB bands [99, 2, 3] (counted from 1) are not all among the cube's 6" in (
        done.stderr
    )
    assert (tmp_path / "o" / "overlays" / "c.png").is_file()


def test_report_views_never_index_missing_bands() -> None:
    from specad.report.panels import false_colour_views
    from specad.visual import false_colour

    cube = Cube(np.random.default_rng(0).random((10, 10, 2), np.float32), rgb=(0, 1, 5))
    with pytest.warns(UserWarning, match="showing band 1 in grey"):
        views = false_colour_views(cube, None)
    assert views[0][2] == [0, 0, 0]
    with pytest.warns(UserWarning):
        assert false_colour(cube.data, (7, 8, 9)).shape == (10, 10, 3)
