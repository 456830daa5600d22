"""Operations on anomaly maps that several detectors share: exact quantiles, the quantile
normalisation that puts maps of different origin on one scale, a Gaussian blur, and upsampling
with the blur as two matrix products."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

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


def gaussian_kernel(sigma: float, side: int) -> Tensor:
    """Normalised 1-D Gaussian of ``sigma`` > 0 for a map whose longer side is ``side``.

    It reaches 3 ``sigma`` but never beyond ``side``, where it would only see the replicated
    edge: so a huge ``sigma`` (from a model file, say) costs memory of the map's size, not of
    ``sigma``'s.
    """
    radius = max(1, min(math.ceil(3 * min(sigma, side)), side))  # 3 * 1e308 overflows
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (`gaussian_kernel`) of [B, 1, H, W] maps, edges replicated;
    ``sigma`` 0 is identity."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma, max(maps.shape[-2:])).to(maps)
    radius = len(kernel) // 2
    out = F.pad(maps, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


@functools.lru_cache(maxsize=32)
def _resampling(n_in: int, n_out: int, sigma: float, side: int) -> Tensor:
    """[n_out, n_in]: linear upsampling (``align_corners=False``) then `gaussian_blur` along one
    axis, as one matrix: its column j is what the two make of the unit vector e_j."""
    with torch.inference_mode(False), torch.no_grad():
        m = F.interpolate(
            torch.eye(n_in).unsqueeze(1), size=n_out, mode="linear"
        )  # [n_in, 1, n_out]
        if sigma > 0:
            kernel = gaussian_kernel(sigma, side)
            radius = len(kernel) // 2
            m = F.conv1d(F.pad(m, (radius, radius), mode="replicate"), kernel.view(1, 1, -1))
        return m.squeeze(1).T.contiguous()


def upsample_blur(maps: Tensor, size: tuple[int, int], sigma: float) -> Tensor:
    """``gaussian_blur(F.interpolate(maps, size, mode="bilinear"), sigma)`` for [B, 1, h, w]
    maps, computed as ``R maps C^T`` with two small matrices (`_resampling`, [H, h] and [W, w]).

    Both steps are separable and linear, so the matrices give the same map to float rounding,
    in two matrix products instead of a resize, a padded copy and two long convolutions at full
    size, a visible share of knn's ONNX time on a CPU. In an export the matrices
    are constants, since the graph's input size is fixed.
    """
    h, w = (int(s) for s in maps.shape[-2:])
    height, width = (int(s) for s in size)
    side = max(height, width)
    rows = _resampling(h, height, float(sigma), side).to(maps)  # [H, h]
    cols = _resampling(w, width, float(sigma), side).to(maps)  # [W, w]
    return rows @ maps @ cols.T  # [B, 1, H, W]
