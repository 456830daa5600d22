"""The runtimes a saved model runs on besides torch: its ONNX exports (`specad.export`) through
onnxruntime, and the choice ``auto`` makes among them.

Exports sit beside ``model.safetensors`` and carry the SHA-256 of the weights they came from
(`weights_digest`), so a retrained model never runs through a stale export.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from specad.errors import SpecadError
from specad.models.base import BaseDetector, Exportable
from specad.models.modelfile import model_file
from specad.runtime import cpu_has_amx, cpu_has_vnni, cpu_model

ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
DIGEST_KEY = "specad_weights_sha256"
INPUT, OUTPUT = "image", "anomaly_map"
CHOICE_FILE = "runtime.json"
"""Beside the model: the runtime `specad.export.measure_runtimes` found fastest on a CPU model."""


def weights_digest(path: Path) -> str:
    """What an export is stamped with: the SHA-256 of the tensors it came from (names, types,
    shapes and bytes), so that rewriting the file's metadata (a new int8 threshold) keeps it."""
    import hashlib

    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):  # noqa: SIM118 (not iterable)
            t = f.get_tensor(name).contiguous().reshape(-1)
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def onnx_modules() -> tuple[ModuleType, ModuleType]:
    try:
        import onnx
        import onnxruntime
    except ImportError as err:  # both are core dependencies; a broken install lands here
        raise SpecadError(f"ONNX support needs onnx and onnxruntime ({err})") from err
    return onnx, onnxruntime


class OnnxRunner:
    """An onnxruntime session on an exported model: [B, C, H, W] tensors in, maps out."""

    def __init__(self, path: Path, digest: str | None = None, threads: int | None = None) -> None:
        _, ort = onnx_modules()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            reason = str(err).splitlines()[0]
            raise SpecadError(f"not a loadable ONNX model ({reason})", path) from err
        stamped = self.session.get_modelmeta().custom_metadata_map.get(DIGEST_KEY)
        if digest is not None and stamped != digest:
            raise SpecadError(
                "export does not match the model weights (re-run `specad export`)", path
            )
        self.path = path

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = {INPUT: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)}
        return torch.from_numpy(self.session.run([OUTPUT], feed)[0])


def open_runner(
    runtime: str, model_path: str | Path | None, digest: str | None = None
) -> OnnxRunner:
    """The onnxruntime session of the ``onnx`` or ``int8`` export beside a saved model, refused
    unless stamped with ``digest`` (default: the saved weights', `weights_digest`)."""
    if model_path is None:
        raise SpecadError(f"runtime '{runtime}' needs the saved model's path")
    path = model_file(model_path)
    onnx = path.with_name(INT8_FILE if runtime == "int8" else ONNX_FILE)
    if not onnx.is_file():
        raise SpecadError(f"no {runtime} export; run `specad export {path.parent}`", onnx)
    return OnnxRunner(onnx, weights_digest(path) if digest is None else digest)


def choose_runtime(
    model: BaseDetector, device: torch.device, model_path: str | Path | None
) -> tuple[str, OnnxRunner | None]:
    """``auto``: on a CPU, what `measure_runtimes` found fastest among the accurate runtimes for
    these very weights on this CPU model; where nothing was measured here, the first export
    made from these weights (int8 only on CPUs with VNNI and with its own threshold), then onnx,
    else torch (bf16 on CPUs with AMX). On a GPU, torch. Detectors that are not `Exportable`
    run their first runtime. Returns the runtime and, for an export, its opened runner."""
    if not isinstance(model, Exportable):
        return model.runtimes[0], None
    if device.type != "cpu":
        return "torch", None
    if model_path is None:
        return "bf16" if cpu_has_amx() else "torch", None
    digest = weights_digest(model_file(model_path))
    measured = recorded_choice(model_path, digest)
    int8_threshold = "int8" in model.calibration_.runtime_thresholds
    if measured == "int8" and not int8_threshold:
        measured = None  # an int8 export without its own threshold is never chosen by itself
    candidates = [measured] if measured else ["onnx"]
    if not measured and cpu_has_vnni() and int8_threshold:
        candidates.insert(0, "int8")
    for runtime in candidates:
        if runtime not in ("onnx", "int8"):
            return runtime, None
        try:
            return runtime, open_runner(runtime, model_path, digest)
        except SpecadError:  # no export, or a stale one: try the next
            continue
    return "bf16" if cpu_has_amx() else "torch", None


def recorded_choice(model_path: str | Path, digest: str) -> str | None:
    """The runtime measured fastest for these weights (their ``digest``) on this CPU model, if
    it was measured."""
    path = model_file(model_path)
    try:
        record = json.loads(path.with_name(CHOICE_FILE).read_text())
        same = record["cpu"] == cpu_model() and record["weights"] == digest
        return str(record["choice"]) if same else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
