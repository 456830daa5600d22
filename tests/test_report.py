"""The HTML report: files, tables, per-image pages, config errors, and a real headless browser."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_dataset
from PIL import Image

from specad.data import load_dataset
from specad.errors import SpecadError
from specad.fit import fit_on_dataset
from specad.io import Cube
from specad.report import (
    ReportConfig,
    instructive_order,
    load_report_config,
    swir_indices,
    verdict,
    write_report,
)
from specad.report.panels import false_colour_views
from specad.runtime import cpu_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "report.yaml"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A report comparing RX fitted on the spot with the same RX saved and loaded again."""
    root = tmp_path_factory.mktemp("report")
    ds = make_dataset(root / "ds")
    saved = fit_on_dataset("rx", load_dataset(ds)).save(root / "rx" / "model.safetensors")
    cfg = ReportConfig(models={"rx": "rx", "rx2": str(saved)}, datasets=[ds], out=root / "out")
    return write_report(cfg), ds


def _hrefs(text: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', text)


def test_report_files_and_metrics(built: tuple[Path, Path]) -> None:
    index, _ = built
    out = index.parent
    assert index.name == "index.html" and index.is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"rx", "rx2"}
    rx, rx2 = (metrics["models"][m]["datasets"]["ds"] for m in ("rx", "rx2"))
    assert rx["image_auroc"] > 0.9
    # The saved model is the one fitted on the spot, so loading it must change nothing.
    assert rx2["image_auroc"] == rx["image_auroc"] and rx2["pixel_auroc"] == rx["pixel_auroc"]
    assert metrics["models"]["rx"]["source"] == "rx"
    saved = ReportConfig.model_validate(yaml.safe_load((out / "config.yaml").read_text()))
    assert str(saved.models["rx"]) == "rx" and saved.far == 0.01
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == [
        f"ds_{k}.png"
        for k in ["pr", "roc", "roc_image_per_class", "roc_pixel_per_class", "scores", "spectra"]
    ]


def test_index_is_self_contained(built: tuple[Path, Path]) -> None:
    text = built[0].read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]+)"', text)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in text and "<link" not in text and "url(" not in text
    assert not [h for h in _hrefs(text) if re.match(r"[a-z]+:", h)]  # no http:, file:, ...
    assert "How to read this report" in text
    assert f"inference on {html.escape(cpu_model())}" in text  # the CPU the runtimes ran on


def test_tables_list_every_class_and_model(built: tuple[Path, Path]) -> None:
    index, ds = built
    text = index.read_text()
    per_class = text[text.index('id="classes-ds"') : text.index('id="thresholds-ds"')]
    classes = load_dataset(ds).defect_names
    assert classes == ["square", "stripe"]
    for name in classes:
        assert f'<td class="l">{name}</td>' in per_class
    for model in ("rx", "rx2"):
        assert f"</span>{model}</th>" in per_class  # one column group per model
    thresholds = text[text.index('id="thresholds-ds"') : text.index('id="images-ds"')]
    assert thresholds.count("calibrated: FAR 0.01 on val") == 2
    assert thresholds.count("F1-optimal on test (optimistic)") == 2


def test_per_image_pages_and_their_panels_exist(built: tuple[Path, Path]) -> None:
    index, ds = built
    n_test = len(load_dataset(ds).split("test"))
    pages = [h for h in _hrefs(index.read_text()) if h.startswith("images/")]
    for model in ("rx", "rx2"):
        assert len([p for p in pages if p.startswith(f"images/{model}/ds/")]) == n_test
    for href in pages:
        page = index.parent / href
        assert page.is_file(), href
        panels = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page.read_text())
        # RGB, SWIR, map, overlay and three binary maps, each its own PNG beside the page.
        assert len(panels) == 7 and all((page.parent / p).is_file() for p in panels)
        links = [h for h in _hrefs(page.read_text()) if not h.startswith("../")]
        assert all((page.parent / h).is_file() for h in links)  # previous / next
    titles = re.findall(r"<figcaption>([^<]*)</figcaption>", (index.parent / pages[0]).read_text())
    assert titles[:4] == [
        "RGB false colour (630/532/465 nm)",
        "SWIR false colour (1450/1200/1050 nm)",
        "anomaly map",
        "map over RGB, truth outlined",
    ]
    with Image.open(index.parent / pages[0].replace(".html", "/rgb.png")) as im:
        assert im.size == (256, 256)  # the 64 x 64 cubes at panel size


