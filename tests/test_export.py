"""The fast runtimes: ONNX export parity, int8, bf16, stale exports, and their CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_failure, run_specad, slow_case

import specad.runtime
from specad import export
from specad.data import load_dataset, load_inputs
from specad.errors import SpecadError
from specad.export import AGREEMENT, CHOICE_FILE, INT8_FILE, ONNX_FILE, export_detector
from specad.fit import fit_on_dataset
from specad.inference import Detector
from specad.metrics import threshold_at_far
from specad.runtime import cpu_model, cpu_speed_flags

AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma"}
CPUS = {  # /proc/cpuinfo flags of each kind of CPU: what `auto` picks with exports, and without
    "avx2": (AVX2, "onnx", "torch"),
    "avx512": (AVX2 | {"avx512f", "avx512bw"}, "onnx", "torch"),
    "avx512-vnni": (AVX2 | {"avx512f", "avx512_vnni"}, "int8", "torch"),
    "avx-vnni": (AVX2 | {"avx_vnni"}, "int8", "torch"),
    "avx512-bf16": (AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16"}, "int8", "torch"),
    "amx": (AVX2 | {"avx512f", "avx512_vnni", "amx_bf16", "amx_int8"}, "int8", "bf16"),
}


def fake_cpu(monkeypatch: pytest.MonkeyPatch, flags: set[str]) -> None:
    """Make this machine's CPU report ``flags``, so every branch of the runtime choice runs on
    any CPU."""
    monkeypatch.setattr(specad.runtime, "_cpu_flags", lambda: set(flags))


@pytest.fixture
def trained(tiny_root: Path, tiny_efficientad: Path) -> tuple[Path, Path]:
    """The shared tiny EfficientAD (20 steps, onnx and int8 exports) and its dataset."""
    return tiny_root, tiny_efficientad


def _val(root: Path, det: Detector) -> torch.Tensor:
    return load_inputs(det.meta.preprocess, load_dataset(root).require("val")).x


def _maps(root: Path, run: Path, runtime: str) -> torch.Tensor:
    det = Detector.load(run, device="cpu", runtime=runtime)
    assert det.runtime == runtime
    return det.maps(_val(root, det))


def test_training_writes_both_exports(trained: tuple[Path, Path]) -> None:
    _, run = trained
    assert (run / ONNX_FILE).is_file() and (run / INT8_FILE).is_file()


def test_onnx_export_gives_the_torch_maps(trained: tuple[Path, Path]) -> None:
    root, run = trained
    reference = _maps(root, run, "torch")
    assert reference.abs().max() > 0.01  # a real map, so the comparison means something
    assert torch.allclose(_maps(root, run, "onnx"), reference, atol=1e-4)


@pytest.mark.parametrize("cpu", list(CPUS))
def test_auto_without_a_measurement_follows_the_cpu_flags(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu: str
) -> None:
    """int8 only with VNNI (AVX-512 VNNI, AVX-VNNI or AMX), else onnx; without exports, bf16 only
    with AMX, else torch."""
    flags, exported, bare = CPUS[cpu]
    fake_cpu(monkeypatch, flags)
    assert "avx2" in cpu_speed_flags() and set(cpu_speed_flags()) <= flags  # the fake took
    unmeasured = tmp_path / "unmeasured"  # without a measurement on this CPU: the flag rule
    shutil.copytree(trained[1], unmeasured)
    (unmeasured / CHOICE_FILE).unlink()
    assert Detector.load(unmeasured, device="cpu").runtime == exported
    (unmeasured / INT8_FILE).unlink()
    assert Detector.load(unmeasured, device="cpu").runtime == "onnx"
    (unmeasured / ONNX_FILE).unlink()
    assert Detector.load(unmeasured, device="cpu").runtime == bare


def test_auto_picks_int8_on_vnni_cpus_with_its_own_threshold(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, run = trained
    fake_cpu(monkeypatch, CPUS["avx512-vnni"][0])
    int8 = Detector.load(run, device="cpu", runtime="int8")
    scores = int8.maps(_val(root, int8)).amax(dim=(1, 2, 3)).numpy()
    assert int8.threshold == pytest.approx(threshold_at_far(scores, 0.01))
    assert int8.threshold != Detector.load(run, device="cpu", runtime="onnx").threshold

    copy = tmp_path / "run"  # an int8 export without its threshold is never chosen by itself
    shutil.copytree(run, copy)
    model = Detector.load(copy, device="cpu", runtime="torch").model
    model.calibrate(None, runtime="int8")
    model.save(copy / "model.safetensors")  # the same tensors: the exports still match them
    record = json.loads((copy / CHOICE_FILE).read_text())
    record["choice"] = "int8"  # even where int8 was measured fastest: tiny models vary by run
    (copy / CHOICE_FILE).write_text(json.dumps(record))
    assert Detector.load(copy, device="cpu").runtime == "onnx"
    (copy / CHOICE_FILE).unlink()  # nor by the flag rule on a VNNI CPU
    assert Detector.load(copy, device="cpu").runtime == "onnx"


def test_int8_that_orders_validation_scores_unlike_fp32_is_kept_out_of_auto(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    monkeypatch.setattr(export, "RANK_MIN_IMAGES", 4)  # the tiny dataset's val split
    monkeypatch.setattr(export, "RANK_AGREEMENT", -1.0)  # any export passes
    det = Detector.load(copy, device="cpu", runtime="torch")
    val = _val(root, det)
    train_x = load_inputs(det.meta.preprocess, load_dataset(root).require("train")).x
    diffs = export_detector(det, copy, train_x, int8=True, validation=val)
    scores = {  # the rank it reports is that of the two exports' image scores on val
        r: Detector.load(copy, device="cpu", runtime=r).maps(val).amax(dim=(1, 2, 3)).numpy()
        for r in ("onnx", "int8")
    }
    rho = np.corrcoef(*(np.argsort(np.argsort(v)) for v in scores.values()))[0, 1]
    assert diffs["int8_rank"] == pytest.approx(rho, abs=1e-3)
    own = Detector.load(copy, device="cpu", runtime="torch").model.calibration_.runtime_thresholds
    assert "int8" in own

    monkeypatch.setattr(export, "RANK_AGREEMENT", 1.01)  # no export can pass: held back
    with pytest.warns(UserWarning, match="`auto` will not choose it"):
        export_detector(det, copy, train_x, int8=True, validation=val)
    own = Detector.load(copy, device="cpu", runtime="torch").model.calibration_.runtime_thresholds
    assert "int8" not in own
    record = json.loads((copy / CHOICE_FILE).read_text())
    (copy / CHOICE_FILE).write_text(json.dumps(record | {"choice": "int8"}))
    assert Detector.load(copy, device="cpu").runtime != "int8"


def test_auto_takes_the_fastest_accurate_runtime_measured_on_this_cpu(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, run = trained
    record = json.loads((run / CHOICE_FILE).read_text())  # written by training's export
    assert record["cpu"] == cpu_model() and record["runtimes"]["torch"]["agreement"] == 1.0
    assert {"onnx", "int8"} <= set(record["runtimes"])
    accurate = {r: v for r, v in record["runtimes"].items() if v["agreement"] >= AGREEMENT}
    assert record["choice"] == max(accurate, key=lambda r: accurate[r]["images_per_s"])
    assert Detector.load(run, device="cpu").runtime == record["choice"]

    copy = tmp_path / "run"  # measured on another CPU model: not this one's choice
    shutil.copytree(run, copy)
    record |= {"cpu": "another CPU", "choice": "torch"}
    (copy / CHOICE_FILE).write_text(json.dumps(record))
    for cpu in ("avx512-vnni", "avx2"):  # the flag rule instead
        fake_cpu(monkeypatch, CPUS[cpu][0])
        assert Detector.load(copy, device="cpu").runtime == CPUS[cpu][1]


def test_int8_and_bf16_maps_follow_fp32(trained: tuple[Path, Path]) -> None:
    root, run = trained
    reference = _maps(root, run, "torch").flatten().numpy()
    for runtime in ("int8", "bf16"):
        approx = _maps(root, run, runtime).flatten().numpy()
        assert np.corrcoef(reference, approx)[0, 1] > 0.9, runtime
        assert not np.allclose(reference, approx, atol=1e-6), runtime  # it is another path


def test_stale_export_is_refused_and_auto_falls_back(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    model = Detector.load(copy, device="cpu", runtime="torch").model
    with torch.no_grad():
        model.network_.student.conv1.bias += 1.0
    model.save(copy / "model.safetensors")
    assert Detector.load(copy, device="cpu").runtime == "torch"
    with pytest.raises(SpecadError, match="does not match the model weights"):
        Detector.load(copy, device="cpu", runtime="onnx")


def test_runtime_errors_are_one_line(trained: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / INT8_FILE).unlink()
    with pytest.raises(SpecadError, match="no int8 export") as err:
        Detector.load(copy, device="cpu", runtime="int8")
    assert INT8_FILE in str(err.value)
    with pytest.raises(SpecadError, match="unknown runtime"):
        Detector.load(copy, device="cpu", runtime="fast")
    (copy / ONNX_FILE).write_bytes(b"not onnx")
    with pytest.raises(SpecadError, match="not a loadable ONNX model"):
        Detector.load(copy, device="cpu", runtime="onnx")
    rx = fit_on_dataset("rx", load_dataset(root))
    with pytest.raises(SpecadError, match="runtime 'onnx' does not apply to rx models"):
        rx.use_runtime("onnx")
    with pytest.raises(SpecadError, match="rx/model.safetensors: rx models are not exportable"):
        export_detector(rx, rx.save(tmp_path / "rx"))


def _unexported(run: Path, tmp_path: Path) -> Path:
    """A copy of the model of ``run`` without its exports."""
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("model.safetensors", "model.json"):
        shutil.copy(run / name, copy / name)
    return copy


@pytest.mark.slow
def test_cli_export_and_evaluate_with_a_runtime(trained: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = trained
    copy = _unexported(run, tmp_path)
    done = run_specad("export", str(copy), "--int8", "--data", str(root), check=True)
    assert "onnx: largest map difference" in done.stdout and "int8:" in done.stdout
    assert (copy / ONNX_FILE).is_file() and (copy / INT8_FILE).is_file()
    done = run_specad("evaluate", str(copy), str(root), "--json", "--runtime", "int8", check=True)
    assert json.loads(done.stdout)["runtime"] == "int8"


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ("export {model} --format tflite", "unknown export format"),
        ("evaluate rx {root} --runtime int8", "runtime 'int8' does not apply to rx models (they"),
        # also checked without the CLI above
        slow_case("export {missing}", "missing/model.safetensors: model file not found"),
        slow_case("evaluate {model} {root} --runtime fast", "unknown runtime 'fast'"),
    ],
)
def test_cli_export_and_runtime_errors_are_one_line(
    trained: tuple[Path, Path], tmp_path: Path, command: str, needle: str
) -> None:
    root, run = trained
    paths = {"model": _unexported(run, tmp_path), "root": root, "missing": tmp_path / "missing"}
    one_line_failure(run_specad(*command.format(**paths).split()), needle)
