"""The cuvis.ai pipeline for a specad model: reflectance normalisation, detector, decider."""

from __future__ import annotations

from pathlib import Path

from cuvis_ai_core.pipeline.pipeline import CuvisPipeline

from specad.cuvis import PLUGIN_NAME
from specad.cuvis.nodes import (
    Channels,
    DetectorNode,
    EfficientADNode,
    ReflectanceNormalizer,
    ThresholdDecider,
)


def build_pipeline(
    model_path: str | Path,
    *,
    scale: float | None = None,
    white: list[float] | None = None,
    dark: list[float] | None = None,
    channels: Channels | None = None,
    tiled: bool = False,
    threshold: float | None = None,
    detector: type[DetectorNode] = EfficientADNode,
    name: str = "specad",
) -> CuvisPipeline:
    """``normalise`` -> ``detector`` -> ``decider``, fed by the batch keys ``cube`` (and
    ``wavelengths`` when ``channels`` selects by wavelength).

    ``scale``/``white``/``dark`` configure the :class:`ReflectanceNormalizer`; ``threshold``
    defaults to the model's calibrated one. Pass ``detector=RXNode`` for the RX baseline.
    Outputs are keyed ``("detector", "anomaly_map" | "anomaly_score" | "mask")`` and
    ``("decider", "decisions")``.
    """
    normalise = ReflectanceNormalizer(scale=scale, white=white, dark=dark, name="normalise")
    node = detector(str(model_path), channels=channels, tiled=tiled, name="detector")
    decider = ThresholdDecider(
        node.detector.threshold if threshold is None else threshold, name="decider"
    )
    pipeline = CuvisPipeline(name)
    pipeline.connect(
        (normalise.outputs.cube, node.inputs.cube),
        (node.outputs.anomaly_map, decider.inputs.logits),
    )
    # Saved pipelines must name their plugins (cuvis.ai's loaders refuse a pipeline without
    # them); the builder from YAML sets this attribute the same way.
    pipeline._plugins = [PLUGIN_NAME]
    return pipeline
