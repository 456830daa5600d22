"""cuvis.ai nodes that run trained specad models inside a ``CuvisPipeline``.

The detector nodes hand each batch to :class:`specad.inference.Detector` instead of re-implementing
its preprocessing, resizing and thresholding, so a node's map, score and mask are exactly those
of ``specad predict`` on the same cube.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from cuvis_ai_core.deciders.base_decider import BinaryDecider
from cuvis_ai_core.node.node import Node
from cuvis_ai_schemas.enums import NodeCategory, NodeTag
from cuvis_ai_schemas.pipeline import PortSpec

from specad.data import select_channels
from specad.errors import SpecadError
from specad.inference import Detector
from specad.io import Cube, to_reflectance
from specad.models.base import FORMAT, Trained
from specad.models.modelfile import ModelMeta, load_model
from specad.models.registry import check_format

Channels = list[int | float | str]
"""Band indices, wavelengths in nm (nearest band within 10 nm) or band names."""


def cube_port(description: str, dtype: Any = torch.float32, channels: Any = -1) -> PortSpec:
    """A port of cubes [B, H, W, C], cuvis.ai's layout."""
    return PortSpec(dtype=dtype, shape=(-1, -1, -1, channels), description=description)


def map_port(description: str, dtype: Any = torch.float32) -> PortSpec:
    """A port of per-pixel maps [B, H, W, 1]."""
    return PortSpec(dtype=dtype, shape=(-1, -1, -1, 1), description=description)


SCORE_PORT = PortSpec(
    dtype=torch.float32, shape=(-1,), description="Image score [B]: the maximum of the map."
)


