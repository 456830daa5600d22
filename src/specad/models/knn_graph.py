"""knn's patch map as one module: backbone, aggregation, nearest-neighbour search, upsampling,
blur and normalisation, so that torch runs the very graph that ONNX exports (`specad.export`).

The search is a matrix product against the bank held as a tensor,
``|q - b|^2 = |q|^2 - 2 q.b + |b|^2``, minimised before the square root: no [Q, M, D]
differences, one square root per patch instead of one per patch-bank pair (``torch.cdist``
takes those), and ops that every ONNX runtime has (MatMul, ReduceMin). Queries and bank are
first centred on the bank's mean (distances do not change): the features are ReLU6 outputs,
all positive, whose large norms the expansion would cancel, losing float32 digits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from specad.models.maps import normalise, upsample_blur

SEARCH_ELEMENTS = 1 << 24
"""Patch-to-bank distances computed at once in torch (float32: 64 MB), which bounds scoring
memory; the exported graph searches a whole batch at once (batch 8 at 256 px, bank 2,048:
64 MB too)."""


def nearest_distance(queries: Tensor, bank: Tensor, bank_sq: Tensor) -> Tensor:
    """Euclidean distance [Q] of each query [Q, D] to its nearest row of ``bank`` [M, D]
    (``bank_sq``: the rows' squared norms [M]), in float32 even under bf16 autocast: the
    expansion cancels large terms, which bf16's 8 bits would turn into noise."""
    with torch.autocast(queries.device.type, enabled=False):
        queries = queries.float()
        if torch.onnx.is_in_onnx_export():  # one node, any batch: no loop unrolled at trace
            chunks = [queries]
        else:
            chunks = list(queries.split(max(1, SEARCH_ELEMENTS // len(bank))))
        # min over the bank of |b|^2 - 2 q.b, then + |q|^2: one [Q, M] pass, not three
        d2 = torch.cat([torch.addmm(bank_sq, q, bank.T, alpha=-2).amin(1) for q in chunks])
        return (d2 + queries.square().sum(1)).clamp_min(0).sqrt()


class PatchMap(nn.Module):
    """[B, N, S, S] input -> [B, 1, S, S] patch map: each patch's distance to its nearest bank
    feature, upsampled bilinearly to the input size, blurred by ``sigma`` pixels and
    normalised by ``scale`` (`specad.models.maps.normalise`; None: raw distances)."""

    def __init__(
        self,
        extractor: nn.Module,
        bank: Tensor,
        sigma: float,
        scale: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        centre = bank.mean(0)
        self.register_buffer("centre", centre)
        self.register_buffer("bank", bank - centre)
        self.register_buffer("bank_sq", (bank - centre).square().sum(1))
        self.sigma, self.scale = sigma, scale

    def forward(self, x: Tensor) -> Tensor:
        f = self.extractor(x.contiguous(memory_format=torch.channels_last))  # [B, D, h, w]
        b, d, h, w = f.shape
        queries = f.permute(0, 2, 3, 1).reshape(-1, d) - self.centre
        nearest = nearest_distance(queries, self.bank, self.bank_sq)
        patch = upsample_blur(nearest.view(b, 1, h, w), x.shape[-2:], self.sigma)  # [B, 1, S, S]
        return patch if self.scale is None else normalise(patch, *self.scale)
