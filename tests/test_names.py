"""One name, one meaning: axis order (`--axes`) apart from dataset layout (`dataset import
--layout`), the scene's global RX apart from the dataset RX, and CLI help lists read from the
registries, so a detector added there is named with no other edit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import one_line_failure, run_specad
from typer.testing import CliRunner

from specad.cli import app
from specad.data import DATASET_LAYOUTS
from specad.models import registry
from specad.models.rx import RX
from specad.models.scene import SCENE_DETECTORS

SRC = Path(__file__).resolve().parents[1] / "src" / "specad"
PLACEHOLDER = re.compile(r"\{(fit_on_dataset|scene_detectors|axis_orders|layouts)\}")
"""A help template left unfilled (typer's usage line shows arguments in braces too)."""


def help_text(*command: str) -> str:
    """``specad COMMAND --help`` in-process (so a monkeypatched registry is seen), unwrapped."""
    done = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "400"})
    assert done.exit_code == 0, done.output
    return " ".join(done.output.split())


class ToyRX(RX):
    """A detector the registry did not know: only its name differs from RX."""

    kind: ClassVar[str] = "toy-rx"


def test_a_detector_added_to_the_registry_is_named_in_the_help(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "toy-rx" not in help_text("fit")
    monkeypatch.setitem(registry.DETECTORS, ToyRX.kind, ToyRX)  # the one registry line
    for command in (("fit",), ("evaluate",), ("report",)):
        assert "toy-rx" in help_text(*command), command
    assert registry.ModelSpec.parse("toy-rx").kind == "toy-rx"


@pytest.mark.parametrize("command", [("fit",), ("evaluate",), ("report",)])
def test_every_fittable_detector_is_named_in_the_help(command: tuple[str, ...]) -> None:
    text = help_text(*command)
    for name in registry.fit_on_dataset_names():
        assert re.search(rf"(^|[\s,(]){re.escape(name)}\b", text), (name, text)
    assert not PLACEHOLDER.search(text)


def test_scene_help_names_the_scene_detectors_by_their_registry_names() -> None:
    text = help_text("scene")
    assert "global-rx, lrx" in text and not PLACEHOLDER.search(text)
    assert set(SCENE_DETECTORS) <= set(registry.DETECTORS)
    assert all(registry.DETECTORS[name] is cls for name, cls in SCENE_DETECTORS.items())


@pytest.mark.parametrize("command", [("predict",), ("evaluate",), ("scene",), ("dataset", "check")])
def test_axis_order_is_axes_and_layout_is_only_a_datasets(command: tuple[str, ...]) -> None:
    """``--axes`` is a cube's axis order wherever cubes are read; ``--layout`` is only ever a
    dataset's folder layout (`specad.data.DATASET_LAYOUTS`)."""
    text = help_text(*command)
    assert "--axes" in text and "hwc, chw" in text
    assert ("--layout" in text) == (command == ("dataset", "check"))
    imported = help_text("dataset", "import")
    for helped in (imported, help_text("dataset", "check")):
        assert "--layout" in helped and not PLACEHOLDER.search(helped)
        assert all(name in helped for name in ("auto", *DATASET_LAYOUTS))
    assert "--axes" not in imported


def test_the_old_spellings_are_refused_in_one_line(tmp_path: Path) -> None:
    cube = tmp_path / "c.npy"
    cube.write_bytes(b"")
    one_line_failure(run_specad("scene", str(cube), "--layout", "hwc", timeout=60), "--layout")
    one_line_failure(run_specad("rx", "fit", str(tmp_path), "-o", "x", timeout=60), "rx")
    one_line_failure(
        run_specad("scene", str(cube), "--detector", "rx", timeout=60), "unknown detector 'rx'"
    )


def test_each_layouts_constant_has_one_meaning() -> None:
    """Axis orders, dataset layouts and the logical scenes' disk colours once shared one name."""
    names = re.findall(r"^([A-Z_]*LAYOUTS?[A-Z_]*) =", _sources(), re.MULTILINE)
    assert "LAYOUTS" not in names
    assert len(names) == len(set(names)), names


def _sources() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(SRC.rglob("*.py")))