def test_instructive_order_puts_worst_errors_first() -> None:
    scores = np.array([0.9, 0.2, 0.6, 0.8, 0.1, 0.7, 0.3])
    anomalous = np.array([1, 1, 1, 0, 0, 0, 1], dtype=bool)
    # Threshold 0.5: misses 1 (0.2), 6 (0.3); false alarms 3 (0.8), 5 (0.7).
    assert instructive_order(scores, anomalous, 0.5) == [1, 3, 6, 5, 0, 2, 4]
    assert instructive_order(scores, anomalous, 0.05) == [3, 5, 4, 0, 2, 6, 1]
    assert verdict(True, 0.2, 0.5) == "missed" and verdict(False, 0.5, 0.5) == "false alarm"
    assert verdict(True, 0.5, 0.5) == "detected" and verdict(False, 0.1, 0.5) == "normal"


def test_swir_bands_default_and_configured() -> None:
    data = np.zeros((4, 4, 5), np.float32)
    with_wl = Cube(data, wavelengths=[1500.0, 450.0, 550.0, 1200.0, 650.0])
    assert swir_indices(with_wl, None) == [0, 3, 4]  # longest wavelength as red
    assert swir_indices(Cube(data), None) == [4, 3, 2]
    assert swir_indices(Cube(data[:, :, :2]), None) == [1, 0, 0]
    assert swir_indices(with_wl, [1200, "450nm", 2]) == [3, 1, 2]


def test_views_follow_the_bands() -> None:
    """SWIR false colour only for cubes with SWIR bands: a plain RGB cube gets one view."""
    data = np.zeros((6, 8, 6), np.float32)

    def titles(cube: Cube, spec: list | None = None) -> list[str]:
        return [title for _, title, _ in false_colour_views(cube, spec)]

    assert titles(Cube(data[:, :, :3])) == ["RGB false colour (band0/band1/band2)"]
    visible = Cube(data[:, :, :3], wavelengths=[650.0, 550.0, 450.0])
    assert titles(visible) == ["RGB false colour (650/550/450 nm)"]
    assert titles(visible, [0, 1, 2])[1] == "SWIR false colour (650/550/450 nm)"  # as configured
    swir = Cube(data, wavelengths=[630.0, 532.0, 465.0, 1050.0, 1200.0, 1450.0])
    assert titles(swir)[1] == "SWIR false colour (1450/1200/1050 nm)"
    # Unknown bands beyond the RGB ones are shown, but not called SWIR.
    assert titles(Cube(data)) == [
        "RGB false colour (band0/band1/band2)",
        "false colour, last bands (band5/band4/band3)",
    ]


def test_values_are_escaped(tmp_path: Path) -> None:
    """Folder and class names reach the pages as text, never as markup."""
    root = tmp_path / "a&b <i>x</i>"
    ds = make_dataset(root, counts=(4, 3, 2), defects=1)
    (ds / "test" / "square").rename(ds / "test" / "<b>sq")
    (ds / "ground_truth" / "square").rename(ds / "ground_truth" / "<b>sq")
    (ds / "classes.json").write_text(json.dumps({"0": "background", "1": "<b>sq"}))
    index = write_report(
        ReportConfig(models={"rx": "rx"}, datasets=[ds], out=tmp_path / "out", max_images=1)
    )
    text = index.read_text()
    assert "a&amp;b &lt;i&gt;x&lt;/i&gt;" in text and "<i>x</i>" not in text
    assert "&lt;b&gt;sq" in text and "<b>sq" not in text
    page = index.parent / next(h for h in _hrefs(text) if h.startswith("images/"))
    assert "<i>x</i>" not in page.read_text()


