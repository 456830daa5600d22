"""`specad scene` and the scene detectors on the inputs a hostile probe found (issue 38): a
1-band cube, broken or tagged YAML, windows and scenes that imply gigabytes, a constant cube,
NaN in the JSON, parameters for detectors that do not run, and an --out aimed at an input."""

from __future__ import annotations

import json
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import checksums, one_line_failure, run_specad
from PIL import Image

from specad.bounds import MAX_SCENE_BYTES, text_value
from specad.errors import SpecadError
from specad.models import scene
from specad.models.rx import rx_scene
from specad.models.scene import SCENE_DETECTORS, make_detector, rank_fuse
from specad.scenes import scene_scores, strict_json

GIB = 1 << 30
SMALL = {
    "global-rx": {},
    "lrx": {"outer": 9, "inner": 3},
    "crd": {"outer": 7, "inner": 3},
    "2s-glrt": {"outer": 9, "inner": 3},
}


def save(path: Path, cube: np.ndarray) -> Path:
    np.save(path, cube.astype(np.float32))
    return path


def target_scene(bands: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 32x32 noisy background with a 2x2 bright target, and its mask."""
    cube = 0.5 + 0.01 * np.random.default_rng(seed).standard_normal((32, 32, bands))
    mask = np.zeros((32, 32), dtype=bool)
    mask[10:12, 20:22] = True
    cube[mask] += 0.2
    return cube, mask


def scene_cli(*args: str) -> tuple:
    """``specad scene ARGS`` (30 s at most), its seconds, and whether every child so far stayed
    under 1 GiB: None when an earlier child of this test process went beyond, so this one
    cannot be told apart (the kernel keeps one peak over all of them)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    start = time.perf_counter()
    done = run_specad("scene", *args, timeout=60)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return done, seconds, None if before >= GIB else peak < GIB


def refused_quickly(args: list[str], *needles: str) -> str:
    done, seconds, small = scene_cli(*args)
    line = one_line_failure(done, *needles)
    assert seconds < 30 and small is not False, (seconds, line)
    return line


# 1 ------------------------------------------------------------- the default on a 1-band cube


def test_default_scene_scores_a_one_band_cube(tmp_path: Path) -> None:
    cube, mask = target_scene(1)
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    path = save(tmp_path / "one.npy", cube)
    truth = str(tmp_path / "m.png")
    done, _, _ = scene_cli(str(path), "--axes", "hwc", "--truth", truth, "--json")
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["detectors"]
    assert run["params"]["members"] == ["all bands / global-rx"]
    assert "PCA 20 / global-rx, MNF 20 / global-rx" in run["params"]["left out"]
    assert run["pixel_auroc"] > 0.99
    (auto,), _ = scene_scores(path, truth, axes="hwc")
    np.testing.assert_array_equal(auto.score_map, rank_fuse([rx_scene(cube.astype(np.float32))]))


def test_default_scene_on_a_constant_cube_of_many_bands_is_all_equal(tmp_path: Path) -> None:
    path = save(tmp_path / "flat.npy", np.full((24, 24, 30), 0.3))
    (run,), _ = scene_scores(path, axes="hwc")
    assert len(run.params["members"]) == 3  # PCA and MNF ran: nothing to reduce, no failure
    assert np.isfinite(run.score_map).all() and np.ptp(run.score_map) == 0


# 2 ------------------------------------------------------------------ --param values as YAML


@pytest.mark.parametrize(
    "value", ["[", "{a: 1", "!!python/object/apply:os.system ['echo pwned']", "*alias"]
)
def test_param_that_is_not_plain_yaml_is_one_line(tmp_path: Path, value: str) -> None:
    path = save(tmp_path / "c.npy", target_scene(4)[0])
    param = f"global-rx.shrinkage={value}"
    args = [str(path), "--axes", "hwc", "--detector", "global-rx", "--param", param]
    done, _, _ = scene_cli(*args)
    one_line_failure(done, "--param global-rx.shrinkage", "not valid YAML")
    assert "pwned" not in done.stdout + done.stderr


def test_param_in_exponent_notation_is_a_number() -> None:
    assert text_value("1e-4", "x") == 1e-4 and text_value("2E+3", "x") == 2000.0
    assert text_value("15", "x") == 15 and text_value("1e-4x", "x") == "1e-4x"


@pytest.mark.parametrize(
    ("param", "needle"),
    [("crd.lam=.nan", "crd lam"), ("crd.lam=.inf", "crd lam"), ("lrx.ridge=1e400", "lrx ridge")],
)
def test_non_finite_loadings_are_refused(param: str, needle: str) -> None:
    name, _, rest = param.partition(".")
    field, _, value = rest.partition("=")
    with pytest.raises(SpecadError, match=needle):
        make_detector(name, **{field: text_value(value, param)})


# 3, 5 ---------------------------------------------- windows and bands that imply gigabytes


@pytest.mark.parametrize(
    ("shape", "params"),
    [
        ((64, 64, 8), {"crd": {"outer": 129}}),
        ((64, 64, 8), {"2s-glrt": {"outer": 129, "inner": 127}}),
        ((16, 16, 1100), {"lrx": {}}),
    ],
)
def test_runs_beyond_the_memory_bound_are_refused_before_allocating(
    shape: tuple, params: dict
) -> None:
    ((name, given),) = params.items()
    det = make_detector(name, **given)
    assert det.working_bytes(shape) > MAX_SCENE_BYTES
    cube = np.zeros(shape)
    tracemalloc.start()
    try:
        with pytest.raises(SpecadError, match=r"about [\d.]+ GiB .* limit of 1\.0 GiB"):
            det.score_cube(cube)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20  # refused before the work
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("shape", "args"),
    [
        ((64, 64, 8), ["--detector", "crd", "--param", "crd.outer=129"]),
        (
            (64, 64, 8),
            [
                "--detector",
                "2s-glrt",
                "--param",
                "2s-glrt.outer=129",
                "--param",
                "2s-glrt.inner=127",
            ],
        ),
        ((16, 16, 1100), ["--detector", "lrx"]),
    ],
)
def test_scene_windows_beyond_memory_are_one_line(tmp_path: Path, shape: tuple, args: list) -> None:
    path = save(tmp_path / "c.npy", np.random.default_rng(0).random(shape))
    line = refused_quickly([str(path), "--axes", "hwc", *args], "GiB", "MAX_SCENE_BYTES")
    assert "smaller windows" in line


