"""`specad train`: a run folder around EfficientAD's training loop.

The cubes are loaded into memory and normalised here; the loop (`specad.models.efficientad_train`)
trains the network and hands it to an `EfficientADDetector`, which is thresholded on val/good as
`specad predict` scores, saved, and exported to the fast CPU runtimes. Under ``torchrun`` rank 0
alone writes the run folder.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm import tqdm

from specad.config import Config, dump_config
from specad.data import Dataset, Preprocess, load_dataset, read_mask, select_channels
from specad.errors import SpecadError
from specad.export import export_detector, measure_runtimes
from specad.infer import Detector
from specad.io import refuse_nonempty, refuse_overlap, reserve_output
from specad.io.files import write_errors
from specad.modelfile import MODEL_FILE, ModelMeta
from specad.models import ddp
from specad.models.build import build_efficientad
from specad.models.efficientad_detector import EfficientADDetector
from specad.models.efficientad_train import CHECKPOINT, Inputs, Run, fit_network
from specad.scoring import run_split

CONFIG_FILE, CONFIG_HEADER = "config.yaml", "# the config of this run, as specad train read it\n"
LOG_FILE, CHECKPOINT_DIR = "metrics.jsonl", Path(CHECKPOINT).parent.name


def prepare(cfg: Config, ds: Dataset) -> tuple[Preprocess, ModelMeta, torch.Tensor]:
    """Resolve channel selection against the data, fit the per-channel normalisation, and return
    the normalised training input (loaded anyway to fit it)."""
    train = ds.require("train")
    ds.require("val")
    first = train[0].read()
    channels = select_channels(first, cfg.data.channels, train[0].path)
    pre = Preprocess(first.channels, channels, cfg.data.image_size)
    raw = load_inputs(pre, train).x  # not yet normalised: mean/std unset
    if cfg.data.normalize == "train":
        pre.fit(raw)
    elif cfg.data.normalize != "none":
        pre.mean, pre.std = cfg.data.normalize.mean, cfg.data.normalize.std
    chosen = first.select(channels)
    meta = ModelMeta("efficientad", pre, chosen.bands, chosen.wavelengths, chosen.rgb)
    return pre, meta, pre.normalise(raw)


def load_inputs(pre: Preprocess, samples: list, with_masks: bool = False) -> Inputs:
    xs, labels, masks = [], [], []
    for s in samples:
        cube = s.read()
        xs.append(pre.cube_tensor(cube, s.path))
        labels.append(s.label)
        if with_masks:
            masks.append(read_mask(s, cube.shape[:2]))
    return Inputs(torch.stack(xs), labels, masks)


def train(
    cfg: Config,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> Path:
    """Train and write a run folder; returns the final model's path.

    ``stop_after`` ends the run early after that many steps with a checkpoint (time-boxed runs,
    tests of ``resume``); the model file is only written when all steps are done.
    """
    out = Path(out)
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
            return _train(cfg, out, resume, stop_after, progress and ranks.main, ranks)


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


def _train(
    cfg: Config, out: Path, resume: bool, stop_after: int | None, progress: bool, ranks: ddp.Ranks
) -> Path:
    torch.manual_seed(cfg.train.seed)
    ds = load_dataset(cfg.data.root, cfg.data.layout)
    pre, meta, train_x = prepare(cfg, ds)
    val_x = load_inputs(pre, ds.require("val")).x
    monitor = _monitor_set(pre, ds) if cfg.train.val_every and ranks.main else None
    run = Run(out, ranks, resume, stop_after, progress, monitor)
    channels, size = train_x.shape[1], train_x.shape[-1]
    network = build_efficientad(cfg.model, channels, size, meta.wavelengths, cfg.train.seed)
    if not resume and ranks.main:
        (out / CONFIG_FILE).write_text(CONFIG_HEADER + dump_config(cfg))
    steps = fit_network(network, cfg.training, train_x, val_x, run, meta.wavelengths)
    if steps is None:  # stopped early: the checkpoint is the run's output
        return out / CHECKPOINT
    if not ranks.main:  # rank 0 alone calibrates and writes the model
        return out / MODEL_FILE
    det = EfficientADDetector.from_network(
        network, cfg.model, cfg.training, channels, meta.wavelengths, steps, cfg.data.root
    )
    detector = Detector(det, meta, ranks.device)  # thresholded as `specad predict` scores
    det.calibrate(run_split(detector, ds.require("val")).scores, cfg.train.threshold_far)
    path = detector.save(out / MODEL_FILE)
    if cfg.train.export:
        int8 = "int8" in cfg.train.export
        _export(detector, path, calibration_images(train_x), int8, val_x, cfg.train.threshold_far)
    return path


def calibration_images(x: Sequence, count: int = 32) -> Sequence:
    """Evenly spaced training images (or samples): int8 held AUROC on tray6 with 32, not 16."""
    return x[:: max(1, len(x) // count)][:count]


def _export(
    detector: Detector,
    path: Path,
    images: torch.Tensor,
    int8: bool,
    validation: torch.Tensor,
    far: float,
) -> None:
    """The fast CPU runtimes' files, and which is fastest here (`measure_runtimes`); a failure
    costs speed, never the trained model."""
    try:
        export_detector(detector, path, images, int8=int8, validation=validation, far=far)
        if detector.device.type == "cpu":
            measure_runtimes(detector, path, calibration_images(validation, 8))
    except SpecadError as err:
        tqdm.write(f"warning: ONNX export skipped ({err})", file=sys.stderr)


def _monitor_set(pre: Preprocess, ds: Dataset, per_kind: int = 6) -> Inputs:
    """A few normal and anomalous test cubes, to watch AUROC while training.

    Only watched and logged: nothing is chosen on it, so the test split stays a test.
    """
    test = ds.require("test")
    good = [s for s in test if not s.anomalous][:per_kind]
    bad = [s for s in test if s.anomalous][:: max(1, len(test) // per_kind)][:per_kind]
    return load_inputs(pre, good + bad, with_masks=True)
