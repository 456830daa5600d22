"""The per-image page's spectral viewer, driven in headless Debian chromium through Playwright:
what it plots is the cube's pixel, its band picker redraws, and it makes no network request; and
the same viewer on the pages of ``specad scene --out``.

Each browser test saves a screenshot of the viewer into its tmp_path, and also into the folder
``$SPECAD_SCREENSHOTS`` names where it is set: ``SPECAD_SCREENSHOTS=docs/images`` makes the
pictures of docs/report.md."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import run_specad, shared_data
from PIL import Image
from scipy import ndimage

from specad.data import load_dataset, read_mask
from specad.inference import Detector
from specad.io import Cube, read_cube, write_cube
from specad.metrics import threshold_at_far
from specad.models.envelope import robust_z
from specad.report import ReportConfig, write_report
from specad.report.scene import SCENE_FAR
from specad.report.viewer import PAGE_BUDGET, embedded
from specad.scenes import read_truth

CHROMIUM = Path("/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="Debian chromium is not installed at /usr/bin/chromium "
    "(scripts/install-chromium.sh installs it when run as root)",
)


@pytest.fixture(scope="module")
def tray6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small tray6, RX fitted on it and its report, made as a user would on the command line."""
    root = tmp_path_factory.mktemp("viewer")
    run_specad("synth", "--preset", "tray6", "--size", "48", "--out", "ds", cwd=root, check=True)
    run_specad("fit", "rx", "ds", "--out", "rx", cwd=root, check=True)
    run_specad(
        "report",
        "--model",
        "rx=rx",
        "--dataset",
        "ds",
        "--out",
        "report",
        cwd=root,
        check=True,
        timeout=600,
    )
    return root


def _page_data(page: Path) -> dict:
    found = re.search(
        r'<script type="application/json" id="viewer-data">(.*?)</script>', page.read_text(), re.S
    )
    assert found, "no viewer data on the page"
    return json.loads(found.group(1))


@contextmanager
def _chromium() -> Iterator[Any]:
    """Debian's headless chromium under Playwright (no browser download)."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            browser.close()


def _open(browser: Any, page: Path) -> tuple[Any, list[str], list[str]]:
    """A tab on ``page`` once its viewer is ready, with the URLs it requests and its errors."""
    tab = browser.new_page(viewport={"width": 1100, "height": 900})
    requests: list[str] = []
    errors: list[str] = []
    tab.on("request", lambda r: requests.append(r.url))
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(page.as_uri())
    # A function, not an expression: Playwright polls an expression with eval(), which the
    # page's CSP refuses as soon as the viewer is not ready at the first look.
    tab.wait_for_function("() => window.specadViewer && window.specadViewer.ready", timeout=20_000)
    return tab, requests, errors


def _click(tab: Any, data: dict, row: int, col: int) -> dict:
    """Click the grid point nearest the cube's pixel (row, col); what the viewer then plots."""
    i = int(np.argmin(np.abs(np.array(data["rows"]) - row)))
    j = int(np.argmin(np.abs(np.array(data["cols"]) - col)))
    h, w = len(data["rows"]), len(data["cols"])
    # the overlay canvas lies over the false colour, the same size: it takes the click
    box = tab.locator("#ov").bounding_box()
    assert box is not None
    tab.locator("#ov").click(
        position={"x": (j + 0.5) * box["width"] / w, "y": (i + 0.5) * box["height"] / h}
    )
    shown = tab.evaluate("window.specadViewer.pixel")
    assert json.loads(tab.locator("#viewer").get_attribute("data-pixel")) == shown
    assert (shown["row"], shown["col"]) == (data["rows"][i], data["cols"][j])
    return shown


SCREENSHOT_BYTES = 300_000


def _screenshot(tab: Any, name: str, tmp_path: Path) -> None:
    """The viewer as the browser drew it, clipped to the viewer: into ``tmp_path``, and into
    ``$SPECAD_SCREENSHOTS`` where set. It must be small enough for the docs, and not blank."""
    shot = tab.locator("#viewer").screenshot()
    folders = [tmp_path]
    if os.environ.get("SPECAD_SCREENSHOTS"):
        folders.append(Path(os.environ["SPECAD_SCREENSHOTS"]))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(shot)
    assert len(shot) < SCREENSHOT_BYTES
    colours = Image.open(io.BytesIO(shot)).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # the false colour and the plots, drawn