def test_blocks_of_pixels_give_the_maps_of_whole_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large windows are solved a few pixels at a time: the map is the same."""
    cube, mask = target_scene(5)
    for name in ("crd", "2s-glrt"):
        det = make_detector(name, outer=11, inner=5)
        whole = det.score_cube(cube)
        with monkeypatch.context() as patch:
            patch.setattr(scene, "BLOCK_BYTES", 1)  # one pixel at a time
            np.testing.assert_allclose(det.score_cube(cube), whole, rtol=1e-5)
        assert whole[mask].min() > np.median(whole), name


# 4 ------------------------------------------------------------------------- constant cubes


@pytest.mark.parametrize("name", list(SCENE_DETECTORS))
@pytest.mark.parametrize("load", [None, 0.0])
def test_a_constant_cube_scores_all_equal_and_finite(name: str, load: float | None) -> None:
    params = dict(SMALL[name])
    if load is not None and name != "global-rx":
        params["lam" if name == "crd" else "ridge"] = load
    flat = make_detector(name, **params).score_cube(np.full((24, 24, 6), 7.0))
    assert np.isfinite(flat).all() and np.ptp(flat) == 0
    spike = np.full((24, 24, 6), 7.0)
    spike[12, 12] += 1.0
    score = make_detector(name, **params).score_cube(spike)
    assert np.isfinite(score).all() and score[12, 12] == score.max() > score.min()


def test_lrx_on_a_constant_cube_through_the_command(tmp_path: Path) -> None:
    path = save(tmp_path / "flat.npy", np.ones((32, 32, 8)))
    done, _, _ = scene_cli(str(path), "--axes", "hwc", "--detector", "lrx", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["detectors"][0]["params"]["outer"] == 25


# 6 ----------------------------------------------------------- scenes of too many pixels


def test_a_scene_beyond_the_memory_bound_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "wide.npy"  # 64 MB of zeros, stored sparse: the pipeline needs GiBs
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(4000, 4000, 1)).flush()
    refused_quickly([str(path), "--axes", "hwc"], "auto on this 4000x4000x1 scene", "GiB")


def test_a_compressed_cube_of_zeros_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, cube=np.zeros((4000, 4000, 6), np.float32))
    assert path.stat().st_size < 1 << 20
    refused_quickly([str(path), "--axes", "hwc"])


# 7 --------------------------------------------------------------------------- strict JSON


def test_scene_json_and_scene_file_are_strict_json(tmp_path: Path) -> None:
    path = save(tmp_path / "c.npy", target_scene(4)[0])
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "none.png")  # AUROC undefined
    args = [str(path), "--axes", "hwc", "--truth", str(tmp_path / "none.png")]
    done, _, _ = scene_cli(*args, "--detector", "global-rx", "--json", "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    printed = json.loads(done.stdout, parse_constant=refuse)
    stored = json.loads((tmp_path / "o" / "scene.json").read_text(), parse_constant=refuse)
    assert printed == stored and printed["detectors"][0]["pixel_auroc"] is None


def test_strict_json_turns_non_finite_numbers_into_null() -> None:
    text = strict_json({"a": [np.float32("nan"), float("inf"), np.int64(3)], "b": (1.5,)})
    assert json.loads(text) == {"a": [None, None, 3], "b": [1.5]}


# 8 --------------------------------------------------- parameters for detectors not running


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--param", "lrx.outer=15"], "--param lrx.outer: 'lrx' is not among"),
        (["--detector", "lrx", "--param", "crd.lam=1"], "--param crd.lam: 'crd' is not among"),
        (["--param", "auto.members=2"], "'auto' takes no parameters"),
        (["--detector", "global-rx,global-rx"], "names a detector twice"),
    ],
)
def test_parameters_for_detectors_not_run_are_refused(
    tmp_path: Path, args: list, needle: str
) -> None:
    path = save(tmp_path / "c.npy", target_scene(4)[0])
    refused_quickly([str(path), "--axes", "hwc", *args], needle)


# 9 ----------------------------------------------------------------------- inputs are sacred


@pytest.mark.parametrize("out", ["scenes", ".", "scenes/c.npy", "scenes/m.png", "scenes/c.npy/x"])
def test_force_never_replaces_an_input(tmp_path: Path, out: str) -> None:
    folder = tmp_path / "scenes"
    folder.mkdir()
    cube, mask = target_scene(4)
    path = save(folder / "c.npy", cube)
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "m.png")
    before = checksums(folder)
    args = [str(path), "--axes", "hwc", "--truth", str(folder / "m.png")]
    args += ["--out", str(tmp_path / out), "--force"]
    refused_quickly(args, "choose another --out")
    assert checksums(folder) == before
