"""Single-scene detectors: planted targets rank first, agreement with slow per-pixel loops,
band preparation, and `specad scene` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tifffile
from conftest import one_line_failure, run_specad, slow_case

from specad.errors import SpecadError
from specad.io import Cube
from specad.models.bands import BandPrep, mnf, parse_ranges, pca
from specad.models.scene import CRD, SCENE_DETECTORS, LocalRX, TwoStepGLRT, make_detector

SMALL = {
    "global-rx": {},
    "lrx": {"outer": 9, "inner": 3},
    "crd": {"outer": 7, "inner": 3},
    "2s-glrt": {"outer": 9, "inner": 3},
}


def planted_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 32x32x12 background of three smooth materials plus noise, and a 2x2 target whose
    spectrum is none of them."""
    rng = np.random.default_rng(seed)
    h, w, b = 32, 32, 12
    ends = rng.uniform(0.2, 0.8, (3, b))
    yy, xx = np.mgrid[0:h, 0:w] / 32
    abund = np.stack([np.sin(3 * yy) ** 2, np.cos(2 * xx) ** 2, 0.5 + 0 * xx], -1)
    cube = abund @ ends / abund.sum(-1, keepdims=True) + rng.normal(0, 0.01, (h, w, b))
    mask = np.zeros((h, w), dtype=bool)
    mask[14:16, 20:22] = True
    target = 0.5 + 0.3 * np.sin(np.arange(b))
    cube[mask] = 0.5 * cube[mask] + 0.5 * target
    return cube, mask


@pytest.mark.parametrize("name", list(SCENE_DETECTORS))
def test_planted_target_ranks_first(name: str) -> None:
    cube, mask = planted_scene()
    score = make_detector(name, **SMALL[name]).score_cube(cube)
    assert score.shape == mask.shape and score.dtype == np.float32
    assert score[mask].min() > score[~mask].max(), name


# --------------------------------------------------------------------------- slow references


def ring_pixels(x: np.ndarray, i: int, j: int, outer: int, inner: int) -> np.ndarray:
    """(K, B) dual-window background of pixel (i, j), borders mirrored, by explicit loops."""
    t, ti = outer // 2, inner // 2
    h, w, _ = x.shape
    rows = []
    for di in range(-t, t + 1):
        for dj in range(-t, t + 1):
            if abs(di) <= ti and abs(dj) <= ti:
                continue
            r, c = i + di, j + dj
            r = -r - 1 if r < 0 else (2 * h - r - 1 if r >= h else r)
            c = -c - 1 if c < 0 else (2 * w - c - 1 if c >= w else c)
            rows.append(x[r, c])
    return np.array(rows)


def inner_pixels(x: np.ndarray, i: int, j: int, inner: int) -> np.ndarray:
    ti = inner // 2
    h, w, _ = x.shape
    out = []
    for di in range(-ti, ti + 1):
        for dj in range(-ti, ti + 1):
            r, c = i + di, j + dj
            r = -r - 1 if r < 0 else (2 * h - r - 1 if r >= h else r)
            c = -c - 1 if c < 0 else (2 * w - c - 1 if c >= w else c)
            out.append(x[r, c])
    return np.array(out)


def loaded(cov: np.ndarray, ridge: float) -> np.ndarray:
    return cov + ridge * np.trace(cov) / len(cov) * np.eye(len(cov))


def slow_lrx(x: np.ndarray, outer: int, inner: int, ridge: float) -> np.ndarray:
    out = np.zeros(x.shape[:2])
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            bg = ring_pixels(x, i, j, outer, inner)
            d = x[i, j] - bg.mean(0)
            out[i, j] = d @ np.linalg.inv(loaded(np.cov(bg, rowvar=False, bias=True), ridge)) @ d
    return out


def slow_crd(x: np.ndarray, outer: int, inner: int, lam: float) -> np.ndarray:
    out = np.zeros(x.shape[:2])
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            xs = ring_pixels(x, i, j, outer, inner).T  # (B, K)
            y = x[i, j]
            gamma = np.diag(np.linalg.norm(xs - y[:, None], axis=0))
            alpha = np.linalg.solve(xs.T @ xs + lam * gamma @ gamma, xs.T @ y)
            out[i, j] = np.linalg.norm(y - xs @ alpha)
    return out


def slow_glrt(x: np.ndarray, outer: int, inner: int) -> np.ndarray:
    x = (x - x.min((0, 1))) / (x.max((0, 1)) - x.min((0, 1)))
    out = np.zeros(x.shape[:2])
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            y = ring_pixels(x, i, j, outer, inner).T
            xt = inner_pixels(x, i, j, inner).T
            out[i, j] = np.linalg.eigvalsh(xt.T @ np.linalg.inv(y @ y.T) @ xt).max()
    return out


@pytest.fixture(scope="module")
def tiny() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.uniform(0, 1, (9, 8, 4)) + 5.0  # offset: the fast path must centre safely


def test_lrx_matches_per_pixel_loops(tiny: np.ndarray) -> None:
    fast = LocalRX(outer=7, inner=3, ridge=1e-2).score_cube(tiny)
    np.testing.assert_allclose(fast, slow_lrx(tiny, 7, 3, 1e-2), rtol=1e-4, atol=1e-5)


def test_crd_matches_per_pixel_loops(tiny: np.ndarray) -> None:
    fast = CRD(outer=5, inner=3, lam=1e-2).score_cube(tiny)
    centred = tiny - tiny.reshape(-1, 4).mean(0)  # CRD runs on the scene-centred cube
    np.testing.assert_allclose(fast, slow_crd(centred, 5, 3, 1e-2), rtol=1e-4, atol=1e-6)


