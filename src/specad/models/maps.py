"""Operations on anomaly maps that several detectors share: exact quantiles, the quantile
normalisation that puts maps of different origin on one scale, and a Gaussian blur."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from specad.bounds import FiniteFloat, validate
from specad.errors import SpecadError

LOW, HIGH = 0.9, 0.995
"""Normal-image quantiles that `normalise` sends to 0 and 0.1 (EfficientAD's rule)."""


def quantile(values: Tensor, q: float) -> Tensor:
    """``torch.quantile(values.flatten(), q)`` (linear interpolation), exact at any size.

    ``torch.quantile`` refuses more than 2**24 elements; anomalib subsamples randomly, which makes
    the result depend on the RNG. Two ``kthvalue`` selections are exact, O(n) and deterministic.
    """
    flat = values.detach().flatten()
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
    pos = q * (flat.numel() - 1)
    lo = math.floor(pos)
    below = flat.kthvalue(lo + 1).values
    above = flat.kthvalue(min(lo + 2, flat.numel())).values
    return below + (pos - lo) * (above - below)


def normal_quantiles(maps: Iterable[Tensor]) -> tuple[float, float]:
    """The `LOW` and `HIGH` quantiles of every value of normal images' maps."""
    values = torch.cat([m.flatten() for m in maps])
    return float(quantile(values, LOW)), float(quantile(values, HIGH))


def normalise(maps: Tensor, low: Tensor | float, high: Tensor | float) -> Tensor:
    """``0.1 (m - low) / (high - low)``: a normal image's `LOW` quantile becomes 0 and its `HIGH`
    quantile 0.1, so maps of different units can be added (EfficientAD's two maps, knn's
    patch and spectral maps)."""
    return 0.1 * (maps - low) / (high - low)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [B, 1, H, W] maps, edges replicated; ``sigma`` 0 is identity.

    The kernel reaches 3 ``sigma`` but never beyond the map's longer side, where it would only
    see the replicated edge: so a huge ``sigma`` (from a model file, say) costs memory of the
    map's size, not of ``sigma``'s.
    """
    if sigma <= 0:
        return maps
    side = max(maps.shape[-2:])
    radius = max(1, min(math.ceil(3 * min(sigma, side)), side))  # 3 * 1e308 overflows
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(maps, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


def checked_scale(value: Any, what: str) -> tuple[float, float]:
    """A saved `normalise` scale ``(low, high)``: two finite numbers with ``low < high``, else
    a `SpecadError` naming ``what`` (a file's division by zero, caught at load)."""
    low, high = validate(tuple[FiniteFloat, FiniteFloat], value, None, what)
    if not low < high:
        raise SpecadError(f"{what}: {low:g} is not below {high:g}")
    return low, high
