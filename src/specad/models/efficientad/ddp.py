"""Data-parallel training under ``torchrun``: one process per rank, gloo on CPUs, NCCL on GPUs.

Every rank draws the same global batch from the shared seeded generator and keeps its own rows,
so no data moves between ranks. What a one-process step computes over the whole batch is
computed over all ranks here: gradients are averaged before each optimiser step (what
``DistributedDataParallel`` does; done by hand because EfficientAD's losses are not a
``forward``), the hard-feature quantile is taken over the gathered global batch, and teacher
statistics over all ranks' images in one-process order (rank 0 fits the map quantiles on all of
val, as one process does). Dropout masks are drawn per image (see ``AutoEncoder``), so the
trained model does not depend on the number of processes, up to float rounding of the sharded
convolutions and the reductions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from specad.errors import SpecadError
from specad.models.efficientad.network import HARD_QUANTILE, EfficientAD
from specad.models.maps import quantile
from specad.runtime import pick_device

BATCH = 8  # images per teacher/map batch, as in one-process training


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0 alone writes the run folder."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` (a multiple of the world size)."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    @contextmanager
    def together(self) -> Iterator[None]:
        """End every rank when one of them refuses (e.g. rank 0's output checks): each raises
        instead of waiting forever in the next collective."""
        failure: SpecadError | None = None
        try:
            yield
        except SpecadError as err:
            failure = err
        if self.world > 1:
            flag = torch.tensor([float(failure is not None)], device=self.device)
            dist.all_reduce(flag)
            if flag.item() and failure is None:
                raise SpecadError("another training process failed; its message is above")
        if failure is not None:
            raise failure

    def hard_loss(self, distance: Tensor) -> Tensor:
        """This rank's share of the hard-feature loss of the global batch: the quantile and the
        count of hard elements span all ranks, and averaging the gradients over ranks makes the
        shares sum to the one-process loss."""
        mine = distance.detach().contiguous()  # channels_last features give a strided one
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine)
        everything = torch.cat(parts)
        q = quantile(everything, HARD_QUANTILE)
        count = (everything >= q).sum()
        return distance[distance >= q].sum() * self.world / count

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients over ranks in one flat all-reduce."""
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view(g.shape))
            offset += g.numel()

    def mean(self, losses: dict[str, Tensor]) -> dict[str, float]:
        """The global batch's losses (for the log): the mean of the ranks' values."""
        values = torch.stack([v.detach().float() for v in losses.values()])
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        return dict(zip(losses, values.tolist(), strict=True))

    def broadcast(self, module: torch.nn.Module) -> None:
        """Start every rank from rank 0's weights and statistics."""
        if self.world > 1:
            for tensor in module.state_dict().values():
                buffer = tensor.contiguous()
                dist.broadcast(buffer, 0)
                tensor.copy_(buffer)

    def gather(self, mine: list) -> list:
        """Every rank's per-batch results, back in batch order (batch i ran on rank i % world)."""
        if self.world == 1:
            return mine
        everyone: list = [None] * self.world
        dist.all_gather_object(everyone, mine)
        total = sum(len(part) for part in everyone)
        return [everyone[i % self.world][i // self.world] for i in range(total)]

    def batches(self, x: Tensor) -> Iterator[Tensor]:
        """This rank's batches of ``x`` (every ``world``-th), on its device."""
        for i in range(self.rank * BATCH, len(x), self.world * BATCH):
            yield x[i : i + BATCH].to(self.device)


@contextmanager
def session(device: str = "auto") -> Iterator[Ranks]:
    """The process group ``torchrun`` describes (``WORLD_SIZE`` > 1), or one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = pick_device(device)
    if world == 1:
        yield Ranks(device=chosen)
        return
    rank = int(os.environ["RANK"])
    if chosen.type == "cuda":
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(chosen)
    dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    try:
        yield Ranks(rank, world, chosen)
    finally:
        dist.destroy_process_group()


@torch.no_grad()
def fit_teacher_stats(model: EfficientAD, x: Tensor, ranks: Ranks, keep: bool) -> Tensor | None:
    """``EfficientAD.fit_teacher_stats`` with each rank running the teacher on its batches."""
    if ranks.world == 1:
        return model.fit_teacher_stats(ranks.batches(x), keep=keep)
    features = ranks.gather([model.teacher(b).cpu() for b in ranks.batches(x)])
    return model.adopt_teacher_stats(features, keep)


def dropout_generators(seeds: Tensor, device: torch.device) -> list[torch.Generator]:
    """One generator per image for the autoencoder's dropout, seeded from the shared stream."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]
