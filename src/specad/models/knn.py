"""A training-free nearest-neighbour detector (PatchCore-style) on frozen EfficientNet-Lite0.

Pretrained features searched for their nearest normal neighbour found real defects better than
CPU-length EfficientAD training (issue 12), and fitting is a forward pass plus a coreset: seconds.

Memory, stated for the defaults (blocks 4 + 10 + 12: D = 344 features per patch, stride 8):

- fitted model: the bank, ``coreset_size`` x D float32 (2,048 x 344 = 2.8 MB), and the frozen
  extractor (blocks 0-12 of EfficientNet-Lite0), both saved in the model file, plus
  two N x N spectral models;
- fitting: at most ``max_patches`` x D float32 patch features (50,000 x 344 = 69 MB) and their
  random projection (``max_patches`` x ``projection`` = 13 MB), the spectral models' pixel
  sample (`pixel_spectra.SAMPLE_VALUES` values each, float32, and their float64 copy), and one
  batch of images: a sequence of images is read `_BATCH` at a time, so a lazy one
  (`specad.fit.fit_on_dataset`'s) keeps no more of the dataset in memory than that;
- scoring: patch-to-bank distances in chunks of at most ``SEARCH_ELEMENTS`` floats (64 MB), and
  float32 transforms of each batch for the spectral maps, scored in float64 blocks of
  `specad.models.bands.CHUNK` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Self

import torch
from torch import Tensor

from specad.bounds import ChannelCount, Index, Seed, validate
from specad.errors import SpecadError
from specad.models.backbones import EfficientNetLite0Teacher
from specad.models.base import (
    BaseDetector,
    Calibration,
    Exportable,
    FittedInput,
    Images,
    NonNegative,
    PositiveInt,
    Units,
    Updatable,
    check_shape,
    detector,
    nest,
    per_channel,
    unnest,
)
from specad.models.knn_graph import PatchMap
from specad.models.maps import gaussian_blur, normal_quantiles, normalise
from specad.models.pixel_spectra import PixelSpectra
from specad.spectral import Mapping

_BATCH = 4
"""Images per extractor forward: the fastest per image on a 2-core CPU; larger batches spill
the caches (benchmarks/speed/knn_speed_results.md)."""


@detector
class KNN(Updatable, Exportable, BaseDetector):
    """Nearest-neighbour anomaly maps against a coreset of normal patch features, plus
    per-pixel spectral maps.

    Patch map: the outputs of EfficientNet-Lite0 ``blocks``, upsampled to the first one's grid,
    concatenated and 3x3 average-pooled (`EfficientNetLite0Teacher`, stem adapted to N channels).
    The defaults were measured on MTD (benchmarks/accuracy/real_results.md): adding block 12 to
    4 + 10 raised both pixel and image AUROC.
    ``fit`` keeps up to ``max_patches`` random patches of the normal images and reduces them to
    ``coreset_size`` by greedy k-centre selection, distances measured after a Gaussian random
    projection to ``projection`` dimensions as PatchCore does. A patch's score is the Euclidean
    distance to its nearest bank feature; the map is upsampled to the input size and blurred
    with a Gaussian of ``sigma`` pixels (0: none).

    Spectral maps (`PixelSpectra`): the level and the shape of each pixel's spectrum against
    its image's median, Mahalanobis-scored and blurred with ``spectral_sigma``. ImageNet
    features mix the bands the stem adapts, so a material that differs only in SWIR (water,
    foil) can look normal to them; on tray6 and tray6-hard these maps lifted image AUROC
    (benchmarks/accuracy/tray6_results.md).

    The map is ``normalise(patch) + w * sum(normalise(spectral maps))``, each normalised
    by its own 0.9 / 0.995 quantiles on the normal ``val`` images
    (`specad.models.maps.normalise`; they are part of ``calibration_``), so ``w`` weighs them
    in units of normal variation (0: the patch map alone).

    Where the spectral maps are used (``spectral=None``, the default; the weight used is the
    fitted ``spectral_weight_``): only where the stem must fold more than one band into one of
    its three pretrained filters, i.e. more than three channels (`spectral_weight`). With one
    to three channels every band reaches the features through its own ImageNet filters, so
    nothing is hidden from the patch map, and the spectral maps only add the normal colour
    variation of the product: on real photographs (MVTec transistor, MTD) they cost image AUROC
    (benchmarks/accuracy/real_results.md). The rule reads the
    channel count alone, never a label. A number sets the weight by hand (0: off).
    Shapes: images [B, N, S, S], standardised per channel (specad's `Preprocess`) -> maps
    [B, 1, S, S].
    """

    kind: ClassVar[str] = "knn"
    runtimes: ClassVar[tuple[str, ...]] = ("torch", "bf16", "onnx", "int8")
    int8_scope: ClassVar[str] = "/extractor/"
    """int8 for the backbone only: the search's expansion |q|^2 - 2 q.b + |b|^2 cancels large
    terms, and the blur (a convolution too) would round the map itself to 8 bits (every int8
    image score the same on MVTec transistor when it was quantised)."""
    fitted: ClassVar[tuple[str, ...]] = (
        "bank_",
        "extractor_",
        "calibration_",
        "spectra_",
        "spectral_weight_",
        "image_size_",
        "units_",
    )
    input_size: ClassVar[int] = 256
    blocks: tuple[int, ...] = (4, 10, 12)
    coreset_size: PositiveInt = 2048
    projection: PositiveInt = 64
    max_patches: PositiveInt = 50_000
    sigma: NonNegative = 8.0
    spectral: NonNegative | None = None
    spectral_sigma: NonNegative = 1.0
    mapping: Mapping = "repeat"
    seed: Seed = 0

    # ------------------------------------------------------------------ fitting

    @torch.inference_mode()
    def fit_maps(
        self,
        train: Images,
        val: Images,
        *,
        wavelengths: Sequence[float] | None = None,
        units: Units | None = None,
    ) -> Self:
        """Build the bank (and the spectral maps) from normal images [B, N, S, S], then the
        map scales from normal ``val`` images; ``wavelengths`` for the stem's mapping,
        ``units`` for the spectral shape (None: the images are in the cube's units)."""
        first = train[0] if len(train) else torch.empty(0)
        if first.ndim != 3:
            shape = tuple(train.shape) if isinstance(train, Tensor) else f"{len(train)} x []"
            raise SpecadError(f"knn fit needs normal images [B, N, S, S], got {shape}")
        self.spectral_weight_ = spectral_weight(self.spectral, first.shape[0])
        if self.spectral_weight_ > 0 and len(val) == 0:
            raise SpecadError(
                "knn needs normal val images to weigh its spectral maps (or spectral=0)"
            )
        gen = torch.Generator().manual_seed(self.seed)
        self.extractor_ = EfficientNetLite0Teacher(
            first.shape[0], self.blocks, self.mapping, wavelengths
        ).to(first.device, memory_format=torch.channels_last)
        self.wavelengths_ = None if wavelengths is None else [float(w) for w in wavelengths]
        weighted = self.spectral_weight_ > 0
        sides, magnitude = set(), torch.zeros(first.shape[0])

        def seen(batch: Tensor) -> None:
            sides.update(batch.shape[-2:])
            if weighted:  # the spectral maps' log floor, in the same pass
                magnitude.add_(PixelSpectra.magnitude(batch, units))

        patches = self._sampled_patches(train, gen, seen)
        self.bank_ = patches[greedy_coreset(patches, self.coreset_size, self.projection, gen)]
        self.spectra_ = PixelSpectra.fit(train, units, self.seed, magnitude) if weighted else None
        quantiles = {}  # none without val: the raw patch map
        if len(val):
            raw = []
            for x in val:  # sizes may differ
                sides.update(x.shape[-2:])
                raw.append(self._raw_maps(x[None].to(first.device)))
            quantiles["patch"] = normal_quantiles(patch for patch, _ in raw)
            for i, name in enumerate(self._spectral_names()):
                quantiles[name] = normal_quantiles(spectra[i] for _, spectra in raw)
        self.calibration_ = Calibration.checked(self.kind, {"quantiles": quantiles})
        self.image_size_ = sides.pop() if len(sides) == 1 else 0
        c = first.shape[0]
        scale, offset = ([1.0] * c, [0.0] * c) if units is None else units
        self.units_ = ([float(k) for k in scale], [float(o) for o in offset])
        return self

    @torch.inference_mode()
    def update_maps(self, images: Images) -> Self:
        """Add normal images [B, N, S, S] (or [N, S, S] each) to what the maps were fitted on:
        their patches join the bank and the coreset is selected again over the old bank and
        them, within ``coreset_size``; the spectral maps' statistics are pooled
        (`PixelSpectra.update`). The map quantiles stay the ones measured on val: the threshold,
        not the maps' scale, is what the caller calibrates again."""
        self.check_fitted()
        channels, size = self.extractor_.stem.in_channels, self.image_size_

        def check(batch: Tensor) -> None:
            if batch.shape[1] != channels or (size and batch.shape[-2:] != (size, size)):
                want = f"[B, {channels}, {size or 'S'}, {size or 'S'}]"
                raise SpecadError(f"knn was fitted on {want} images, got {tuple(batch.shape)}")

        gen = torch.Generator().manual_seed(self.seed)
        patches = torch.cat([self.bank_, self._sampled_patches(images, gen, check)])
        self.bank_ = patches[greedy_coreset(patches, self.coreset_size, self.projection, gen)]
        if self.spectra_ is not None:
            self.spectra_.update(images, self.seed)
        return self

    def _sampled_patches(
        self, images: Images, gen: torch.Generator, seen: Callable[[Tensor], None]
    ) -> Tensor:
        """Up to ``max_patches`` patch features [n, D], drawn at random and as many from each
        image; ``seen`` is shown every batch first (what else a pass over them gathers)."""
        per_image = math.ceil(self.max_patches / len(images))
        kept = []
        for batch in batches(images):
            seen(batch)
            for f in self._patches(batch):  # [h*w, D] per image
                pick = torch.randperm(len(f), generator=gen)[:per_image].to(f.device)
                kept.append(f[pick])
        return torch.cat(kept)[: self.max_patches]

    def _patches(self, x: Tensor) -> Tensor:
        """Patch features [B, h*w, D] of input [B, N, S, S], on the extractor's device."""
        device = self.extractor_.stem.weight.device
        f = self.extractor_(x.to(device, memory_format=torch.channels_last))
        return f.flatten(2).transpose(1, 2)

    # ------------------------------------------------------------------ scoring

    @property
    def fitted_input(self) -> FittedInput:
        """The channels it was fitted on, the side of the S x S images its map quantiles were
        measured on (None where sizes varied: cubes at their own sizes) and their
        standardisation; fails clearly if it was never fitted."""
        self.check_fitted()
        return FittedInput(self.extractor_.stem.in_channels, self.image_size_ or None, self.units_)

    def export_graph(self) -> PatchMap:
        """The normalised patch map as one module (`PatchMap`): what the ONNX exports compute
        (`specad.export`); the spectral maps are added after it (`export_maps`)."""
        self.check_fitted()
        scale = self.calibration_.quantiles.get("patch")
        return PatchMap(self.extractor_, self.bank_, self.sigma, scale)

    def _raw_maps(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The patch map and the spectral maps, [B, 1, S, S] each, unscaled."""
        graph = PatchMap(self.extractor_, self.bank_, self.sigma)
        return torch.cat([graph(b) for b in x.split(_BATCH)]), self._spectral_maps(x)

    def _spectral_names(self) -> tuple[str, ...]:
        """The spectral maps' names, in `_spectral_maps`' order: their quantiles' keys."""
        return () if self.spectra_ is None else self.spectra_.names

    def _spectral_maps(self, x: Tensor) -> list[Tensor]:
        if self.spectra_ is None:
            return []
        spectra = [m.to(x.device) for m in self.spectra_.maps(x)]
        return [gaussian_blur(m, self.spectral_sigma) for m in spectra]

    @torch.inference_mode()
    def _score_maps(self, x: Tensor) -> Tensor:
        """[B, 1, S, S] anomaly maps for input [B, N, S, S]."""
        channels = self.extractor_.stem.in_channels
        if x.shape[1] != channels:
            raise SpecadError(f"knn expects [B, {channels}, S, S], got {tuple(x.shape)}")
        x = x.to(self.bank_.device)
        graph = self.export_graph()
        return self.export_maps(x, torch.cat([graph(b) for b in x.split(_BATCH)]))

    @torch.inference_mode()
    def export_maps(self, x: Tensor, patch: Tensor) -> Tensor:
        """The anomaly maps of input ``x`` [B, N, S, S] from its normalised patch map ``patch``
        [B, 1, S, S] (torch's or an export's): the weighted spectral maps added, in torch."""
        maps = patch
        for name, m in zip(self._spectral_names(), self._spectral_maps(x), strict=True):
            scale = self.calibration_.quantiles[name]
            maps = maps + self.spectral_weight_ * normalise(m.to(patch.device), *scale)
        return maps

    # ------------------------------------------------------------------ devices and files

    def to(self, device: str | torch.device) -> Self:
        """Move the fitted extractor and bank (the spectral maps are computed on the CPU);
        channels-last, which runs the extractor faster on CPUs (docs/runtimes.md)."""
        self.check_fitted()
        self.extractor_ = self.extractor_.to(device, memory_format=torch.channels_last)
        self.bank_ = self.bank_.to(device)
        return self

    def _tensors(self) -> dict[str, Tensor]:
        extractor = nest("extractor", self.extractor_.state_dict())
        spectra = {} if self.spectra_ is None else self.spectra_.tensors()
        return {"bank": self.bank_} | extractor | nest("spectra", spectra)

    def _scalars(self) -> dict[str, Any]:
        return {
            "channels": self.extractor_.stem.in_channels,
            "wavelengths": self.wavelengths_,
            "spectra": None if self.spectra_ is None else self.spectra_.scalars(),
            "spectral_weight": self.spectral_weight_,
            "image_size": self.image_size_,
            "units": [list(u) for u in self.units_],
        }

    def _restore(self, tensors: dict[str, Tensor], scalars: dict[str, Any]) -> None:
        # every saved value is checked before it sizes an allocation or divides a map
        channels = validate(ChannelCount, scalars["channels"], None, "knn channels")
        values = per_channel(channels)
        self.wavelengths_ = validate(values | None, scalars["wavelengths"], None, "knn wavelengths")
        self.image_size_ = validate(Index, scalars["image_size"], None, "knn image_size")
        self.units_ = validate(tuple[values, values], scalars["units"], None, "knn units")
        self.extractor_ = EfficientNetLite0Teacher(
            channels, self.blocks, self.mapping, self.wavelengths_
        )
        state = unnest("extractor", tensors)
        try:
            self.extractor_.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:300]
            raise SpecadError(f"knn extractor weights do not fit: {detail}") from err
        self.bank_ = tensors["bank"]
        check_shape("knn", "bank", self.bank_, None, self.extractor_.out_channels)
        if self.bank_.dtype != torch.float32:
            raise SpecadError(f"knn tensor 'bank' is {self.bank_.dtype}, expected float32")
        weight = scalars["spectral_weight"]
        self.spectral_weight_ = validate(NonNegative, weight, None, "knn spectral_weight")
        self.spectra_ = None
        if scalars["spectra"] is not None:
            spectra = unnest("spectra", tensors)
            self.spectra_ = PixelSpectra.restore(spectra, scalars["spectra"], self.seed)
        if (self.spectra_ is None) != (self.spectral_weight_ == 0):
            raise SpecadError("knn spectral_weight does not match its spectral maps")
        names, quantiles = set(self._spectral_names()), set(self.calibration_.quantiles)
        if quantiles - {"patch"} != names or (names and "patch" not in quantiles):
            raise SpecadError("knn calibration quantiles do not match its maps")


def batches(images: Images) -> Iterator[Tensor]:
    """[B, N, H, W] batches of up to `_BATCH` images of a [B, N, H, W] tensor or of a sequence
    of [N, H, W] ones, indexed one at a time so that a lazy sequence streams; a batch ends
    where the size changes (cubes at their own sizes)."""
    if isinstance(images, Tensor):
        yield from images.split(_BATCH)
        return
    batch: list[Tensor] = []
    for i in range(len(images)):
        x = images[i]
        if batch and (len(batch) == _BATCH or x.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(x)
    if batch:
        yield torch.stack(batch)


SPECTRAL_WEIGHT = 0.5
"""Weight of the spectral maps where the rule turns them on: measured on tray6 and tray6-hard
(benchmarks/accuracy/tray6_results.md), where this weight lifted image AUROC on both."""
STEM_FILTERS = 3
"""Input filters of the pretrained stem (R, G, B): more channels than this share filters."""


def spectral_weight(spectral: float | None, channels: int) -> float:
    """The weight of the spectral maps: ``spectral`` if given, else `SPECTRAL_WEIGHT` where the
    stem folds several bands into one filter (more than three channels) and 0 elsewhere.

    Why: a band with a pretrained filter of its own is seen by the patch features as ImageNet
    taught them; only bands that share a filter can hide a material from them (water in SWIR).
    """
    if spectral is not None:
        return float(spectral)
    return SPECTRAL_WEIGHT if channels > STEM_FILTERS else 0.0


def greedy_coreset(
    features: Tensor, size: int, projection: int, generator: torch.Generator
) -> Tensor:
    """Indices of ``size`` rows chosen by greedy k-centre selection (PatchCore's coreset).

    Each step takes the row farthest from those chosen so far, so the coreset covers the feature
    space: rare normal patches survive, which uniform subsampling would drop. Distances are
    measured after a Gaussian random projection to ``projection`` dimensions (Johnson-
    Lindenstrauss), which makes each step cost rows x ``projection`` multiply-adds.
    """
    n, d = features.shape
    if size >= n:
        return torch.arange(n, device=features.device)
    if projection < d:
        matrix = torch.randn(d, projection, generator=generator) / math.sqrt(projection)
        features = features @ matrix.to(features.device)
    sq_norms = features.square().sum(1)
    nearest = torch.full((n,), float("inf"), device=features.device)
    chosen = torch.empty(size, dtype=torch.long, device=features.device)
    pick = int(torch.randint(n, (1,), generator=generator))
    for i in range(size):
        chosen[i] = pick
        # |a - b|^2 = |a|^2 - 2 a.b + |b|^2, one matrix-vector product per step
        dist = torch.addmv(sq_norms, features, features[pick], alpha=-2).add_(sq_norms[pick])
        torch.minimum(nearest, dist, out=nearest)
        pick = int(nearest.argmax())
    return chosen