def test_glrt_matches_per_pixel_loops(tiny: np.ndarray) -> None:
    fast = TwoStepGLRT(outer=7, inner=3, ridge=0.0).score_cube(tiny)
    np.testing.assert_allclose(fast, slow_glrt(tiny, 7, 3), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"outer": 8}, "odd"),
        ({"outer": 5, "inner": 5}, "smaller"),
        ({"outer": 99}, "too large"),
        ({"size": 3}, "lrx size: Unexpected keyword argument"),
    ],
)
def test_bad_windows_are_one_clear_error(params: dict, message: str) -> None:
    cube, _ = planted_scene()
    with pytest.raises(SpecadError, match=message):
        make_detector("lrx", **params).score_cube(cube)


# --------------------------------------------------------------------------- band preparation


def test_band_prep_drops_and_reduces() -> None:
    cube, _ = planted_scene()
    c = Cube(cube, wavelengths=[400.0 + 50 * i for i in range(12)])
    data, record = BandPrep(drop=parse_ranges("0-1,5"), drop_nm=parse_ranges("900-950")).apply(c)
    assert data.shape[2] == 12 - 5 and record["bands_dropped"] == 5
    data, record = BandPrep(reduce="pca", components=4).apply(c)
    assert data.shape[2] == 4 and record == {
        "bands_in": 12, "bands_dropped": 0, "reduce": "pca", "bands_out": 4, "components": 4
    }  # fmt: skip
    with pytest.raises(SpecadError, match="wavelengths"):
        BandPrep(drop_nm=[(900.0, 950.0)]).apply(Cube(cube))
    with pytest.raises(SpecadError, match="components"):
        BandPrep(reduce="mnf", components=40).apply(c)


def test_pca_and_mnf_order_components() -> None:
    cube, _ = planted_scene()
    var = pca(cube, 5).reshape(-1, 5).var(0)
    assert np.all(np.diff(var) <= 1e-12)
    m = mnf(cube, 3)  # unit noise variance: the first component has the largest total variance
    v = m.reshape(-1, 3).var(0)
    assert v[0] >= v[1] >= v[2] > 0.5


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cube, mask = planted_scene()
    path = tmp_path_factory.mktemp("s") / "scene.mat"
    scipy.io.savemat(path, {"data": cube, "map": mask.astype(np.uint8)})
    return path


def test_scene_several_detectors_json_and_outputs(scene_file: Path, tmp_path: Path) -> None:
    args = ["--detector", "global-rx,lrx,crd,2s-glrt", "--truth", "map", "--reduce", "pca"]
    args += ["--components", "6", "--param", "lrx.outer=9", "--param", "lrx.inner=3"]
    args += ["--param", "crd.outer=7", "--param", "2s-glrt.outer=9", "--param", "2s-glrt.inner=3"]
    out = tmp_path / "maps"
    done = run_specad("scene", str(scene_file), *args, "--out", str(out), "--json", check=True)
    summary = json.loads(done.stdout)
    assert [d["detector"] for d in summary["detectors"]] == ["global-rx", "lrx", "crd", "2s-glrt"]
    assert summary["bands"]["reduce"] == "pca" and summary["bands"]["bands_out"] == 6
    assert summary["detectors"][1]["params"] == {"outer": 9, "inner": 3, "ridge": 1e-3}
    assert all(d["pixel_auroc"] > 0.9 for d in summary["detectors"])
    for name in ("global-rx", "lrx", "crd", "2s-glrt"):
        assert tifffile.imread(out / f"{name}.tif").shape == (32, 32)
        assert (out / f"{name}.png").stat().st_size > 0
    assert json.loads((out / "scene.json").read_text()) == summary
    two = ("--detector", "global-rx,crd", "--truth", "map")
    table = run_specad("scene", str(scene_file), *two, check=True).stdout
    assert "global-rx" in table and "crd" in table and "pixel AUROC" in table
    one_line_failure(run_specad("scene", str(scene_file), "--out", str(out)))  # no --force


@pytest.mark.parametrize(
    "args",
    [
        ["--detector", "nope"],
        slow_case(["--param", "lrx.outer"]),
        slow_case(["--detector", "lrx", "--param", "lrx.outer=8"]),
        slow_case(["--reduce", "ica"]),
        slow_case(["--reduce", "pca"]),  # the default (auto) chooses its own reductions
        slow_case(["--drop-bands", "4-1"]),
        slow_case(["--drop-nm", "900-950"]),
        ["--truth", "nothere"],
    ],
)
def test_scene_bad_input_is_one_line(scene_file: Path, args: list[str]) -> None:
    done = run_specad("scene", str(scene_file), *args)
    one_line_failure(done)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_scene_table_reads_as_words_not_python(scene_file: Path) -> None:
    """The header and the parameters column say what was done in words: no dict or list repr."""
    wide = {"COLUMNS": "200"}  # one line per row, so that phrases are not wrapped apart
    fused = run_specad("scene", str(scene_file), "--truth", "map", env=wide, check=True).stdout
    assert "12 bands in, none dropped" in fused
    assert "fusion of global-rx on all bands" in fused  # 12 bands: too few for PCA 20
    args = ["--detector", "global-rx,lrx", "--reduce", "pca", "--components", "6"]
    args += ["--param", "lrx.outer=9", "--param", "lrx.inner=3", "--drop-bands", "0"]
    table = run_specad("scene", str(scene_file), *args, env=wide, check=True).stdout
    assert "12 bands in, 1 dropped, PCA to 6" in table
    assert "outer 9, inner 3, ridge 0.001" in table
    for text in (fused, table):
        assert not {"{", "}", "[", "]", "'"} & set(text), text
