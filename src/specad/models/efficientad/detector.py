"""EfficientAD on specad's detector contract: the network of `specad.models.efficientad.network`,
trained by the loop of `specad.models.efficientad.train_loop`, scored, thresholded and saved like
every other detector."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import Tensor

from specad.bounds import ChannelCount, ImageSize, Index, validate
from specad.errors import SpecadError
from specad.models.base import (
    BaseDetector,
    Exportable,
    FittedInput,
    Images,
    Trained,
    detector,
    per_channel,
)
from specad.models.efficientad.build import build_efficientad
from specad.models.efficientad.config import ModelConfig, Training
from specad.models.efficientad.network import EfficientAD
from specad.models.efficientad.train_loop import fit_network


@detector
class EfficientADDetector(Trained, Exportable, BaseDetector):
    """EfficientAD (Batzner et al. 2023) widened to N input channels.

    Parameters: ``model`` (a config's model section) builds the network, ``training`` (its
    train and penalty sections and augmentation, `specad.models.efficientad.config.Training`) drives
    `fit_network`; where the data are and how cubes become inputs is the caller's business.
    Fitted state: the network ``network_`` (teacher statistics and map quantiles included), the
    input it was built for (``in_channels_``, ``image_size_``, ``wavelengths_``), the steps
    trained ``steps_`` and the dataset it was trained on, when known (``training_data_``, the
    default calibration data of an int8 export). Shapes: images [B, N, S, S] -> maps
    [B, 1, S, S].
    """

    kind: ClassVar[str] = "efficientad"
    fitted: ClassVar[tuple[str, ...]] = ("network_",)
    runtimes: ClassVar[tuple[str, ...]] = ("torch", "bf16", "onnx", "int8")
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    training: Training = dataclasses.field(default_factory=Training)

    def fit_maps(
        self,
        train: Images,
        val: Images,
        *,
        wavelengths: Sequence[float] | None = None,
        units: Any = None,
    ) -> Self:
        """Train on normal images [B, N, S, S] in this process, without a run folder, then fit
        the map quantiles on ``val``. `specad train` runs the same loop with checkpoints and
        several processes and hands the network over (`from_network`)."""
        train = train if isinstance(train, Tensor) else torch.stack(list(train))
        val = val if isinstance(val, Tensor) else torch.stack(list(val))
        self.in_channels_, self.image_size_ = train.shape[1], train.shape[-1]
        self.wavelengths_ = None if wavelengths is None else [float(w) for w in wavelengths]
        network = self._build()
        self.steps_ = fit_network(network, self.training, train, val, None, self.wavelengths_)
        self.network_, self.training_data_ = network, None
        return self

    @classmethod
    def from_network(
        cls,
        network: EfficientAD,
        model: ModelConfig,
        training: Training,
        in_channels: int,
        wavelengths: Sequence[float] | None = None,
        steps: int | None = None,
        data: Path | None = None,
    ) -> Self:
        """A detector around a network trained elsewhere (`specad train`'s loop, a checkpoint,
        a benchmark's model) on the dataset ``data``; it still needs its threshold
        (`calibrate`)."""
        det = cls(model=model, training=training)
        det.in_channels_, det.image_size_ = in_channels, network.image_size[0]
        det.wavelengths_ = None if wavelengths is None else [float(w) for w in wavelengths]
        det.network_, det.steps_, det.training_data_ = network.eval(), steps, data
        return det

    def _build(self) -> EfficientAD:
        return build_efficientad(
            self.model,
            self.in_channels_,
            self.image_size_,
            self.wavelengths_,
            self.training.train.seed,
        )

    @property
    def fitted_input(self) -> FittedInput:
        """The channels and the side the network was built for (its input standardisation is
        the run's, in ``model.json``)."""
        self.check_fitted()
        return FittedInput(self.in_channels_, self.image_size_)

    @property
    def trained_network(self) -> EfficientAD:
        self.check_fitted()
        return self.network_

    @property
    def training_data(self) -> Path | None:
        self.check_fitted()
        return self.training_data_

    def export_graph(self) -> EfficientAD:
        return self.trained_network

    def _score_maps(self, x: Tensor) -> Tensor:
        return self.network_.anomaly_map(x)

    def to(self, device: str | torch.device) -> Self:
        self.check_fitted()
        self.network_ = self.network_.to(device, memory_format=torch.channels_last).eval()
        return self

    def _tensors(self) -> dict[str, Tensor]:
        return dict(self.network_.state_dict())

    def _scalars(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels_,
            "image_size": self.image_size_,
            "wavelengths": self.wavelengths_,
            "steps": self.steps_,
            "training_data": None if self.training_data_ is None else str(self.training_data_),
        }

    def _restore(self, tensors: dict[str, Tensor], scalars: dict[str, Any]) -> None:
        channels = validate(ChannelCount, scalars["in_channels"], None, "in_channels")
        self.in_channels_ = channels
        self.image_size_ = validate(ImageSize, scalars["image_size"], None, "image_size")
        wavelengths = scalars["wavelengths"]
        self.wavelengths_ = validate(per_channel(channels) | None, wavelengths, None, "wavelengths")
        self.steps_ = validate(Index | None, scalars["steps"], None, "steps")
        data = validate(str | None, scalars["training_data"], None, "training_data")
        self.training_data_ = None if data is None else Path(data)
        if not tensors and hasattr(self, "network_"):
            return  # values only: the weights arrive on their own (a cuvis.ai pipeline's)
        network = self._build()
        try:
            network.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            reason = str(err).splitlines()[0]
            raise SpecadError(f"weights do not fit the model ({reason})") from err
        self.network_ = network.eval()
