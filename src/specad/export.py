"""ONNX export of an EfficientAD model, and the onnxruntime runner behind the fast CPU paths.

On the 2-core AVX-512 machine of ``benchmarks/results.md``, onnxruntime runs the exported fp32
graph about twice as fast as torch eager, and the int8 graph (VNNI) several times faster. Both
files sit beside ``model.safetensors`` and carry the SHA-256 of the weights they came from, so a
retrained model never runs through a stale export.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from specad.errors import SpecadError
from specad.io import atomic_file, file_sha256

ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
DIGEST_KEY = "specad_weights_sha256"
INPUT, OUTPUT = "image", "anomaly_map"


def weights_digest(path: Path) -> str:
    """What an export is stamped with: the SHA-256 of the weights file it came from."""
    return file_sha256(path)


def _onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as err:  # both are core dependencies; a broken install lands here
        raise SpecadError(f"ONNX support needs onnx and onnxruntime ({err})") from err
    return onnx, onnxruntime


def _stamp(path: Path, digest: str) -> None:
    onnx, _ = _onnx()
    model = onnx.load(str(path))
    del model.metadata_props[:]
    model.metadata_props.add(key=DIGEST_KEY, value=digest)
    onnx.save(model, str(path))


def export_onnx(
    model: torch.nn.Module, in_channels: int, size: int, out: Path, digest: str
) -> Path:
    """Write the model's anomaly-map graph (dynamic batch) to ``out``, atomically.

    The TorchScript-based exporter is used on purpose: its graph ran 1.4x faster in onnxruntime
    than the dynamo exporter's for this network, and it exports in under a second.
    """
    _onnx()
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(1, in_channels, size, size)
    with atomic_file(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        except Exception as err:  # the exporter raises many types, all meaning "unsupported"
            reason = str(err).splitlines()[0][:160]
            raise SpecadError(f"this model cannot be exported to ONNX ({reason})", out) from err
        _stamp(tmp, digest)
    return out


def quantize_int8(fp32: Path, out: Path, calibration: Iterable[np.ndarray], digest: str) -> Path:
    """Static int8 quantisation (per-channel weights, uint8 activations) calibrated on images."""
    _onnx()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: np.ascontiguousarray(batch, np.float32)}

    with atomic_file(out) as tmp:
        pre = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32), str(pre))
            quantize_static(
                str(pre),
                str(tmp),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        finally:
            pre.unlink(missing_ok=True)
        _stamp(tmp, digest)
    return out


class OnnxRunner:
    """An onnxruntime session on an exported model: [B, C, H, W] tensors in, maps out."""

    def __init__(self, path: Path, digest: str | None = None, threads: int | None = None) -> None:
        _, ort = _onnx()
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