class DetectorNode(Node):
    """Base of the nodes that run a trained specad model of kind ``KIND``: cube in; anomaly map,
    image score and mask out.

    hparams: ``model_path`` (the ``model.safetensors`` file or its run folder), ``channels``
    (which bands of the incoming cube, in order, form the cube the model was trained on; None
    when the cube already has exactly the model's channels) and ``tiled`` (score model-sized
    tiles at native resolution, as ``specad predict --tiled``).

    The model file gives the architecture; the pipeline's weights file carries the state
    (network weights, calibration, normalisation statistics) with its format version, so a
    saved pipeline reproduces itself even if the model file is later retrained in place.
    """

    KIND: ClassVar[str]
    _category = NodeCategory.MODEL

    INPUT_SPECS = {
        "cube": cube_port(
            "Cube [B, H, W, C] on the scale the model was trained on (e.g. reflectance); C is "
            "the model's channel count unless `channels` selects bands.",
            channels="in_channels",
        ),
        "wavelengths": PortSpec(
            dtype=np.int32,
            shape=(-1,),
            description="Band centres [C] in nm; read only when `channels` selects by wavelength.",
            optional=True,
        ),
    }
    OUTPUT_SPECS = {
        "anomaly_map": map_port(
            "Anomaly map [B, H, W, 1] at the cube's size, on the model's scale."
        ),
        "anomaly_score": SCORE_PORT,
        "mask": map_port(
            "Anomalous pixels [B, H, W, 1]: map >= the model's calibrated threshold.", torch.bool
        ),
    }

    def __init__(
        self,
        model_path: str,
        channels: Channels | None = None,
        tiled: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_path=str(model_path), channels=channels, tiled=tiled, **kwargs)
        model, meta = load_model(model_path)
        detector = Detector(model, meta, "cpu")  # the default runtime: torch for networks
        if detector.kind != self.KIND:
            raise SpecadError(
                f"{type(self).__name__} runs '{self.KIND}' models, this one is '{detector.kind}'",
                Path(model_path),
            )
        self.detector = detector
        self.model_path = Path(model_path)
        self.channels = channels
        self.tiled = tiled
        self.model = model.trained_network if isinstance(model, Trained) else None
        # a trained network is a submodule: its weights land in state_dict() and move with the
        # pipeline; a fitted detector's tensors (knn's bank and frozen extractor) travel whole
        # in the extra state

    @property
    def in_channels(self) -> int:
        """Channels the ``cube`` port needs: the model's, or any (-1) when ``channels`` selects."""
        return -1 if self.channels is not None else self.detector.meta.preprocess.source_channels

    def _apply(self, fn: Any, recurse: bool = True) -> DetectorNode:
        """Keep the detector's device in step with its weights when the pipeline moves them."""
        super()._apply(fn, recurse)
        if self.model is not None:
            self.detector.device = next(self.model.buffers()).device
        return self

    def get_extra_state(self) -> dict[str, Any]:
        """Calibration, preprocessing and fitted tensors travel in the pipeline's weights file
        (a network's weights are the node's own parameters already)."""
        tensors, values = self.detector.model.state()
        return {
            "format": FORMAT,
            "meta": self.detector.meta.to_json(),
            "values": json.dumps(values),
            "tensors": {} if self.model is not None else tensors,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """The state `get_extra_state` saved, refused in one line if another specad's format."""
        check_format(state.get("format"), self.model_path)
        self.detector.meta = ModelMeta.from_json(state["meta"])
        self.detector.model.restore(state["tensors"], json.loads(state["values"]))

    def forward(
        self, cube: torch.Tensor, wavelengths: Any = None, **_: Any
    ) -> dict[str, torch.Tensor]:
        preds = self.detector.predict(
            self._cubes(cube, wavelengths), tiled=self.tiled, batch_size=max(1, len(cube))
        )
        maps = np.stack([p.anomaly_map for p in preds])[..., None]
        masks = np.stack([p.mask for p in preds])[..., None]
        scores = torch.tensor([p.score for p in preds], dtype=torch.float32)
        return {
            "anomaly_map": torch.from_numpy(maps).to(cube.device),
            "anomaly_score": scores.to(cube.device),
            "mask": torch.from_numpy(masks).to(cube.device),
        }

    def _cubes(self, cube: torch.Tensor, wavelengths: Any) -> list[Cube]:
        """The batch as specad cubes, reduced to the model's bands when ``channels`` is set."""
        if wavelengths is not None:
            wavelengths = torch.as_tensor(wavelengths).cpu().double().reshape(-1).tolist()
        cubes = [Cube(c, wavelengths=wavelengths) for c in cube.detach().float().cpu().numpy()]
        if self.channels is None or not cubes:
            return cubes
        idx = select_channels(cubes[0], self.channels)
        return [c.select(idx) for c in cubes]


class EfficientADNode(DetectorNode):
    """A specad EfficientAD model on the full N-channel cube (not a false-RGB projection)."""

    KIND = "efficientad"
    _tags = frozenset(
        {NodeTag.ANOMALY, NodeTag.MULTISPECTRAL, NodeTag.HYPERSPECTRAL, NodeTag.TORCH}
    )


class RXNode(DetectorNode):
    """specad's RX baseline (``specad fit rx``), fitted on normal cubes, as a drop-in alternative.
    It runs on the CPU whatever device the pipeline is on."""

    KIND = "rx"
    _tags = frozenset(
        {NodeTag.ANOMALY, NodeTag.MULTISPECTRAL, NodeTag.HYPERSPECTRAL, NodeTag.NUMPY}
    )


class KNNNode(DetectorNode):
    """specad's training-free nearest-neighbour detector (``specad fit knn``) on the full
    N-channel cube; it runs on the CPU whatever device the pipeline is on."""

    KIND = "knn"
    _tags = frozenset(
        {NodeTag.ANOMALY, NodeTag.MULTISPECTRAL, NodeTag.HYPERSPECTRAL, NodeTag.TORCH}
    )


class SceneDetectorNode(Node):
    """A single-scene detector (``rx``, ``lrx``, ``crd``, ``2s-glrt``; see
    :mod:`specad.models.scene`): every pixel of each cube against that cube's own background,
    as ``specad scene`` does. Nothing is trained, so there is no model file and no threshold.

    hparams: ``detector`` (its name), ``params`` (its parameters, e.g. ``{"outer": 15}``),
    ``drop_bands`` (index ranges to drop, e.g. ``[[0, 4]]``), ``reduce`` (``none``, ``pca`` or
    ``mnf``) and ``components`` (kept by ``reduce``).
    """

    _category = NodeCategory.MODEL
    _tags = frozenset({NodeTag.ANOMALY, NodeTag.HYPERSPECTRAL, NodeTag.NUMPY})

    INPUT_SPECS = {
        "cube": cube_port("Scenes [B, H, W, C]; each is scored against its own background.")
    }
    OUTPUT_SPECS = {
        "anomaly_map": map_port("Detector statistic [B, H, W, 1]; larger is more anomalous."),
        "anomaly_score": SCORE_PORT,
    }

    def __init__(
        self,
        detector: str = "global-rx",
        params: dict[str, Any] | None = None,
        drop_bands: list[list[float]] | None = None,
        reduce: str = "none",
        components: int = 20,
        **kwargs: Any,
    ) -> None:
        from specad.models.bands import BandPrep
        from specad.models.scene import make_detector

        super().__init__(
            detector=detector,
            params=params,
            drop_bands=drop_bands,
            reduce=reduce,
            components=components,
            **kwargs,
        )
        self.detector = make_detector(detector, **(params or {}))  # checks name and parameters
        ranges = [(float(lo), float(hi)) for lo, hi in drop_bands or []]
        self.prep = BandPrep(drop=ranges, reduce=reduce, components=components)

    def forward(self, cube: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        maps = []
        for scene in cube.detach().float().cpu().numpy():
            data, _record = self.prep.apply(Cube(scene))
            maps.append(self.detector.score_cube(data).astype(np.float32))
        stacked = torch.from_numpy(np.stack(maps)[..., None])
        return {
            "anomaly_map": stacked.to(cube.device),
            "anomaly_score": stacked.amax(dim=(1, 2, 3)).to(cube.device),
        }


class ReflectanceNormalizer(Node):
    """Camera values to reflectance, as :func:`specad.io.to_reflectance` does for files.

    A model scores cubes only on the scale it was trained on, while cuvis.ai sources hand over
    raw counts or reflectance x 10000; this node is therefore a pipeline's first step. With
    ``white`` (and optionally ``dark``) per-band reference levels it computes
    ``(raw - dark) / (white - dark)``, otherwise ``raw * scale`` (``scale`` None means 1).
    """

    _category = NodeCategory.TRANSFORM
    _tags = frozenset({NodeTag.NORMALIZATION, NodeTag.PREPROCESSING, NodeTag.HYPERSPECTRAL})

    INPUT_SPECS = {
        "cube": cube_port(
            "Camera cube [B, H, W, C] of any numeric type (e.g. uint16 counts).", torch.Tensor
        )
    }
    OUTPUT_SPECS = {"cube": cube_port("Reflectance cube [B, H, W, C].")}

    def __init__(
        self,
        scale: float | None = None,
        white: list[float] | None = None,
        dark: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        if white is not None and scale is not None:
            raise SpecadError("give either white (with optional dark) references or a scale")
        super().__init__(scale=scale, white=white, dark=dark, **kwargs)
        self.scale, self.white, self.dark = scale, white, dark

    def forward(self, cube: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        if self.white is not None:
            settings: dict[str, Any] = {"white": self.white, "dark": self.dark}
        else:
            settings = {"scale": 1.0 if self.scale is None else self.scale}
        out = [to_reflectance(Cube(c), **settings).data for c in cube.detach().cpu().numpy()]
        return {"cube": torch.from_numpy(np.stack(out)).to(cube.device)}


class ThresholdDecider(BinaryDecider):
    """Pixels whose score is at or above ``threshold`` are anomalous: specad's one comparison.

    Set to the model's calibrated threshold its decisions equal the detector's ``mask``; another
    value moves the operating point without touching the model.
    """

    _category = NodeCategory.TRANSFORM
    _tags = frozenset({NodeTag.ANOMALY, NodeTag.POSTPROCESSING, NodeTag.MASK})

    def __init__(self, threshold: float, **kwargs: Any) -> None:
        super().__init__(threshold=float(threshold), **kwargs)

    def forward(self, logits: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"decisions": logits >= self.threshold}  # specad.metrics.is_anomalous
