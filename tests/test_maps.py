"""Map operations shared by the detectors (`specad.models.maps`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from specad.models.maps import gaussian_blur, upsample_blur


@pytest.mark.parametrize(
    ("grid", "size", "sigma"),
    [
        ((32, 32), (256, 256), 8.0),
        ((7, 12), (50, 96), 2.5),
        ((4, 4), (16, 16), 0.0),
        ((3, 5), (9, 20), 1e308),
    ],
)
def test_upsample_blur_is_resize_then_blur(
    grid: tuple[int, int], size: tuple[int, int], sigma: float
) -> None:
    torch.manual_seed(0)
    maps = torch.rand(3, 1, *grid) * 5
    expected = gaussian_blur(F.interpolate(maps, size=size, mode="bilinear"), sigma)
    torch.testing.assert_close(upsample_blur(maps, size, sigma), expected, atol=2e-5, rtol=0)