def _defect_centre(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of the largest true region nearest its centroid (inside it even if concave)."""
    labels, n = ndimage.label(mask > 0)
    biggest = 1 + int(np.argmax(ndimage.sum(mask > 0, labels, range(1, n + 1))))
    ys, xs = np.nonzero(labels == biggest)
    k = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    return int(ys[k]), int(xs[k])


@needs_chromium
def test_the_viewer_plots_the_clicked_pixel(tray6: Path, tmp_path: Path) -> None:
    report = tray6 / "report"
    pages = sorted((report / "images" / "rx" / "ds").glob("water_*.html"))
    assert pages, "no water page in the report"
    page = pages[0]
    data = _page_data(page)
    sample = next(s for s in load_dataset(tray6 / "ds").split("test") if s.path.stem in page.stem)
    cube = read_cube(sample.path)
    row, col = _defect_centre(read_mask(sample, cube.shape[:2]))
    h, w = len(data["rows"]), len(data["cols"])
    detector = Detector.load(tray6 / "rx")
    with _chromium() as browser:
        tab, requests, errors = _open(browser, page)
        shown = _click(tab, data, row, col)
        truth_trace = next(k for k, t in enumerate(data["traces"]) if t["kind"] == "truth")
        tab.locator(f"input[data-trace='{truth_trace}']").check()  # the defect's mean, plotted
        assert tab.evaluate("window.specadViewer.pixel") == shown
        _screenshot(tab, "viewer-water.png", tmp_path)

        before = tab.evaluate("document.getElementById('fc').toDataURL()")
        swir = data["presets"]["swir"]
        tab.locator("#band-r").select_option(str(swir[0]))
        after = tab.evaluate("document.getElementById('fc').toDataURL()")
        assert tab.evaluate("window.specadViewer.bands")[0] == swir[0]
        tab.locator("#preset-swir").click()
        swir_image = tab.evaluate("document.getElementById('fc').toDataURL()")
        assert tab.evaluate("window.specadViewer.bands") == swir
        _screenshot(tab, "viewer-swir.png", tmp_path)
        tab.locator("#opacity").fill("0")  # the overlay is a layer of its own
        assert tab.evaluate("document.getElementById('fc').toDataURL()") == swir_image

        here = tab.url
        tab.evaluate("document.activeElement.blur()")  # arrows in a form field stay there
        tab.keyboard.press("ArrowRight")
        if data["nav"]["next"]:
            tab.wait_for_url(lambda url: url != here)
            assert tab.url.endswith("/" + data["nav"]["next"])
    assert errors == []
    # The plotted pixel is the clicked one, and its values are the cube's there.
    assert (
        abs(shown["row"] - row) <= cube.shape[0] / h
        and abs(shown["col"] - col) <= cube.shape[1] / w
    )
    truth = cube.data[shown["row"], shown["col"], detector.meta.preprocess.channels]
    step = np.array(data["cube"]["scale"])
    assert np.all(np.abs(np.array(shown["spectrum"]) - truth) <= step / 2 + 1e-6)
    assert shown["x"] == detector.meta.wavelengths
    z = robust_z(np.array(shown["spectrum"]), detector.meta.envelope)
    assert np.allclose(shown["z"], z, rtol=1e-4, atol=1e-4)
    assert detector.meta.wavelengths[int(np.argmax(np.abs(z)))] == 1450.0  # water absorbs there
    score = detector.predict(cube).anomaly_map[shown["row"], shown["col"]]
    assert shown["score"] == pytest.approx(score, abs=data["map"]["scale"])
    assert shown["score"] >= data["threshold"]  # the defect's centre is flagged
    # Switching a band redrew the false colour; nothing left the report's own folder.
    assert before != after != swir_image
    assert requests and all(u.startswith((report.as_uri(), "data:")) for u in requests)
    text = page.read_text()
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text


def test_the_page_lists_regions_and_the_index_the_class_spectra(tray6: Path) -> None:
    report = tray6 / "report"
    index = (report / "index.html").read_text()
    assert "ds_spectra.png" in index and "against the normal envelope" in index
    page = sorted((report / "images" / "rx" / "ds").glob("water_*.html"))[0]
    text = page.read_text()
    regions = text[text.index("<h3>Detected regions</h3>") :]
    assert "1450 nm (" in regions.split("</table>")[0]  # the bands that make the region
    data = _page_data(page)
    names = [t["name"] for t in data["traces"]]
    assert any(n.startswith("truth 1 (water)") for n in names)
    assert any(n.startswith("detected 1") for n in names)


def test_the_embedding_decodes_to_the_cube() -> None:
    """What the viewer decodes (as viewer.js does) is each sampled pixel within half a step."""
    rng = np.random.default_rng(1)
    data = rng.random((70, 50, 9)).astype(np.float32)
    amap = rng.random((70, 50)).astype(np.float32)
    out = embedded(data, amap, 10**7)
    h, w = len(out["rows"]), len(out["cols"])
    assert (h, w) == (70, 50)  # below 256 px: every pixel
    q = np.frombuffer(zlib.decompress(base64.b64decode(out["cube"]["data"])), np.uint8)
    q = np.cumsum(q.reshape(h * w, 9).astype(np.int64), axis=1) % 256  # the band differences
    values = np.array(out["cube"]["min"]) + q * np.array(out["cube"]["scale"])
    truth = data[np.ix_(out["rows"], out["cols"])].reshape(-1, 9)
    assert np.abs(values - truth).max() <= np.max(out["cube"]["scale"]) / 2 + 1e-6
    m = np.frombuffer(zlib.decompress(base64.b64decode(out["map"]["data"])), "<u2")
    assert np.allclose(out["map"]["min"] + m * out["map"]["scale"], amap.ravel(), atol=1e-4)
    small = embedded(data, amap, 5_000)  # a tight budget: a coarser grid, still within it
    assert (
        len(small["rows"]) < 70 and len(small["cube"]["data"]) + len(small["map"]["data"]) < 5_000
    )


@pytest.mark.slow
def test_a_many_band_page_stays_within_its_budget(tmp_path: Path) -> None:
    """A 256 x 256 x 224 cube, noisy enough that little compresses: the page with its pictures
    stays within 3 MB."""
    rng = np.random.default_rng(0)
    nm = np.linspace(400, 2500, 224)
    base = (0.4 + 0.2 * np.sin(nm / 300)).astype(np.float32)

    def cube() -> Cube:
        light = 1 + 0.1 * rng.standard_normal((256, 256, 1))
        noise = 0.02 * rng.standard_normal((256, 256, 224))
        return Cube((base * light + noise).astype(np.float32), wavelengths=list(nm))

    ds = tmp_path / "ds"
    for split in ("train", "val", "test"):
        write_cube(ds / split / "good" / f"{split}.tif", cube())
    index = write_report(ReportConfig(models={"rx": "rx"}, datasets=[ds], out=tmp_path / "out"))
    page = next((index.parent / "images" / "rx" / "ds").glob("*.html"))
    weight = page.stat().st_size + sum(f.stat().st_size for f in page.with_suffix("").iterdir())
    data = _page_data(page)
    assert weight <= PAGE_BUDGET
    assert len(data["bands"]) == 224 and len(data["rows"]) >= 64  # coarser, not useless


def _planted_scene(folder: Path) -> tuple[Path, Path]:
    """A 48 x 40 scene of 24 bands (400-1000 nm): two smooth materials and noise, and a 4 x 4
    target whose spectrum rises near 700 nm; saved as a TIFF with its wavelengths, and its
    truth as a PNG."""
    rng = np.random.default_rng(3)
    nm = np.linspace(400, 1000, 24)
    ends = np.stack([0.3 + 0.1 * np.sin(nm / 90), 0.5 - 0.2 * (nm - 400) / 600])
    mix = np.linspace(0, 1, 40)[None, :, None] * np.ones((48, 1, 1))
    data = (1 - mix) * ends[0] + mix * ends[1] + rng.normal(0, 0.01, (48, 40, 24))
    mask = np.zeros((48, 40), bool)
    mask[20:24, 12:16] = True
    data[mask] += 0.3 * np.exp(-(((nm - 700) / 40) ** 2))
    cube, truth = folder / "scene.tif", folder / "truth.png"
    write_cube(cube, Cube(data.astype(np.float32), wavelengths=list(nm)))
    Image.fromarray(mask.astype(np.uint8) * 255).save(truth)
    return cube, truth


@needs_chromium
@pytest.mark.parametrize("source", ["planted", pytest.param("had", marks=pytest.mark.real_data)])
def test_a_scene_page_has_the_viewer(source: str, tmp_path: Path) -> None:
    """``specad scene --out`` writes a page per detector with the viewer: the clicked pixel's
    spectrum is the cube's, its deviation is against the scene's background (the pixels below
    the page's threshold), and the arrow keys go from one detector's page to the next."""
    if source == "had":
        file, truth = shared_data("had") / "sandiego_plane.mat", "map"
        extra = ["--variable", "data"]
    else:
        file, mask_png = _planted_scene(tmp_path)
        truth, extra = str(mask_png), []
    out = tmp_path / "out"
    run_specad(
        "scene", str(file), *extra, "--truth", truth, "--detector", "global-rx,auto",
        "--out", str(out), check=True, timeout=300,
    )  # fmt: skip
    page = out / "global-rx.html"
    data = _page_data(page)
    weight = page.stat().st_size + (out / "global-rx.png").stat().st_size
    assert weight <= PAGE_BUDGET
    cube = read_cube(file, variable="data" if source == "had" else None)
    mask = read_truth(Path(file), truth)
    score_map = tifffile.imread(out / "global-rx.tif")
    threshold = threshold_at_far(score_map, SCENE_FAR)
    assert data["threshold"] == pytest.approx(threshold)
    background = cube.data[score_map < threshold].astype(np.float64)
    assert np.allclose(
        data["envelope"]["median"], np.median(background, axis=0), rtol=1e-5, atol=1e-9
    )
    row, col = _defect_centre(mask)
    with _chromium() as browser:
        tab, requests, errors = _open(browser, page)
        shown = _click(tab, data, row, col)
        _screenshot(tab, f"viewer-scene-{source}.png", tmp_path)
        tab.evaluate("document.activeElement.blur()")
        tab.keyboard.press("ArrowRight")
        tab.wait_for_url(lambda url: url.endswith("/auto.html"))
        tab.wait_for_function("() => window.specadViewer && window.specadViewer.ready")
    assert errors == []
    assert requests and all(u.startswith((out.as_uri(), "data:")) for u in requests)
    assert data["nav"] == {"previous": None, "next": "auto.html"}
    truth_values = cube.data[shown["row"], shown["col"]]
    step = np.array(data["cube"]["scale"])
    assert np.all(np.abs(np.array(shown["spectrum"]) - truth_values) <= step / 2 + 1e-6)
    assert shown["x"] == (cube.wavelengths or list(range(cube.channels)))
    spread = (np.array(data["envelope"]["p99"]) - np.array(data["envelope"]["p1"])) / 4.6526
    z = (np.array(shown["spectrum"]) - np.array(data["envelope"]["median"])) / spread
    assert np.allclose(shown["z"], z, rtol=1e-3, atol=1e-3)
    assert shown["score"] == pytest.approx(
        score_map[shown["row"], shown["col"]], abs=data["map"]["scale"]
    )
    assert shown["score"] >= data["threshold"]  # the target's centre is among the flagged
    if source == "planted":  # the planted bump, seen against the background
        assert 600 <= shown["x"][int(np.argmax(shown["z"]))] <= 800
        assert any(t["name"].startswith("truth 1") for t in data["traces"])
