"""`specad train`'s EfficientAD part: the run folder (one writer; resumed from its checkpoint;
a first run killed before its first checkpoint started again), the processes under ``torchrun``,
and the network built from the config, trained and handed to an `EfficientADDetector`.

Loading the cubes and what every fitted model gets (the threshold on val/good as ``specad
predict`` scores, the model files, the exports) is `specad.fit.train`'s: those run a fitted model,
a layer above the detectors. Under ``torchrun`` rank 0 alone writes the run folder.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from specad.data import Inputs
from specad.errors import SpecadError
from specad.io import refuse_nonempty, refuse_overlap, reserve_output
from specad.io.files import write_errors
from specad.models.efficientad import ddp
from specad.models.efficientad.build import build_efficientad
from specad.models.efficientad.config import EfficientADConfig, dump_config
from specad.models.efficientad.detector import EfficientADDetector
from specad.models.efficientad.train_loop import CHECKPOINT, Run, fit_network

CONFIG_FILE, CONFIG_HEADER = "config.yaml", "# the config of this run, as specad train read it\n"
LOG_FILE, CHECKPOINT_DIR = "metrics.jsonl", Path(CHECKPOINT).parent.name


@dataclass
class TrainingRun:
    """One `specad train` run in its folder, on this process, as `training_run` opened it."""

    cfg: EfficientADConfig
    out: Path
    ranks: ddp.Ranks
    resume: bool = False
    stop_after: int | None = None
    progress: bool = True
    stopped: bool = False
    """Set by `fit` when ``stop_after`` ended the run early: its checkpoint is its output."""

    @property
    def main(self) -> bool:
        """Whether this process writes the run folder (rank 0)."""
        return self.ranks.main

    @property
    def device(self) -> torch.device:
        return self.ranks.device

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT

    def fit(
        self,
        train_x: torch.Tensor,
        val_x: torch.Tensor,
        wavelengths: list[float] | None,
        monitor: Inputs | None = None,
    ) -> EfficientADDetector | None:
        """Build the network from the config, train it on the normalised normal images
        ``train_x`` and fit its map quantiles on ``val_x``, watching AUROC on ``monitor``.

        The detector on rank 0; None on the other ranks, and when the run stopped early.
        """
        cfg, main = self.cfg, self.ranks.main
        torch.manual_seed(cfg.train.seed)
        run = Run(self.out, self.ranks, self.resume, self.stop_after, self.progress, monitor)
        channels, size = train_x.shape[1], train_x.shape[-1]
        network = build_efficientad(cfg.model, channels, size, wavelengths, cfg.train.seed)
        if not self.resume and main:
            (self.out / CONFIG_FILE).write_text(CONFIG_HEADER + dump_config(cfg))
        steps = fit_network(network, cfg.training, train_x, val_x, run, wavelengths)
        self.stopped = steps is None
        if steps is None or not main:
            return None
        return EfficientADDetector.from_network(
            network, cfg.model, cfg.training, channels, wavelengths, steps, cfg.data.root
        )


@contextmanager
def training_run(
    cfg: EfficientADConfig,
    out: Path,
    resume: bool,
    force: bool,
    stop_after: int | None,
    progress: bool,
) -> Iterator[TrainingRun]:
    """The run folder ``out`` reserved for this run (rank 0), checked for resuming or replaced
    (``force``), and the training processes started; a full disk while inside names the run.
    ``stop_after`` ends the run early after that many steps with a checkpoint."""
    inputs = (cfg.data.root, cfg.model.teacher_file, cfg.penalty.folder)
    refuse_overlap(out, [p for p in inputs if p is not None])
    with ddp.session(cfg.train.device) as ranks, ExitStack() as owned:
        with ranks.together():  # a refusal on any rank ends all of them
            if cfg.train.batch_size % ranks.world:
                raise SpecadError(
                    f"train.batch_size {cfg.train.batch_size} is not a multiple of the "
                    f"{ranks.world} training processes"
                )
            if ranks.main:  # one writer per run folder; a second one fails at once
                owned.enter_context(reserve_output(out))
                resume = _check_output(out, resume, force)
            else:  # before the barrier at the block's end, so before rank 0 writes anything
                resume = resume and not _unstarted(out)
        with write_errors(out, Path(os.path.abspath(out))):  # a full disk names the run
            yield TrainingRun(cfg, out, ranks, resume, stop_after, progress and ranks.main)


def _check_output(out: Path, resume: bool, force: bool) -> bool:
    """Refuse a run folder this run cannot use; whether to resume from its checkpoint. A first
    run stopped before its first checkpoint left nothing to resume or keep: it starts again."""
    if _unstarted(out):
        if resume:
            warnings.warn(
                f"{out}: the run stopped before its first checkpoint; starting it again",
                stacklevel=2,
            )
        return False
    if resume and not (out / CHECKPOINT).is_file():
        raise SpecadError("no checkpoint to resume from", out / CHECKPOINT)
    if not resume:
        refuse_nonempty(out, force)
    out.mkdir(parents=True, exist_ok=True)
    return resume


def _unstarted(out: Path) -> bool:
    """Whether ``out`` holds only what a first run writes before its first checkpoint: this
    module's ``config.yaml`` (known by its header, so a user's own file never counts), the
    metrics log and partial checkpoint files of a killed write."""
    config = out / CONFIG_FILE
    try:
        with config.open() as f:
            if f.readline() != CONFIG_HEADER:
                return False
    except (OSError, UnicodeDecodeError):
        return False
    if {p.name for p in out.iterdir()} - {CONFIG_FILE, LOG_FILE, CHECKPOINT_DIR}:
        return False
    checkpoints = out / CHECKPOINT_DIR
    if not checkpoints.exists():
        return True
    return checkpoints.is_dir() and all(p.name.endswith(".part") for p in checkpoints.iterdir())