def test_options_and_two_datasets(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", counts=(4, 3, 2), defects=1)
    cfg = ReportConfig(
        models={"rx": "rx"},
        datasets=[ds, ds],
        out=tmp_path / "out",
        max_images=2,
        thresholds=[5.0],
        swir_bands=[5, 4, 3],
    )
    text = write_report(cfg).read_text()
    pages = sorted({h for h in _hrefs(text) if h.startswith("images/")})
    assert len([p for p in pages if p.startswith("images/rx/ds/")]) == 2
    assert len([p for p in pages if p.startswith("images/rx/ds-2/")]) == 2
    assert 'id="ds-ds-2"' in text


def test_refuses_non_empty_output_without_force(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, ds = built
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cfg = ReportConfig(models={"rx": "rx"}, datasets=[ds], out=out)
    with pytest.raises(SpecadError, match="not empty"):
        write_report(cfg)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", counts=(4, 3, 2), defects=1)
    cfg = ReportConfig(models={"m": str(tmp_path / "missing")}, datasets=[ds], out=tmp_path / "o")
    with pytest.raises(SpecadError, match="model file not found"):
        write_report(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: {rx: rx}\ndatasets: [d]\nout: o\ncolour: red\n", "colour: Extra inputs"),
        ("models: {rx: rx}\ndatasets: [d]\n", "out: Field required"),
        ("models: {'a b': rx}\ndatasets: [d]\nout: o\n", "model name 'a b'"),
        ("models: {rx: rx}\ndatasets: [d]\nout: o\nfar: 2\n", "far: Input should be less"),
        ("models: {rx: rx}\ndatasets: [d]\nout: o\nswir_bands: [1, 2]\n", "swir_bands"),
        ("models: [rx\n", "invalid YAML"),
        ("- just a list\n", "must be a YAML mapping"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "report.yaml"
    path.write_text(text)
    with pytest.raises(SpecadError, match=re.escape(message)) as err:
        load_report_config(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_config_paths_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "conf" / "data").mkdir(parents=True)
    path = tmp_path / "conf" / "report.yaml"
    path.write_text("models: {rx: rx}\ndatasets: [data]\nout: o\n")
    cfg = load_report_config(path, out=tmp_path / "elsewhere", force=True, far=None)
    assert cfg.datasets == [tmp_path / "conf" / "data"]  # found beside the config
    assert cfg.out == tmp_path / "elsewhere" and cfg.force and cfg.far == 0.01
    with pytest.raises(SpecadError, match="report config not found"):
        load_report_config(tmp_path / "nope.yaml")


def test_example_config_is_valid() -> None:
    cfg = load_report_config(EXAMPLE)
    assert len(cfg.models) >= 2 and "rx" in {s.kind for s in cfg.models.values()}


# --------------------------------------------------------------------------- real browser

CHECK_IMAGES = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt);
  // Each panel title's text (not its box, which text may overflow) must stay within its picture
  // and clear of every other title.
  const titles = Array.from(document.querySelectorAll("figure.panel")).map((f) => {
    const text = document.createRange();
    text.selectNodeContents(f.querySelector("figcaption"));
    return {t: f.querySelector("figcaption").textContent, r: text.getBoundingClientRect(),
            img: f.querySelector("img").getBoundingClientRect()};
  });
  const clashes = [];
  titles.forEach((a, i) => {
    if (a.r.left < a.img.left - 0.5 || a.r.right > a.img.right + 0.5) clashes.push(a.t);
    titles.slice(i + 1).forEach((b) => {
      if (a.r.left < b.r.right && b.r.left < a.r.right && a.r.top < b.r.bottom
          && b.r.top < a.r.bottom) clashes.push(a.t + " / " + b.t);
    });
  });
  document.body.setAttribute("data-check",
    JSON.stringify({n: images.length, broken, titles: titles.length, clashes}));
});
</script>"""


def _chromium(profile: Path, *args: str) -> str:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def _images_in_browser(page: Path, profile: Path) -> dict:
    """Load a copy of ``page`` (beside it, so relative links resolve) with a probe script."""
    probe = page.with_name(f"_probe_{page.name}")
    probe.write_text(page.read_text().replace("</body>", CHECK_IMAGES + "</body>"))
    try:
        dom = _chromium(profile, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, "the probe script did not run"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="Debian chromium is not installed at /usr/bin/chromium "
    "(scripts/install-chromium.sh installs it when run as root)",
)
def test_report_renders_in_a_real_browser(built: tuple[Path, Path], tmp_path: Path) -> None:
    index, _ = built
    result = _images_in_browser(index, tmp_path / "profile")
    assert result == {"n": 6, "broken": [], "titles": 0, "clashes": []}
    first_page = next(h for h in _hrefs(index.read_text()) if h.startswith("images/"))
    assert _images_in_browser(index.parent / first_page, tmp_path / "profile") == {
        "n": 7,
        "broken": [],
        "titles": 7,
        "clashes": [],
    }
    shot = tmp_path / "report.png"
    _chromium(
        tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2400", index.as_uri()
    )
    with Image.open(shot) as im:
        grey = np.asarray(im.convert("L"), dtype=float)
    assert grey.shape == (2400, 1280) and grey.std() > 10  # text and figures, not a blank page
