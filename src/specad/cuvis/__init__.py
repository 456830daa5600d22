"""Run specad models inside cuvis.ai pipelines (``pip install 'specad[cuvis]'``).

``import specad.cuvis`` stays cheap and works without cuvis-ai-core: the nodes and the pipeline
builder are imported on first use, so the core package never depends on the extra.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

PLUGIN_NAME = "specad"
PLUGIN_DIR = Path(__file__).with_name("plugins")
"""cuvis.ai plugins directory holding specad's manifest (``--plugins-dir`` of its loaders)."""
PLUGIN_MANIFEST = PLUGIN_DIR / f"{PLUGIN_NAME}.yaml"

_LAZY = {
    "DetectorNode": "nodes",
    "EfficientADNode": "nodes",
    "RXNode": "nodes",
    "KNNNode": "nodes",
    "SceneDetectorNode": "nodes",
    "ReflectanceNormalizer": "nodes",
    "ThresholdDecider": "nodes",
    "build_pipeline": "pipeline",
}

__all__ = ["PLUGIN_DIR", "PLUGIN_MANIFEST", "PLUGIN_NAME", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("cuvis_ai"):
            raise
        raise ImportError(
            f"specad.cuvis.{name} needs cuvis-ai-core: pip install 'specad[cuvis]'"
        ) from err
    return getattr(module, name)
