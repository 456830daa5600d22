"""Beyond one process: Dask scoring equals a local run (also with a worker killed mid-run), and
two torchrun/gloo training processes equal one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import make_dataset
from safetensors.torch import load_file

from specad.data import load_dataset
from specad.distributed import ModelSource, open_cluster  # needs the dask extra; never skipped
from specad.errors import SpecadError
from specad.evaluate import evaluate_detector
from specad.fit import fit_on_dataset, train
from specad.inference import Detector
from specad.models.efficientad.config import load_config
from specad.predict import expand_inputs, predict_files


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """A dataset, an RX model saved beside it, and its cubes plus one corrupt file."""
    root = make_dataset(tmp_path_factory.mktemp("d") / "ds")
    model = fit_on_dataset("rx", load_dataset(root)).save(root.parent / "rx")
    bad = root.parent / "more" / "broken.tif"  # outside the dataset: evaluate must not see it
    bad.parent.mkdir()
    bad.write_bytes(b"II*\x00 not a tiff")
    return root, model, expand_inputs([root / "train", root / "test", bad])


def _local(model: Path, files: list[Path], out: Path) -> list[str]:
    return predict_files(Detector.load(model), files, out).failed


def _same_outputs(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a) for p in a.rglob("*"))
    assert names == sorted(p.relative_to(b) for p in b.rglob("*"))
    assert (a / "scores.csv").read_bytes() == (b / "scores.csv").read_bytes()
    for name in names:
        if name.suffix == ".tif":
            assert np.array_equal(tifffile.imread(a / name), tifffile.imread(b / name)), name
        elif name.suffix == ".png":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
def test_dask_scoring_equals_a_local_run(scene, tmp_path: Path) -> None:
    root, model, files = scene
    det = Detector.load(model)
    failed_here = _local(model, files, tmp_path / "here")
    with open_cluster(None, 2, ModelSource.of(det, model)) as cluster:
        run = predict_files(det, files, tmp_path / "there", cluster=cluster)
        metrics = evaluate_detector(det, load_dataset(root), cluster=cluster)
    assert run.failed == failed_here and len(failed_here) == 1
    assert "broken.tif" in failed_here[0]
    _same_outputs(tmp_path / "here", tmp_path / "there")
    here = evaluate_detector(det, load_dataset(root))
    assert json.dumps(metrics, sort_keys=True) == json.dumps(here, sort_keys=True)


@pytest.mark.slow
def test_report_scoring_on_dask_equals_a_local_report(scene, tmp_path: Path) -> None:
    from specad.report import load_report_config, write_report

    root, model, _ = scene
    reports = {}
    for name, extra in (("here", {}), ("there", {"workers": 2})):
        cfg = load_report_config(
            None, models={"rx": str(model)}, datasets=[str(root)], out=str(tmp_path / name), **extra
        )
        metrics = json.loads((write_report(cfg).parent / "metrics.json").read_text())
        reports[name] = metrics["models"]
    assert reports["here"] == reports["there"]


@pytest.mark.slow
def test_a_worker_killed_mid_run_changes_nothing(scene, tmp_path: Path) -> None:
    """The first worker to finish a scoring task dies (SIGKILL) before reporting it; Dask reruns
    its tasks elsewhere and the published folder is complete and equal to a local run."""
    from distributed import WorkerPlugin

    marker = tmp_path / "killed"

    class KillOnce(WorkerPlugin):  # local class: cloudpickle ships it by value to the workers
        def transition(self, key, start, finish, **kwargs) -> None:  # noqa: ANN001
            if finish == "memory" and "_score_file" in str(key):
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    return
                os.kill(os.getpid(), 9)

    root, model, files = scene
    det = Detector.load(model)
    _local(model, files, tmp_path / "here")
    with open_cluster(None, 2, ModelSource.of(det, model)) as cluster:
        cluster.client.register_plugin(KillOnce(), name="kill-once")
        run = predict_files(det, files, tmp_path / "there", cluster=cluster)
    assert marker.exists()  # a worker did die mid-run
    assert run.scored == len(files) - 1
    _same_outputs(tmp_path / "here", tmp_path / "there")


def test_scheduler_and_workers_together_is_one_line(scene) -> None:
    _, model, _ = scene
    with (
        pytest.raises(SpecadError, match="not both"),
        open_cluster("tcp://127.0.0.1:8786", 2, ModelSource.of(Detector.load(model), model)),
    ):
        pass


def test_detector_fitted_here_travels_pickled(scene) -> None:
    root, _, _ = scene
    det = fit_on_dataset("rx", load_dataset(root))
    source = ModelSource.of(det, "rx")
    assert source.path is None
    assert source.load().meta.to_json() == det.meta.to_json()


@pytest.mark.slow
def test_two_ddp_processes_equal_one_with_the_same_global_batch(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"data: {{root: {root}, image_size: 64}}\nmodel: {{teacher: pdn-random}}\n"
        "train: {seed: 3, steps: 3, batch_size: 2, export: [], log_every: 1}\n"
    )
    one = train(load_config(config), tmp_path / "one", progress=False)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + ["-m", "specad", "train", "-c", str(config), "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_file(str(one)), load_file(str(tmp_path / "two" / "model.safetensors"))
    start = build_start(config)
    assert a.keys() == b.keys()
    moved = max((a[k] - start[k]).abs().max().item() for k in start if k.startswith("student"))
    assert moved > 1e-4  # training changed the weights far more than the tolerance below
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=2e-5, msg=key)
    logs = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 3  # rank 0 alone wrote the log


def build_start(config: Path) -> dict[str, torch.Tensor]:
    """The weights training starts from (the seeded initialisation)."""
    from specad.models.efficientad.build import build_efficientad

    cfg = load_config(config)
    return build_efficientad(cfg.model, 6, 64, None, cfg.train.seed).state_dict()
